"""Bytes per method and codec on the real MiniLM: what Flower carries against the formula.

Upload: the encoded update in the reply. Download: the global state the server sends.

The formula is values x codec bits, where the values are each method's own count (masked
deltas, biases, LoRA factors, HiWi change, all weights) plus the task head, plus 4 bytes an
index for a method whose clients choose their own k entries (sparse-local).
"""

from __future__ import annotations

import math

import pytest
import torch

from client.app import reply_record
from common import protocol as p
from common.codecs import CODECS
from common.config import RunConfig
from common.methods import METHODS, Method
from common.methods.base import State
from common.session import Session
from common.train import TrainResult
from server.strategy import FedPafiStrategy
from server.traffic import message_bytes, record_bytes, standalone_reply

pytestmark = pytest.mark.integration
HEAD = 384 * 2 + 2  # MiniLM hidden size x 2 labels, + bias
LAYERS, HIDDEN, FFN = 6, 384, 1536


def expected_values(method: str, session: Session) -> int:
    model = session.method.model
    if method == "full":
        return sum(param.numel() for param in model.parameters())
    if method == "bitfit":
        biases = [p for n, p in model.named_parameters()
                  if n.endswith(".bias") and not n.startswith("classifier.")]
        return sum(p.numel() for p in biases) + HEAD
    lora = LAYERS * 2 * 8 * (HIDDEN + HIDDEN)  # query and value, rank 8, in + out
    pafi = round(0.005 * LAYERS * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * FFN))
    hiwi = LAYERS * FFN  # the merged change of each FFN input bias
    shira = (pafi if session.cfg.shira_mask == "magnitude"  # PaFi's k entries, values only
             else LAYERS * 2 * 32 * (HIDDEN + HIDDEN))  # peft's r=32 on query and value
    return HEAD + {"lora": lora, "lora-ts": lora + LAYERS * 2,  # + a threshold per layer
                   "pafi": pafi, "hiwi": hiwi, "pafi-hiwi": pafi + hiwi, "shira": shira,
                   "sparse-local": pafi}[method]


def client_update(method: Method) -> State:
    """Random small values; a part that picks its own entries changes only k of them."""
    gen = torch.Generator().manual_seed(0)
    update = {k: torch.randn_like(v) * 1e-3 for k, v in method.state().items()}
    for part, keys in zip(method.parts, method.part_keys):
        for key in keys if part.sparse_k else ():
            chosen = torch.randperm(update[key].numel(), generator=gen)[:part.sparse_k]
            kept = torch.zeros(update[key].numel())
            kept[chosen] = update[key].reshape(-1)[chosen]
            update[key] = kept.reshape(update[key].shape)
    return update


@pytest.mark.parametrize("method, extra", [*((m, {}) for m in METHODS),
                                           ("shira", {"shira_mask": "magnitude"})])
def test_bytes_follow_values_times_codec_bits(method, extra):
    session = Session.build(RunConfig(method=method, device="cpu", **extra))
    values, indices = session.method.num_values(), session.method.num_indices()
    assert values == expected_values(method, session)
    assert indices == (values - HEAD if method == "sparse-local" else 0)
    update = client_update(session.method)
    result = TrainResult(num_examples=64, steps=4, loss=0.5, seconds=1.0)
    for codec in CODECS.values():
        session.cfg = session.cfg.replace(codec=codec.name)
        record = reply_record(session, update, result, partition_id=0)
        formula = math.ceil(values * codec.bits / 8) + 4 * indices
        carried = record_bytes(record[p.UPDATE])
        assert formula <= carried <= 1.05 * formula, (codec.name, carried, formula)
        framing = message_bytes(standalone_reply(record)) - carried
        assert 0 < framing < 1500, (codec.name, framing)  # metrics, codec, fingerprint, ids
    download = record_bytes(FedPafiStrategy(session).global_arrays())  # always fp32
    if session.method.sparse_wire:  # no entry chosen yet: the head's non-zero values + indices
        sent = sum(int(torch.count_nonzero(v)) for v in session.method.state().values())
        assert 0 < sent <= HEAD and 8 * sent <= download <= 8 * sent + 1500
    else:
        assert 4 * values <= download <= 1.05 * 4 * values
