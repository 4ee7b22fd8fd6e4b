"""Byte counting against Flower's own serialisation: `record_bytes` sizes array chunks from
their length instead of deflating them, and must still count what Flower carries, byte for
byte: every deflated object below the records, identical ones once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

from client.train_round import reply_record
from common.config import RunConfig
from common.session import Session
from common.train import TrainResult
from server.strategy import FedPafiStrategy
from server.traffic import message_bytes, record_bytes, standalone_reply


def flower_bytes(record: RecordDict | ArrayRecord) -> int:
    """What Flower sends for a record: each nested object deflated, once."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(record).values())


def received(message: Message) -> Message:
    """The message as its receiver inflates it from the objects sent: nothing cached."""
    contents = {i: obj.deflate() for i, obj in get_all_nested_objects(message).items()}
    return inflate_object_from_contents(message.object_id, contents)


@pytest.mark.parametrize("method, codec", [
    ("full", "fp32"), ("full", "int8"), ("pafi", "fp16"), ("pafi-hiwi", "ternary"),
    ("sparse-local", "bf16"), ("lora", "fp32"),
])
def test_count_is_flowers_on_replies_and_the_global_state(tiny_model_dir, method, codec):
    session = Session.build(RunConfig(model=str(tiny_model_dir), method=method, codec=codec,
                                      sparsity=0.05, num_clients=2))
    gen = torch.Generator().manual_seed(0)
    update = {k: torch.randn(v.shape, generator=gen) for k, v in session.method.state().items()}
    result = TrainResult(num_examples=64, steps=2, loss=0.5, seconds=0.1)
    reply = standalone_reply(reply_record(session, update, result, partition_id=0))
    expected = flower_bytes(reply.content)
    assert message_bytes(received(reply)) == expected  # as the server counts it
    assert message_bytes(reply) == expected == message_bytes(reply)  # again, ids now cached
    state = FedPafiStrategy(session).global_arrays()
    assert record_bytes(state) == flower_bytes(state) > 0


def test_count_is_flowers_on_multi_chunk_arrays_with_repeated_chunks():
    """A 12 MB array travels in 3 chunks; zeros repeat chunks and whole arrays, which
    Flower sends once."""
    chunk_values = FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE // 4
    dense = np.random.default_rng(0).standard_normal(3 * chunk_values - 64, dtype=np.float32)
    zeros = np.zeros(3 * chunk_values + 7, np.float32)
    record = RecordDict({
        "update": ArrayRecord({"dense": Array(dense), "zeros": Array(zeros),
                               "again": Array(zeros.copy())}),
        "metrics": MetricRecord({"num-examples": 64}),
        "info": ConfigRecord({"codec": "fp32"}),
    })
    chunks = [i for a in record["update"].values() for i, _ in a.slice_array()]
    assert len(chunks) == 3 + 4 + 4 and len(set(chunks)) == 3 + 3  # zeros: 3 distinct
    message = standalone_reply(record)
    assert message_bytes(received(message)) == flower_bytes(record) == record_bytes(record)
    alone = record_bytes(ArrayRecord({"zeros": Array(zeros)}))
    assert alone < zeros.nbytes - FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE + 1000  # a chunk repeats
    twice = record_bytes(ArrayRecord({"zeros": Array(zeros), "again": Array(zeros)}))
    assert 0 < twice - alone < 100  # the second array is a name in the record, no more
