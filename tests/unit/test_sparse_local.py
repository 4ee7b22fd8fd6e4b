"""sparse-local: salience selection, union aggregation by hand, indices in the bytes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer

from client.train_round import reply_record
from common import protocol as p
from common.config import RunConfig
from common.glue import get_task
from common.methods.pafi import compute_mask, eligible_parameters
from common.methods.sparse_local import KEY, POSITIONS, VALUES
from common.model import load_backbone
from common.session import Session
from common.train import TrainResult, train_locally
from common.updates import INDICES
from server.strategy import FedPafiStrategy
from server.traffic import record_bytes, standalone_reply
from tests.unit.test_export import assert_update_file_rebuilds

TASK = get_task("sst2")
SENTENCES = {
    "a": (["a fine film", "dull and long", "great fun", "not good"], [1, 0, 1, 0]),
    "b": (["the plot drags", "what a joy", "weak and tired", "superb acting"], [0, 1, 0, 1]),
    "c": (["i loved it", "boring", "so moving", "a mess"], [1, 0, 1, 0]),
}


def _cfg(model_dir, method="sparse-local", **extra) -> RunConfig:
    return RunConfig(method=method, model=str(model_dir), sparsity=0.05, num_clients=2, **extra)


@pytest.fixture(scope="module")
def built(tiny_model_dir):
    session = Session.build(_cfg(tiny_model_dir))
    return session, session.method.state()


@pytest.fixture
def session(built):
    """The module's session, back at the initial global state with no selection."""
    session, initial = built
    session.method.load(initial)
    return session


