"""Positions of the kept entries of a flat vector, in as few bytes as their density allows.

The shared mask fixes the update's layout, but a codec that keeps only part of it (ternary)
must still say which entries it kept. Two codes, whichever is smaller for the update:

- a bitmap: one bit per entry of the vector, whatever the density;
- a Rice code (Golomb with a power-of-two parameter 2^r) of the gaps between kept
  entries: each gap g costs (g >> r) + 1 + r bits, at most (n - k) / 2^r + k (1 + r) bits
  for k kept of n, close to the log2 C(n, k) bits any code needs at a low density.

The bitmap wins from a density of about 0.45 up. The first byte of the ternary payload
says which code follows (0: bitmap, 1 + r: Rice with parameter r). A Rice stream holds
every gap's unary quotient first (q ones and a zero), padded to a byte, then every
remainder in r bits: the same bits as the interleaved code, but both halves decode with
array operations instead of a loop over the entries.
"""

from __future__ import annotations

import numpy as np

from common.errors import UpdateError

BITMAP = 0  # code byte; 1 + r stands for a Rice code with parameter r
MAX_RICE = 62  # remainders fit int64


def encode_positions(positions: np.ndarray, numel: int) -> tuple[int, np.ndarray]:
    """The code byte and the bytes of strictly increasing `positions` in [0, numel)."""
    gaps = np.diff(positions.astype(np.int64), prepend=-1) - 1
    bitmap_bytes = -(-numel // 8)
    r = min(range(min(MAX_RICE, max(1, numel.bit_length())) + 1),
            key=lambda r: rice_bytes(gaps, r))
    if bitmap_bytes <= rice_bytes(gaps, r):
        bits = np.zeros(numel, dtype=np.uint8)
        bits[positions] = 1
        return BITMAP, np.packbits(bits)
    quotients = gaps >> r
    unary = np.ones(int(quotients.sum()) + gaps.size, dtype=np.uint8)
    unary[np.cumsum(quotients + 1) - 1] = 0  # each quotient's closing zero
    return 1 + r, np.concatenate([np.packbits(unary), np.packbits(_bits(gaps, r))])


def rice_bytes(gaps: np.ndarray, r: int) -> int:
    """Bytes of the Rice stream of `gaps` with parameter r: quotients, then remainders."""
    return -(-(int((gaps >> r).sum()) + gaps.size) // 8) + -(-gaps.size * r // 8)


def decode_positions(code: int, data: np.ndarray, numel: int, count: int) -> np.ndarray:
    """`count` strictly increasing positions in [0, numel), or UpdateError saying why not."""
    if code == BITMAP:
        if data.size != -(-numel // 8):
            raise UpdateError(f"a position bitmap of {numel} entries is {-(-numel // 8)} "
                              f"bytes, got {data.size}.")
        bits = np.unpackbits(data)
        positions = np.flatnonzero(bits[:numel])
        if bits[numel:].any():
            raise UpdateError(f"the position bitmap marks entries past the last ({numel}).")
    elif code - 1 <= MAX_RICE:
        positions = _decode_rice(code - 1, data, count)
        if positions.size and positions[-1] >= numel:
            raise UpdateError(f"the Rice-coded positions reach {positions[-1]}, past the "
                              f"last entry ({numel - 1}).")
    else:
        raise UpdateError(f"position code {code} is neither a bitmap (0) nor a Rice code "
                          f"(1 to {MAX_RICE + 1}).")
    if positions.size != count:
        raise UpdateError(f"the update marks {positions.size} kept positions, expected {count}.")
    return positions


def _decode_rice(r: int, data: np.ndarray, count: int) -> np.ndarray:
    closing = np.flatnonzero(np.unpackbits(data) == 0)[:count]
    if closing.size < count:
        raise UpdateError(f"the Rice-coded positions end after {closing.size} of {count} "
                          f"gaps.")
    unary_bytes = -(-(int(closing[-1]) + 1) // 8) if count else 0
    if data.size != unary_bytes + -(-count * r // 8):
        raise UpdateError(f"{count} Rice-coded gaps (parameter {r}) take "
                          f"{unary_bytes + -(-count * r // 8)} bytes, got {data.size}.")
    quotients = np.diff(closing, prepend=-1) - 1
    remainder_bits = np.unpackbits(data[unary_bytes:])[:count * r].reshape(count, r)
    remainders = remainder_bits.astype(np.int64) @ (1 << np.arange(r - 1, -1, -1,
                                                                    dtype=np.int64))
    return np.cumsum((quotients << r) + remainders + 1) - 1


def _bits(values: np.ndarray, width: int) -> np.ndarray:
    """Each value's low `width` bits, most significant first, one row a value."""
    shifts = np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((values[:, None] >> shifts) & 1).astype(np.uint8).reshape(-1)
