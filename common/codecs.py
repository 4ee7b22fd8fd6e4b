"""Codecs for update vectors: what each value costs on the wire.

A codec turns a flat float tensor into one numpy array (what Flower's ArrayRecord
carries) and back. Lossy codecs are marked as such wherever they are shown. Two kinds:

- fixed-size codecs (fp32, fp16, bf16, int8) send every value in a fixed number of bits,
  so the array's length follows from the number of values;
- `ternary` (after ComPEFT) sends only the largest entries, each as its sign times one
  scale shared by its chunk, plus their positions (`common.positions`). Its size depends
  on the data, so its array says itself how many values it stands for, and its
  `error_feedback` makes each client carry what it dropped into its next update.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from common.errors import UpdateError
from common.positions import decode_positions, encode_positions

if TYPE_CHECKING:  # config stays out of the methods' imports (tests/unit/test_imports.py)
    from common.config import RunConfig

CHUNK = 4096  # values sharing one fp32 scale (int8, ternary)
INDEX_BYTES = 4  # an int32 position, for updates whose clients choose their own entries
DEFAULT_DENSITY = 0.3  # RunConfig's codec-density default (tested equal)
TERNARY_HEADER = 5  # uint32 number of values, then the positions' Rice parameter


class Codec(ABC):
    """How an update vector travels: encode, decode with validation, and its floor."""

    name: str
    lossy: bool
    error_feedback = False  # clients carry what the codec dropped into their next update

    @property
    def label(self) -> str:
        return f"{self.name} (lossy)" if self.lossy else self.name

    @abstractmethod
    def encode(self, values: torch.Tensor) -> np.ndarray:
        """One flat array on the wire."""

    @abstractmethod
    def decode(self, data: np.ndarray, numel: int) -> torch.Tensor:
        """Back to `numel` float32 values; anything malformed is an UpdateError."""

    @abstractmethod
    def count(self, data: np.ndarray) -> int:
        """How many values an encoded array stands for (without knowing the layout)."""

    @abstractmethod
    def floor_bytes(self, num_values: int, num_indices: int = 0) -> int:
        """The least any encoding of this codec's content could send, without framing:
        plus the indices a client's own choice of entries needs (none for a shared
        layout)."""

    def for_density(self, density: float) -> Codec:
        """This codec at a run's `codec-density` (only ternary keeps a share of values)."""
        return self


