"""Codecs, decoding with validation, and FedAvg arithmetic checked by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.codecs import CODECS, INT8_CHUNK
from common.errors import UpdateError
from common.updates import add, decode_update, encode_update, weighted_mean

LAYOUT = {"pafi.delta": ((10_000,), torch.float32), "head.w": ((2, 3), torch.float32)}


def _update(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=gen) * 1e-3 for k, (shape, _) in LAYOUT.items()}


@pytest.mark.parametrize("name, tolerance", [("fp32", 0.0), ("fp16", 1e-3), ("bf16", 8e-3),
                                             ("int8", 1 / 127)])
def test_codec_round_trip_error_is_bounded(name, tolerance):
    codec, update = CODECS[name], _update()
    decoded = decode_update(encode_update(update, codec), codec, LAYOUT)
    for key, value in update.items():
        assert decoded[key].shape == value.shape and decoded[key].dtype == torch.float32
        error = (decoded[key] - value).abs().max()
        assert error <= tolerance * value.abs().max() + 1e-12


@pytest.mark.parametrize("name", ["fp32", "fp16", "bf16", "int8"])
def test_encoded_size_matches_the_floor(name):
    codec, update = CODECS[name], _update()
    arrays = encode_update(update, codec)
    values = sum(v.numel() for v in update.values())
    payload = sum(a.nbytes for k, a in arrays.items() if not k.endswith(".scales"))
    assert payload == codec.floor_bytes(values)
    scales = sum(a.nbytes for k, a in arrays.items() if k.endswith(".scales"))
    assert scales == (4 * (-(-10_000 // INT8_CHUNK) + 1) if name == "int8" else 0)


def test_only_lossless_codec_is_unmarked():
    assert [c.label for c in CODECS.values()] == ["fp32", "fp16 (lossy)", "bf16 (lossy)",
                                                  "int8 (lossy)"]


@pytest.mark.parametrize("corrupt, message", [
    (lambda a: a.pop("head.w"), "'head.w' should be 6 values of float32"),
    (lambda a: a.update({"pafi.delta": a["pafi.delta"][:-1]}), "got float32 x 9999"),
    (lambda a: a.update({"pafi.delta": a["pafi.delta"].astype(np.float64)}), "got float64"),
    (lambda a: a.update({"extra": np.zeros(3, np.float32)}), r"unexpected arrays \['extra'\]"),
    (lambda a: a["pafi.delta"].__setitem__(5, np.nan), "1 non-finite values"),
    (lambda a: a["head.w"].__setitem__(0, np.inf), "'head.w' holds 1 non-finite"),
])
def test_corrupt_updates_are_refused_with_the_reason(corrupt, message):
    arrays = encode_update(_update(), CODECS["fp32"])
    corrupt(arrays)
    with pytest.raises(UpdateError, match=message):
        decode_update(arrays, CODECS["fp32"], LAYOUT)


def test_int8_needs_its_scales():
    arrays = encode_update(_update(), CODECS["int8"])
    arrays.pop("pafi.delta.scales")
    with pytest.raises(UpdateError, match="scales"):
        decode_update(arrays, CODECS["int8"], LAYOUT)


def test_weighted_mean_by_hand():
    updates = [{"v": torch.tensor([1.0, 0.0])}, {"v": torch.tensor([3.0, 4.0])}]
    mean = weighted_mean(updates, [1, 3])
    assert mean["v"].tolist() == [2.5, 3.0]  # (1*1 + 3*3)/4, (1*0 + 3*4)/4
    assert add({"v": torch.tensor([1.0, 1.0])}, mean)["v"].tolist() == [3.5, 4.0]
