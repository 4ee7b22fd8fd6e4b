"""Positions of the kept entries of a flat vector, in as few bytes as their density allows.

The shared mask fixes the update's layout, but a codec that keeps only part of it (ternary)
must still say which entries it kept. They go as a Rice code (Golomb with a power-of-two
parameter 2^r) of the gaps between kept entries: a gap g costs (g >> r) + 1 + r bits, at
most (n - k) / 2^r + k (1 + r) bits for k kept of n, close to the log2 C(n, k) bits any
code needs. The encoder picks the r that makes the update smallest, and sends it:

- r = 0 is the bitmap: g ones then a zero per kept entry is one bit per entry of the
  vector (inverted), cut after the last kept one, so a separate bitmap is never smaller.
  It is the best code from a density of about 0.4 up;
- r > 0 wins below: at density 0.1, r = 3 costs about 4.8 bits a kept entry against the
  bitmap's 10 (the bound is 4.7).

A stream holds every gap's unary quotient first (q ones and a zero), padded to a byte, then
every remainder in r bits: the same bits as the interleaved code, but both halves decode
with array operations instead of a loop over the entries.
"""

from __future__ import annotations

import numpy as np

from common.errors import UpdateError

MAX_RICE = 62  # remainders fit int64


def encode_positions(positions: np.ndarray, numel: int) -> tuple[int, np.ndarray]:
    """The Rice parameter and the bytes of strictly increasing `positions` in [0, numel)."""
    gaps = np.diff(positions.astype(np.int64), prepend=-1) - 1
    r = min(range(min(MAX_RICE, int(numel).bit_length()) + 1),
            key=lambda r: rice_bytes(gaps, r))
    quotients = gaps >> r
    unary = np.ones(int(quotients.sum()) + gaps.size, dtype=np.uint8)
    unary[np.cumsum(quotients + 1) - 1] = 0  # each quotient's closing zero
    shifts = np.arange(r - 1, -1, -1, dtype=np.int64)
    remainders = ((gaps[:, None] >> shifts) & 1).astype(np.uint8)  # low r bits, high first
    return r, np.concatenate([np.packbits(unary), np.packbits(remainders.reshape(-1))])


def rice_bytes(gaps: np.ndarray, r: int) -> int:
    """Bytes of the Rice stream of `gaps` with parameter r: quotients, then remainders."""
    return -(-(int((gaps >> r).sum()) + gaps.size) // 8) + -(-gaps.size * r // 8)


def decode_positions(r: int, data: np.ndarray, numel: int, count: int) -> np.ndarray:
    """`count` strictly increasing positions in [0, numel), or UpdateError saying why not."""
    if r > MAX_RICE:
        raise UpdateError(f"Rice parameter {r} is over {MAX_RICE}.")
    closing = np.flatnonzero(np.unpackbits(data) == 0)[:count]
    if closing.size < count:
        raise UpdateError(f"the positions end after {closing.size} of {count} gaps.")
    unary_bytes = -(-(int(closing[-1]) + 1) // 8) if count else 0
    if data.size != unary_bytes + -(-count * r // 8):
        raise UpdateError(f"{count} Rice-coded gaps (parameter {r}) take "
                          f"{unary_bytes + -(-count * r // 8)} bytes, got {data.size}.")
    quotients = np.diff(closing, prepend=-1) - 1
    bits = np.unpackbits(data[unary_bytes:])[:count * r].reshape(count, r).astype(np.int64)
    remainders = bits @ (1 << np.arange(r - 1, -1, -1, dtype=np.int64))
    positions = np.cumsum((quotients << r) + remainders + 1) - 1
    if positions.size and positions[-1] >= numel:
        raise UpdateError(f"the positions reach {positions[-1]}, past the last entry "
                          f"({numel - 1}).")
    return positions
