"""Codecs, decoding with validation, and FedAvg arithmetic checked by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.codecs import CHUNK, CODECS
from common.errors import UpdateError
from common.updates import (
    INDICES,
    VALUES,
    add,
    decode_update,
    encode_update,
    pack_state,
    unpack_state,
    weighted_mean,
)

FIXED = ["fp32", "fp16", "bf16", "int8"]  # every value in a fixed number of bits
LAYOUT = {"pafi.delta": ((10_000,), torch.float32), "head.w": ((2, 3), torch.float32)}


def _update(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=gen) * 1e-3 for k, (shape, _) in LAYOUT.items()}


@pytest.mark.parametrize("name, tolerance", [("fp32", 0.0), ("fp16", 1e-3), ("bf16", 8e-3),
                                             ("int8", 1 / 127)])
def test_codec_round_trip_error_is_bounded(name, tolerance):
    codec, update = CODECS[name], _update()
    decoded = decode_update(encode_update(update, codec, LAYOUT), codec, LAYOUT)
    for key, value in update.items():
        assert decoded[key].shape == value.shape and decoded[key].dtype == torch.float32
        error = (decoded[key] - value).abs().max()
        assert error <= tolerance * value.abs().max() + 1e-12


@pytest.mark.parametrize("name", FIXED)
def test_encoded_size_matches_the_floor(name):
    codec, update = CODECS[name], _update()
    arrays = encode_update(update, codec, LAYOUT)
    values = sum(v.numel() for v in update.values())
    assert list(arrays) == [VALUES]
    scales = 4 * -(-values // CHUNK) if name == "int8" else 0
    assert arrays[VALUES].nbytes == codec.floor_bytes(values) + scales


def test_only_lossless_codec_is_unmarked():
    assert [c.label for c in CODECS.values()] == ["fp32", "fp16 (lossy)", "bf16 (lossy)",
                                                  "int8 (lossy)", "ternary 0.3 (lossy)"]


@pytest.mark.parametrize("corrupt, message", [
    (lambda a: a.pop(VALUES), r"one array 'values', got \[\]"),
    (lambda a: a.update({VALUES: a[VALUES][:-1]}), "10006 values of float32.*got float32 x 10005"),
    (lambda a: a.update({VALUES: a[VALUES].astype(np.float64)}), "got float64"),
    (lambda a: a.update({"extra": np.zeros(3, np.float32)}), r"got \['extra', 'values'\]"),
    (lambda a: a[VALUES].__setitem__(5, np.nan), "'pafi.delta' holds 1 non-finite"),
    (lambda a: a[VALUES].__setitem__(10_000, np.inf), "'head.w' holds 1 non-finite"),
])
def test_corrupt_updates_are_refused_with_the_reason(corrupt, message):
    arrays = encode_update(_update(), CODECS["fp32"], LAYOUT)
    corrupt(arrays)
    with pytest.raises(UpdateError, match=message):
        decode_update(arrays, CODECS["fp32"], LAYOUT)


def test_int8_needs_its_scales():
    arrays = encode_update(_update(), CODECS["int8"], LAYOUT)
    arrays[VALUES] = arrays[VALUES][:10_006]  # the codes without the scale bytes
    with pytest.raises(UpdateError, match="10018 values of int8"):
        decode_update(arrays, CODECS["int8"], LAYOUT)


def _sparse_update():
    """A client's own 3 entries of the delta, plus the dense head."""
    update = {k: torch.zeros(shape) for k, (shape, _) in LAYOUT.items()}
    update["pafi.delta"][[7, 500, 9_999]] = torch.tensor([0.5, -1.0, 2.0])
    update["head.w"] += 0.25
    return update


@pytest.mark.parametrize("name", FIXED)
def test_sparse_wire_sends_non_zero_values_and_their_int32_positions(name):
    codec, update = CODECS[name], _sparse_update()
    arrays = encode_update(update, codec, LAYOUT, sparse=True)
    expected = [7, 500, 9_999, *range(10_000, 10_006)]
    assert arrays[INDICES].dtype == np.int32 and arrays[INDICES].tolist() == expected
    assert arrays[INDICES].nbytes == 4 * len(expected)
    assert arrays[VALUES].size == codec.encoded_size(len(expected))
    decoded = decode_update(arrays, codec, LAYOUT, sparse=True)
    for key, value in update.items():  # int8: one scale for 9 values up to 2.0
        torch.testing.assert_close(decoded[key], value, atol=1 / 127 if codec.lossy else 0,
                                   rtol=0)
        assert torch.equal(decoded[key] == 0, value == 0)  # what was not sent stays 0


