"""The server's reply validation and byte accounting, on replies built as clients build them."""

from __future__ import annotations

import io
import uuid

import numpy as np
import pytest
import torch
from flwr.app import Array, Error, Message, Metadata

from client.train_round import reply_record
from common.config import RunConfig
from common.session import Session
from common.train import TrainResult
from server.strategy import FedPafiStrategy, RejectedReply, received_values
from server.traffic import message_bytes, standalone_reply


@pytest.fixture(scope="module")
def strategy(tiny_model_dir):
    cfg = RunConfig(model=str(tiny_model_dir), sparsity=0.05, num_clients=2)
    return FedPafiStrategy(Session.build(cfg))


def _reply(strategy, update=None, examples=100, partition=0):
    session = strategy.session
    update = update if update is not None else {
        k: torch.full_like(v, 0.5) for k, v in session.method.state().items()}
    result = TrainResult(num_examples=examples, steps=1, loss=0.3, seconds=0.1)
    return standalone_reply(reply_record(session, update, result, partition))


def test_valid_replies_are_averaged_by_example_count(strategy):
    before = {k: v.clone() for k, v in strategy.state.items()}
    ones = {k: torch.ones_like(v) for k, v in before.items()}
    threes = {k: 3 * torch.ones_like(v) for k, v in before.items()}
    arrays, metrics = strategy.aggregate_train(1, [_reply(strategy, ones, 300, 1),
                                                   _reply(strategy, threes, 100, 0)])
    for key, value in strategy.state.items():
        torch.testing.assert_close(value, before[key] + 1.5)  # (300*1 + 100*3) / 400
    assert metrics["train-loss"] == pytest.approx(0.3)
    assert strategy.traffic[1].rejected == [] and len(strategy.traffic[1].bytes_up) == 2


@pytest.mark.parametrize("spoil, reason", [
    (lambda r: r.content["info"].__setitem__("mask-fingerprint", "abc"), "mask fingerprint 'abc'"),
    (lambda r: r.content["info"].__setitem__("codec", "fp16"), "codec 'fp16', expected 'fp32'"),
    (lambda r: r.content["metrics"].__setitem__("num-examples", 0), "num-examples must be > 0"),
    (lambda r: r.content.__delitem__("update"), "reply lacks a record"),
])
def test_bad_replies_are_rejected_with_a_reason(strategy, spoil, reason):
    reply = _reply(strategy)
    spoil(reply)
    with pytest.raises(RejectedReply, match=reason):
        strategy._validated(reply)


def test_a_nan_update_never_reaches_the_aggregate(strategy):
    state = {k: v.clone() for k, v in strategy.state.items()}
    bad = {k: torch.full_like(v, float("nan")) for k, v in state.items()}
    arrays, _ = strategy.aggregate_train(2, [_reply(strategy, bad)])
    assert arrays is None
    assert all(torch.equal(strategy.state[k], state[k]) for k in state)
    assert "non-finite" in strategy.traffic[2].rejected[0]["reason"]


def test_measured_upload_tracks_the_floor(strategy):
    floor = strategy.session.codec.floor_bytes(strategy.session.method.num_values())
    measured = message_bytes(_reply(strategy))
    assert floor < measured < floor + 4096  # framing: headers, keys, metrics


def test_fedadam_strategy_resumes_with_its_moments(tiny_model_dir):
    cfg = RunConfig(model=str(tiny_model_dir), sparsity=0.05, num_clients=2,
                    server_opt="fedadam")
    straight, first = FedPafiStrategy(Session.build(cfg)), FedPafiStrategy(Session.build(cfg))
    replies = [{k: torch.randn_like(v) * 0.01 for k, v in straight.state.items()}
               for _ in range(3)]
    for strat in (straight, first):
        strat.aggregate_train(1, [_reply(strat, replies[0])])
    assert any(k.startswith("server-opt.v.") for k in first.checkpoint())
    resumed = FedPafiStrategy(Session.build(cfg))
    resumed.resume(1, first.checkpoint())
    for offset, update in enumerate(replies[1:], start=1):
        straight.aggregate_train(1 + offset, [_reply(straight, update)])
        resumed.aggregate_train(offset, [_reply(resumed, update)])  # loop rounds restart at 1
    assert all(torch.equal(straight.state[k], resumed.state[k]) for k in straight.state)
    plain = {k: v + sum(r[k] for r in replies) for k, v in first.session.method.state().items()}
    assert not all(torch.allclose(straight.state[k], plain[k]) for k in plain)  # not FedAvg


def test_bytes_count_the_records_not_the_runtime_envelope(strategy):
    """Same records, other ids and timestamps (another runtime): the same byte count."""
    reply = _reply(strategy)
    envelope = Metadata(run_id=2**63 + 5, message_id="", src_node_id=2**64 - 3, dst_node_id=1,
                        reply_to_message_id=str(uuid.uuid4()), group_id="7", created_at=1.5,
                        ttl=60.0, message_type="train")
    other = Message(content=reply.content, metadata=envelope)
    assert len(other.deflate()) != len(reply.deflate())
    assert message_bytes(other) == message_bytes(reply) > 0
    assert message_bytes(standalone_reply(Error(code=0, reason="crashed"))) == 0


@pytest.mark.parametrize("array", [
    np.arange(7, dtype=np.float32), np.arange(6, dtype=np.int8).reshape(2, 3),
    np.asfortranarray(np.arange(6, dtype=np.float16).reshape(2, 3)), np.zeros(0, np.int32),
    np.arange(4, dtype=">f4"),
])
def test_a_received_array_is_read_in_place(array):
    """As `Array.numpy()` reads it, without copying its bytes, and read-only."""
    wire = Array(array)
    values = received_values("values", wire)
    assert values.dtype == array.dtype and np.array_equal(values, wire.numpy())
    assert values.flags.f_contiguous == array.flags.f_contiguous
    assert not values.flags.writeable
    assert np.shares_memory(values, np.frombuffer(wire.data, np.uint8)) or not array.size


def _npy(descr: str, shape: tuple[int, ...], data: bytes) -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False,
                                                  "shape": shape})
    return header.getvalue() + data


@pytest.mark.parametrize("data, stype, reason", [
    (b"not an npy file at all", "numpy.ndarray", "the magic string is not correct"),
    (_npy("<f4", (4,), b"\0" * 12), "numpy.ndarray", "buffer is smaller"),
    (_npy("|O", (2,), b"\0" * 16), "numpy.ndarray", "object arrays are refused"),
    (_npy("<f4", (1,), b"\0" * 4), "torch.Tensor", "stype 'torch.Tensor'"),
])
def test_an_unreadable_update_array_is_rejected(strategy, data, stype, reason):
    reply = _reply(strategy)
    reply.content["update"]["values"] = Array(dtype="float32", shape=(1,), stype=stype,
                                              data=data)
    with pytest.raises(RejectedReply, match=f"array 'values' is not a readable NumPy array: "
                                            f".*{reason}"):
        strategy._validated(reply)
