"""Codecs for update vectors: how many bits each value costs on the wire.

A codec turns one float tensor into named numpy arrays (the form Flower's ArrayRecord
carries) and back. Lossy codecs are marked as such wherever they are shown.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from common.errors import UpdateError

INT8_CHUNK = 4096  # values sharing one fp32 scale


@dataclass(frozen=True)
class Codec:
    name: str
    bits: int
    lossy: bool

    @property
    def label(self) -> str:
        return f"{self.name} (lossy)" if self.lossy else self.name

    def encode(self, key: str, value: torch.Tensor) -> dict[str, np.ndarray]:
        flat = value.detach().float().cpu().reshape(-1)
        if self.name == "fp32":
            return {key: flat.numpy()}
        if self.name == "fp16":
            return {key: flat.half().numpy()}
        if self.name == "bf16":
            return {key: flat.bfloat16().view(torch.int16).numpy().view(np.uint16)}
        padded = torch.nn.functional.pad(flat, (0, -flat.numel() % INT8_CHUNK))
        chunks = padded.view(-1, INT8_CHUNK)
        scales = chunks.abs().amax(dim=1).clamp_min(1e-30) / 127.0
        codes = torch.round(chunks / scales[:, None]).clamp(-127, 127).to(torch.int8)
        return {key: codes.reshape(-1)[: flat.numel()].numpy(), key + ".scales": scales.numpy()}

    def decode(
        self, key: str, arrays: dict[str, np.ndarray], shape: tuple[int, ...]
    ) -> torch.Tensor:
        """Back to a float32 tensor of `shape`; anything malformed is an UpdateError."""
        numel = int(np.prod(shape))
        data = arrays.get(key)
        expected = {"fp32": np.float32, "fp16": np.float16, "bf16": np.uint16, "int8": np.int8}
        if data is None or data.dtype != expected[self.name] or data.size != numel:
            got = "nothing" if data is None else f"{data.dtype} x {data.size}"
            raise UpdateError(
                f"'{key}' should be {numel} values of {np.dtype(expected[self.name])} "
                f"({self.name} codec), got {got}."
            )
        if self.name == "bf16":
            out = torch.from_numpy(data.view(np.int16).copy()).view(torch.bfloat16).float()
        elif self.name == "int8":
            out = self._dequantize(key, data, arrays.get(key + ".scales"), numel)
        else:
            out = torch.from_numpy(data.astype(np.float32))
        return out.reshape(shape)

    @staticmethod
    def _dequantize(key: str, codes: np.ndarray, scales: np.ndarray | None, numel: int):
        chunks = -(-numel // INT8_CHUNK)
        if scales is None or scales.dtype != np.float32 or scales.size != chunks:
            raise UpdateError(f"'{key}.scales' should be {chunks} float32 scales (int8 codec).")
        padded = np.zeros(chunks * INT8_CHUNK, dtype=np.float32)
        padded[:numel] = codes
        return torch.from_numpy((padded.reshape(chunks, -1) * scales[:, None]).reshape(-1)[:numel])

    def floor_bytes(self, num_values: int) -> int:
        """Values x bits, no indices and no framing: the least any encoding could send."""
        return num_values * self.bits // 8


CODECS: dict[str, Codec] = {
    c.name: c
    for c in (
        Codec("fp32", 32, lossy=False),
        Codec("fp16", 16, lossy=True),
        Codec("bf16", 16, lossy=True),
        Codec("int8", 8, lossy=True),
    )
}