@pytest.mark.parametrize("corrupt, message", [
    (lambda a: a.pop(INDICES), r"two arrays 'values' and 'indices', got \['values'\]"),
    (lambda a: a.update({INDICES: a[INDICES].astype(np.int64)}), "int32 array, got int64"),
    (lambda a: a[INDICES].__setitem__(2, 10_006), r"lie in \[0, 10006\), got 7 to 10006"),
    (lambda a: a[INDICES].__setitem__(0, -1), "got -1 to 10005"),
    (lambda a: a[INDICES].__setitem__(1, 7), "strictly increasing.*index 1 is 7 after 7"),
    (lambda a: a[INDICES].__setitem__(slice(0, 2), [500, 7]),
     "strictly increasing.*index 1 is 7 after 500"),
    (lambda a: a.update({VALUES: a[VALUES][:-1]}), "9 indices need 9 encoded values .*got 8"),
    (lambda a: a.update({INDICES: a[INDICES][:-1]}), "8 indices need 8 encoded values .*got 9"),
    (lambda a: a[VALUES].__setitem__(1, np.nan), "'pafi.delta' holds 1 non-finite"),
])
def test_sparse_updates_with_bad_indices_are_refused_with_the_reason(corrupt, message):
    arrays = encode_update(_sparse_update(), CODECS["fp32"], LAYOUT, sparse=True)
    corrupt(arrays)
    with pytest.raises(UpdateError, match=message):
        decode_update(arrays, CODECS["fp32"], LAYOUT, sparse=True)


def test_a_sparse_update_off_the_layout_is_refused_before_it_is_sent():
    """Dense, a truncated vector fails its length check; sparse, its positions would shift."""
    update = _sparse_update()
    update["pafi.delta"] = update["pafi.delta"][:-1]
    with pytest.raises(UpdateError, match=r"\['pafi.delta'\] do not have the layout's shapes"):
        encode_update(update, CODECS["fp32"], LAYOUT, sparse=True)


@pytest.mark.parametrize("name", [*CODECS])
@pytest.mark.parametrize("sparse", [False, True])
def test_decoding_never_writes_into_the_received_bytes(name, sparse):
    """The server decodes read-only views of a reply's bytes (numpy raises on any write):
    the same update as from writable copies, and none of it shares their memory."""
    codec, update = CODECS[name], _sparse_update() if sparse else _update()
    arrays = encode_update(update, codec, LAYOUT, sparse)
    received = {k: np.frombuffer(v.tobytes(), v.dtype) for k, v in arrays.items()}
    assert not any(v.flags.writeable for v in received.values())
    decoded = decode_update(received, codec, LAYOUT, sparse)
    for key, value in decode_update(arrays, codec, LAYOUT, sparse).items():
        assert torch.equal(decoded[key], value)
        assert not any(np.shares_memory(decoded[key].numpy(), v) for v in received.values())


def test_weighted_mean_by_hand():
    updates = [{"v": torch.tensor([1.0, 0.0])}, {"v": torch.tensor([3.0, 4.0])}]
    mean = weighted_mean(updates, [1, 3])
    assert mean["v"].tolist() == [2.5, 3.0]  # (1*1 + 3*3)/4, (1*0 + 3*4)/4
    assert add({"v": torch.tensor([1.0, 1.0])}, mean)["v"].tolist() == [3.5, 4.0]


def test_packing_follows_the_layout_not_the_dicts_order():
    """A state read back from a file comes in sorted key order; the wire must not care."""
    state = _update()
    reordered = dict(reversed(state.items()))
    assert list(reordered) != list(LAYOUT)
    unpacked = unpack_state(pack_state(reordered, LAYOUT), LAYOUT)
    assert all(torch.equal(unpacked[k], state[k]) for k in LAYOUT)


@pytest.mark.parametrize("name", FIXED)
def test_count_inverts_encoded_size(name):
    codec = CODECS[name]
    for numel in (0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17):
        assert codec.count(np.zeros(codec.encoded_size(numel))) == numel