@dataclass(frozen=True)
class FixedCodec(Codec):
    """Every value in `bits` bits; int8 appends one fp32 scale per CHUNK values."""

    name: str
    bits: int
    lossy: bool

    def encode(self, values: torch.Tensor) -> np.ndarray:
        """int8 appends its fp32 chunk scales as raw bytes."""
        flat = values.detach().float().cpu().reshape(-1)
        if self.name == "fp32":
            return flat.numpy()
        if self.name == "fp16":
            return flat.half().numpy()
        if self.name == "bf16":
            return flat.bfloat16().view(torch.int16).numpy().view(np.uint16)
        padded = torch.nn.functional.pad(flat, (0, -flat.numel() % CHUNK))
        chunks = padded.view(-1, CHUNK)
        scales = chunks.abs().amax(dim=1).clamp_min(1e-30) / 127.0
        codes = torch.round(chunks / scales[:, None]).clamp(-127, 127).to(torch.int8)
        scale_bytes = scales.numpy().astype(np.float32).view(np.int8)
        return np.concatenate([codes.reshape(-1)[: flat.numel()].numpy(), scale_bytes])

    def decode(self, data: np.ndarray, numel: int) -> torch.Tensor:
        expected = {"fp32": np.float32, "fp16": np.float16, "bf16": np.uint16, "int8": np.int8}
        size = self.encoded_size(numel)
        if data.dtype != expected[self.name] or data.ndim != 1 or data.size != size:
            raise UpdateError(
                f"the update should be {size} values of {np.dtype(expected[self.name])} "
                f"({self.label}), got {data.dtype} x {data.size}."
            )
        if self.name == "bf16":
            return torch.from_numpy(data.view(np.int16).copy()).view(torch.bfloat16).float()
        if self.name != "int8":  # writable fp32 is used in place, read-only copied once
            return torch.from_numpy(data.astype(np.float32, copy=not data.flags.writeable))
        scales = data[numel:].copy().view(np.float32)
        padded = np.zeros(scales.size * CHUNK, dtype=np.float32)
        padded[:numel] = data[:numel]
        dequantized = padded.reshape(scales.size, -1) * scales[:, None]
        return torch.from_numpy(dequantized.reshape(-1)[:numel])

    def encoded_size(self, numel: int) -> int:
        """Array length on the wire: the values, plus 4 bytes a chunk for int8 scales."""
        return numel + 4 * -(-numel // CHUNK) if self.name == "int8" else numel

    def count(self, data: np.ndarray) -> int:
        """The inverse of `encoded_size` (a full int8 chunk is 4096 codes and its 4-byte
        scale)."""
        if self.name != "int8":
            return data.size
        return data.size - 4 * -(-data.size // (CHUNK + 4))

    def floor_bytes(self, num_values: int, num_indices: int = 0) -> int:
        """Values x bits."""
        return num_values * self.bits // 8 + INDEX_BYTES * num_indices


@dataclass(frozen=True)
class TernaryCodec(Codec):
    """ComPEFT's compression: in each chunk of CHUNK values, the `density` share largest
    in magnitude, each sent as its sign times the chunk's scale, the mean magnitude of
    what it kept (the scale that makes the sent values closest to the kept ones in L2);
    the rest is dropped, and carried by the client into its next update.

    The array (uint8): the number of values (uint32) and the positions' Rice parameter,
    the fp32 scales, the sign bits in position order, the positions (`common.positions`).
    """

    density: float = DEFAULT_DENSITY
    name: str = "ternary"
    lossy: bool = True
    error_feedback = True

    @property
    def label(self) -> str:
        return f"ternary {self.density:g} (lossy)"

    def for_density(self, density: float) -> Codec:
        return replace(self, density=density)

    def kept(self, numel: int) -> np.ndarray:
        """Values kept in each chunk: the density's share, rounded up (at least one)."""
        sizes = np.minimum(CHUNK, numel - CHUNK * np.arange(-(-numel // CHUNK)))
        return np.array([math.ceil(round(self.density * size, 6)) for size in sizes],
                        dtype=np.int64)

    def encode(self, values: torch.Tensor) -> np.ndarray:
        flat = values.detach().float().cpu().reshape(-1).numpy()
        if flat.size >= 2**32:
            raise UpdateError(f"{flat.size} values are too many for the ternary header.")
        positions = self._largest(flat)
        kept = flat[positions]
        chunks = self.kept(flat.size)
        sums = np.bincount(positions // CHUNK, weights=np.abs(kept), minlength=chunks.size)
        rice, position_bytes = encode_positions(positions, flat.size)
        header = np.concatenate([np.array([flat.size], "<u4").view(np.uint8), [rice]])
        scales = (sums / np.maximum(chunks, 1)).astype("<f4")
        return np.concatenate([header.astype(np.uint8), scales.view(np.uint8),
                               np.packbits(kept < 0), position_bytes])

    def _largest(self, flat: np.ndarray) -> np.ndarray:
        """Sorted positions of each chunk's largest magnitudes; ties go to the lower index,
        and NaN counts as largest, so a diverged update is sent (and refused) as such."""
        kept = self.kept(flat.size)
        magnitude = np.full(kept.size * CHUNK, -1.0)  # padding, below every real magnitude
        magnitude[:flat.size] = np.nan_to_num(np.abs(flat), nan=np.inf)
        order = np.argsort(-magnitude.reshape(kept.size, CHUNK), axis=1, kind="stable")
        chosen = np.zeros((kept.size, CHUNK), dtype=bool)
        np.put_along_axis(chosen, order, np.arange(CHUNK) < kept[:, None], axis=1)
        return np.flatnonzero(chosen.reshape(-1))

    def decode(self, data: np.ndarray, numel: int) -> torch.Tensor:
        chunks = self.kept(numel)
        total, signs_at = int(chunks.sum()), TERNARY_HEADER + 4 * chunks.size
        positions_at = signs_at + -(-total // 8)
        if (sent := self.count(data)) != numel:
            raise UpdateError(f"the update holds {sent} values ({self.label}); the layout "
                              f"has {numel}.")
        if data.size < positions_at:
            raise UpdateError(f"a {self.label} update of {numel} values is at least "
                              f"{positions_at} bytes, got {data.size}.")
        scales = data[TERNARY_HEADER:signs_at].copy().view("<f4")
        if (scales < 0).any():
            raise UpdateError(f"ternary scales are magnitudes, got {scales.min()}.")
        positions = decode_positions(int(data[4]), data[positions_at:], numel, total)
        per_chunk = np.bincount(positions // CHUNK, minlength=chunks.size)
        if (per_chunk != chunks).any():
            at = int(np.argmax(per_chunk != chunks))
            raise UpdateError(f"chunk {at} keeps {per_chunk[at]} values; at density "
                              f"{self.density:g} it keeps {chunks[at]}.")
        negative = np.unpackbits(data[signs_at:positions_at])[:total].astype(bool)
        values = np.zeros(numel, dtype=np.float32)
        values[positions] = np.where(negative, -1.0, 1.0) * scales[positions // CHUNK]
        return torch.from_numpy(values)

    def count(self, data: np.ndarray) -> int:
        if data.dtype != np.uint8 or data.ndim != 1 or data.size < TERNARY_HEADER:
            raise UpdateError(f"a ternary update is one flat uint8 array of at least "
                              f"{TERNARY_HEADER} bytes, got {data.dtype} with shape "
                              f"{data.shape}.")
        return int(data[:4].copy().view("<u4")[0])

    def floor_bytes(self, num_values: int, num_indices: int = 0) -> int:
        """A sign per kept value, log2 C(n, k) bits for which k of each chunk's n values
        were kept (what any position code needs), and the chunks' fp32 scales."""
        kept = self.kept(num_values)
        sizes = np.minimum(CHUNK, num_values - CHUNK * np.arange(kept.size))
        bits = sum(int(k) + _log2_binomial(int(n), int(k)) for n, k in zip(sizes, kept))
        return math.ceil(bits / 8) + 4 * kept.size + INDEX_BYTES * num_indices


def _log2_binomial(n: int, k: int) -> float:
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2)


CODECS: dict[str, Codec] = {
    c.name: c
    for c in (
        FixedCodec("fp32", 32, lossy=False),
        FixedCodec("fp16", 16, lossy=True),
        FixedCodec("bf16", 16, lossy=True),
        FixedCodec("int8", 8, lossy=True),
        TernaryCodec(),
    )
}


def run_codec(cfg: RunConfig) -> Codec:
    """The codec a run's settings name, at its codec-density."""
    return CODECS[cfg.codec].for_density(cfg.codec_density)


def download_codec(cfg: RunConfig) -> Codec | None:
    """The codec of the server's coded download (`common.download`), at the run's
    codec-density; None when the server sends the whole fp32 state."""
    return None if cfg.download_codec == "fp32" else CODECS[cfg.download_codec].for_density(
        cfg.codec_density)
