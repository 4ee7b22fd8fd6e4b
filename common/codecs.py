"""Codecs for update vectors: how many bits each value costs on the wire.

A codec turns a flat float tensor into one numpy array (what Flower's ArrayRecord
carries) and back. Lossy codecs are marked as such wherever they are shown.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from common.errors import UpdateError

INT8_CHUNK = 4096  # values sharing one fp32 scale
INDEX_BYTES = 4  # an int32 position, for updates whose clients choose their own entries


@dataclass(frozen=True)
class Codec:
    name: str
    bits: int
    lossy: bool

    @property
    def label(self) -> str:
        return f"{self.name} (lossy)" if self.lossy else self.name

    def encode(self, values: torch.Tensor) -> np.ndarray:
        """One flat array on the wire; int8 appends its fp32 chunk scales as raw bytes."""
        flat = values.detach().float().cpu().reshape(-1)
        if self.name == "fp32":
            return flat.numpy()
        if self.name == "fp16":
            return flat.half().numpy()
        if self.name == "bf16":
            return flat.bfloat16().view(torch.int16).numpy().view(np.uint16)
        padded = torch.nn.functional.pad(flat, (0, -flat.numel() % INT8_CHUNK))
        chunks = padded.view(-1, INT8_CHUNK)
        scales = chunks.abs().amax(dim=1).clamp_min(1e-30) / 127.0
        codes = torch.round(chunks / scales[:, None]).clamp(-127, 127).to(torch.int8)
        scale_bytes = scales.numpy().astype(np.float32).view(np.int8)
        return np.concatenate([codes.reshape(-1)[: flat.numel()].numpy(), scale_bytes])

    def decode(self, data: np.ndarray, numel: int) -> torch.Tensor:
        """Back to `numel` float32 values; anything malformed is an UpdateError."""
        expected = {"fp32": np.float32, "fp16": np.float16, "bf16": np.uint16, "int8": np.int8}
        size = self.encoded_size(numel)
        if data.dtype != expected[self.name] or data.ndim != 1 or data.size != size:
            raise UpdateError(
                f"the update should be {size} values of {np.dtype(expected[self.name])} "
                f"({self.label}), got {data.dtype} x {data.size}."
            )
        if self.name == "bf16":
            return torch.from_numpy(data.view(np.int16).copy()).view(torch.bfloat16).float()
        if self.name != "int8":
            return torch.from_numpy(data.astype(np.float32))
        scales = data[numel:].copy().view(np.float32)
        padded = np.zeros(scales.size * INT8_CHUNK, dtype=np.float32)
        padded[:numel] = data[:numel]
        dequantized = padded.reshape(scales.size, -1) * scales[:, None]
        return torch.from_numpy(dequantized.reshape(-1)[:numel])

    def encoded_size(self, numel: int) -> int:
        """Array length on the wire: the values, plus 4 bytes a chunk for int8 scales."""
        return numel + 4 * -(-numel // INT8_CHUNK) if self.name == "int8" else numel

    def count(self, encoded_size: int) -> int:
        """How many values an encoded array holds: the inverse of `encoded_size` (a full
        int8 chunk is 4096 codes and its 4-byte scale)."""
        if self.name != "int8":
            return encoded_size
        return encoded_size - 4 * -(-encoded_size // (INT8_CHUNK + 4))

    def floor_bytes(self, num_values: int, num_indices: int = 0) -> int:
        """Values x bits, plus the indices a client's own choice of entries needs (none for
        a shared layout), no framing: the least any encoding could send."""
        return num_values * self.bits // 8 + INDEX_BYTES * num_indices


CODECS: dict[str, Codec] = {
    c.name: c
    for c in (
        Codec("fp32", 32, lossy=False),
        Codec("fp16", 16, lossy=True),
        Codec("bf16", 16, lossy=True),
        Codec("int8", 8, lossy=True),
    )
}