@pytest.fixture(scope="module")
def batches(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    def batch(name):
        texts, labels = SENTENCES[name]
        return {**tokenizer(texts, padding=True, return_tensors="pt"),
                "labels": torch.tensor(labels)}

    return {name: batch(name) for name in SENTENCES}


def _fresh(session):
    return session.method, session.method.parts[0]


def test_selection_is_the_top_k_of_summed_gradient_magnitude(session, batches, tiny_model_dir):
    method, part = _fresh(session)
    params = dict(method.model.named_parameters())
    before = {n: w.detach().clone() for n, w in params.items()}
    method.model.train()
    method.prepare([batches["a"], batches["b"]])
    assert all(torch.equal(w, before[n]) for n, w in params.items())  # weights untouched
    assert all(w.grad is None for w in params.values())  # no gradient left behind
    assert method.model.training  # the mode it had

    backbone = load_backbone(str(tiny_model_dir), TASK, seed=session.cfg.seed)
    eligible = eligible_parameters(backbone.model, (), backbone.head_names)
    backbone.model.eval()
    salience = torch.zeros(sum(w.numel() for w in eligible.values()))
    for name in ("a", "b"):  # brute force: dense backward per batch, |grad| summed
        backbone.model.zero_grad()
        backbone.model(**batches[name]).loss.backward()
        salience += torch.cat([w.grad.reshape(-1).abs() for w in eligible.values()])
    k = part.sparse_k
    assert k == round(0.05 * salience.numel()) == session.method.num_indices()
    ranked = salience.sort(descending=True).values
    assert ranked[k - 1] > ranked[k]  # no tie at the cut: the top k is one set
    expected = salience.topk(k).indices.sort().values
    assert torch.equal(part.positions, expected)


def test_each_shard_picks_its_own_entries_every_round(session, batches):
    method, part = _fresh(session)
    method.prepare([batches["a"]])
    first = part.positions.clone()
    with pytest.raises(RuntimeError, match="selects once per round"):
        method.prepare([batches["b"]])
    method.load(method.state())  # the next round: a new load, a new selection
    method.prepare([batches["b"]])
    second = part.positions
    assert first.numel() == second.numel() == part.sparse_k
    shared = len(set(first.tolist()) & set(second.tolist()))
    assert shared < 0.9 * part.sparse_k  # different data, mostly different entries


def test_training_changes_only_the_selected_entries_with_k_optimizer_values(session, batches):
    method, part = _fresh(session)
    method.prepare([batches["a"]])
    params = dict(method.model.named_parameters())
    before = {n: w.detach().clone() for n, w in params.items()}
    optimizer = torch.optim.AdamW(method.trainable_parameters(), lr=1e-2)
    method.model.train()
    for _ in range(3):
        method.model(**batches["a"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        method.post_step()
    flat = torch.cat([(params[n] != before[n]).reshape(-1) for n in part.names])
    changed = set(flat.nonzero().flatten().tolist())
    assert changed and changed <= set(part.positions.tolist())
    untouched = set(params) - set(part.names) - {"classifier.weight", "classifier.bias"}
    assert all(torch.equal(params[n], before[n]) for n in untouched)
    update = method.update()[KEY]
    assert set(update.nonzero().flatten().tolist()) <= set(part.positions.tolist())
    state_values = sum(t.numel() for s in optimizer.state.values() for t in s.values()
                       if torch.is_tensor(t) and t.ndim > 0)
    assert state_values == 2 * (part.sparse_k + 2 * 32 + 2)  # Adam: two moments per value


def _loss_drop(method, part, batch, steps=10) -> float:
    """Train only the selected entries (the head stays frozen) on one batch, no dropout."""
    optimizer = torch.optim.AdamW(part.parameters(), lr=3e-2)
    losses = []
    for _ in range(steps):
        loss = method.model(**batch).loss
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        method.post_step()
    return losses[0] - losses[-1]


def test_the_salient_entries_learn_far_faster_than_as_many_random_ones(built, batches):
    session, initial = built
    method, part = _fresh(session)
    method.model.eval()
    method.load(initial)
    method.prepare([batches["a"]])
    salient = _loss_drop(method, part, batches["a"])
    method.load(initial)
    settings = dataclasses.replace(part.settings, criterion="random")
    part.select(compute_mask(dict(zip(part.names, part.weights)), settings, "random"))
    part.selected = True
    random = _loss_drop(method, part, batches["a"])
    assert salient > 0.02 and salient > 3 * max(random, 0.0)  # measured: 0.034 vs 0.003


def test_training_without_a_selection_is_refused(session, batches):
    method, _ = _fresh(session)
    method.model(**batches["a"]).loss.backward()
    with pytest.raises(RuntimeError, match=r"call Method.prepare\(batches\)"):
        method.post_step()
    method.model.zero_grad()


def test_train_locally_selects_on_each_clients_own_shard(tiny_model_dir, built):
    session, initial = built
    cfg = _cfg(tiny_model_dir, local_steps=2, batch_size=4, salience_batches=2)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    changed = []
    for shard in (("a", "b"), ("c", "a")):
        rows = {"text_a": [], "text_b": [], "label": []}
        for name in shard:
            rows["text_a"] += SENTENCES[name][0]
            rows["text_b"] += [""] * 4
            rows["label"] += SENTENCES[name][1]
        method, part = _fresh(session)
        method.load(initial)
        result = train_locally(method, Dataset.from_dict(rows), tokenizer, TASK, cfg, 1, 0)
        assert result.steps == 2
        update = method.update()
        changed.append(set(update[KEY].nonzero().flatten().tolist()))
        assert 0 < len(changed[-1]) <= part.sparse_k
        assert changed[-1] <= set(part.positions.tolist())
    assert changed[0] != changed[1]


def _client_update(session, entries: dict[int, float], head: float):
    update = {k: torch.zeros_like(v) for k, v in session.method.state().items()}
    for position, value in entries.items():
        update[KEY][position] = value
    for key in update:
        if key.startswith("head."):
            update[key] += head
    return update


def _reply(session, update, examples, partition):
    result = TrainResult(num_examples=examples, steps=1, loss=0.3, seconds=0.1)
    return standalone_reply(reply_record(session, update, result, partition))


def test_union_aggregation_by_hand(tiny_model_dir):
    strategy = FedPafiStrategy(Session.build(_cfg(tiny_model_dir)))
    session = strategy.session
    before = {k: v.clone() for k, v in strategy.state.items()}
    assert session.method.union_values(before) == 0
    download_before = record_bytes(strategy.global_arrays())
    one = _client_update(session, {3: 1.0, 10: 2.0}, head=1.0)  # 100 examples
    two = _client_update(session, {10: 4.0, 20: -1.0}, head=3.0)  # 300 examples
    arrays, _ = strategy.aggregate_train(1, [_reply(session, one, 100, 0),
                                             _reply(session, two, 300, 1)])
    assert strategy.traffic[1].rejected == []
    delta = strategy.state[KEY]
    # zero-filled example-weighted mean on the union {3, 10, 20}:
    assert delta[3] == 0.25  # (100 * 1 + 300 * 0) / 400
    assert delta[10] == 3.5  # (100 * 2 + 300 * 4) / 400
    assert delta[20] == -0.75  # (100 * 0 + 300 * -1) / 400
    outside = torch.ones_like(delta, dtype=torch.bool)
    outside[[3, 10, 20]] = False
    assert torch.count_nonzero(delta[outside]) == 0  # exactly 0 outside the union
    for key in before:
        if key.startswith("head."):
            torch.testing.assert_close(strategy.state[key], before[key] + 2.5)
    assert session.method.union_values(strategy.state) == 3
    sent = arrays[INDICES].numpy()
    assert sent[:3].tolist() == [3, 10, 20]  # the download carries the union (then the head)
    assert record_bytes(arrays) > download_before


def test_a_client_sending_more_than_k_values_is_refused(tiny_model_dir):
    strategy = FedPafiStrategy(Session.build(_cfg(tiny_model_dir)))
    session = strategy.session
    dense = _client_update(session, {}, head=1.0)
    dense[KEY] += 0.5  # every eligible entry: far more than k
    strategy.aggregate_train(1, [_reply(session, dense, 100, 0)])
    (refused,) = strategy.traffic[1].rejected
    assert "the method sends at most" in refused["reason"]
    assert torch.count_nonzero(strategy.state[KEY]) == 0


def test_indices_are_counted_in_the_bytes(tiny_model_dir, session):
    pafi = Session.build(_cfg(tiny_model_dir, method="pafi"))
    k = session.method.num_indices()
    assert k == pafi.method.mask.k and session.method.num_values() == pafi.method.num_values()
    gen = torch.Generator().manual_seed(0)
    entries = torch.randperm(session.method.layout[KEY][0][0], generator=gen)[:k]
    sparse = _client_update(session, {int(i): 0.01 for i in entries}, head=0.01)
    dense = {key: torch.full_like(v, 0.01) for key, v in pafi.method.state().items()}
    sparse_record = reply_record(session, sparse, TrainResult(10, 1, 0.3, 0.1), 0)
    dense_record = reply_record(pafi, dense, TrainResult(10, 1, 0.3, 0.1), 0)
    values = session.method.num_values()  # k + head, the same on both sides
    assert sparse_record[p.UPDATE][INDICES].numpy().size == values
    extra = record_bytes(sparse_record[p.UPDATE]) - record_bytes(dense_record[p.UPDATE])
    assert 4 * values <= extra <= 4 * values + 600  # 4 B an index, + one array's framing
    floor = session.codec.floor_bytes(values, k)  # the head's indices are not needed: k
    assert floor == 4 * values + 4 * k
    carried = record_bytes(sparse_record[p.UPDATE])  # framing: about 450 B an array
    assert floor <= carried <= floor + 4 * (values - k) + 1200


def test_update_file_holds_the_non_zero_entries_and_rebuilds(tiny_model_dir, tmp_path):
    session = Session.build(_cfg(tiny_model_dir))
    state = session.method.state()
    state[KEY][[5, 700, 16_000]] = torch.tensor([0.3, -0.2, 0.1])
    state = {k: v + 0.05 if k.startswith("head.") else v for k, v in state.items()}
    session.method.load(state)
    compact = session.method.compact()
    assert compact[POSITIONS].tolist() == [5, 700, 16_000]
    assert compact[VALUES].tolist() == pytest.approx([0.3, -0.2, 0.1])
    assert_update_file_rebuilds(session, tmp_path)
