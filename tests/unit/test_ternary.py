"""The ternary codec: known vectors, both position codes, bytes against the formula,
malformed replies refused, and error feedback with the residue kept across rounds and
across a resumed run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, RecordDict

from client.faults import corrupt
from client.residue import RESIDUE, carried, keep
from client.train_round import _reply, reply_record
from common import protocol as p
from common.codecs import CHUNK, CODECS, DEFAULT_DENSITY, TernaryCodec
from common.config import POISON_SCALE, RunConfig
from common.errors import FedPafiError, UpdateError
from common.positions import decode_positions, encode_positions, rice_bytes
from common.session import Session
from common.train import TrainResult
from common.updates import VALUES, add, decode_update, encode_update
from server.strategy import FedPafiStrategy
from server.traffic import standalone_reply

LAYOUT = {"pafi.delta": ((3 * CHUNK,), torch.float32), "head.w": ((2, 5), torch.float32)}
NUMEL = 3 * CHUNK + 10


def _update(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=gen) * 1e-3 for k, (shape, _) in LAYOUT.items()}


def test_the_registered_codec_has_the_run_default_density():
    assert CODECS["ternary"].density == DEFAULT_DENSITY == RunConfig().codec_density


def test_a_known_vector_is_sent_as_signs_times_the_mean_kept_magnitude():
    codec = TernaryCodec(0.5)  # 3 of 6 kept: -1, 2, -3, whose mean magnitude is 2
    data = codec.encode(torch.tensor([0.5, -1.0, 0.1, 2.0, 0.0, -3.0]))
    # 6 values, Rice parameter 0 (gaps 1, 1, 1: 10 10 10); scale 2.0; the kept values'
    # signs in position order (-, +, -): 101
    assert data.dtype == np.uint8
    assert data.tolist() == [6, 0, 0, 0, 0, 0, 0, 0, 64, 0b10100000, 0b10101000]
    assert codec.decode(data, 6).tolist() == [0.0, -2.0, 0.0, 2.0, 0.0, -2.0]


def test_each_chunk_keeps_its_own_share_and_scale():
    """Chunk 0 holds 1..4096 (in magnitude), chunk 1 four values of 100: at density 0.25,
    chunk 0 keeps its 1024 largest (3073..4096, mean 3584.5) and chunk 1 one value."""
    codec = TernaryCodec(0.25)
    signs = torch.tensor([1.0, -1.0]).repeat(CHUNK // 2)
    values = torch.cat([torch.arange(1.0, CHUNK + 1) * signs, torch.full((4,), 100.0)])
    decoded = codec.decode(codec.encode(values), values.numel())
    assert codec.kept(values.numel()).tolist() == [1024, 1]
    kept = decoded[:CHUNK] != 0
    assert kept.nonzero().flatten().tolist() == list(range(CHUNK - 1024, CHUNK))
    assert torch.equal(decoded[:CHUNK][kept].abs(), torch.full((1024,), 3584.5))
    assert torch.equal(decoded[:CHUNK][kept].sign(), values[:CHUNK][kept].sign())
    assert decoded[CHUNK:].tolist() == [100.0, 0.0, 0.0, 0.0]  # a tie goes to the first


def test_rice_codes_decode_known_streams_and_parameter_0_is_the_bitmap():
    """Positions 2, 3, 10 of 16. r = 1: gaps 2, 0, 6 have the quotients 1, 0, 3 (unary:
    10 0 1110) and the remainders 0, 0, 0. r = 0: one bit per entry up to the last kept
    one, 0 where kept: the inverted bitmap."""
    bitmap = np.array([0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1], dtype=np.uint8)
    streams = {1: np.array([0b10011100, 0b00000000], dtype=np.uint8), 0: np.packbits(1 - bitmap)}
    for r, data in streams.items():
        assert decode_positions(r, data, 16, 3).tolist() == [2, 3, 10]


@pytest.mark.parametrize("density", [0.05, 0.1, 0.2, 0.3, 0.5])
def test_the_smallest_rice_parameter_is_chosen_and_round_trips(density):
    """The parameter that makes the update smallest: for random positions, the best one for
    geometric gaps, ceil(log2(log(golden ratio - 1) / log(1 - density))) (Kiely), which is
    0, the bitmap, from about 0.4 up."""
    gen = np.random.default_rng(0)
    positions = np.sort(gen.choice(NUMEL, int(density * NUMEL), replace=False))
    r, data = encode_positions(positions, NUMEL)
    gaps = np.diff(positions, prepend=-1) - 1
    geometric = math.log((math.sqrt(5) - 1) / 2) / math.log(1 - density)
    assert r == max(0, math.ceil(math.log2(geometric)))
    assert data.size == min(rice_bytes(gaps, r) for r in range(20))
    assert data.size <= -(-NUMEL // 8)  # never more than a bitmap
    assert np.array_equal(decode_positions(r, data, NUMEL, positions.size), positions)


def ternary_formula(numel: int, density: float) -> int:
    """Signs + log2 C(n, k) position bits per chunk + fp32 scales, in whole bytes."""
    bits, chunks = 0.0, 0
    for start in range(0, numel, CHUNK):
        n = min(CHUNK, numel - start)
        k = math.ceil(round(density * n, 6))
        bits += k + math.log2(math.comb(n, k))
        chunks += 1
    return math.ceil(bits / 8) + 4 * chunks


@pytest.mark.parametrize("density", [0.1, 0.2, 0.3, 0.4, 0.5])
def test_bytes_follow_signs_positions_and_scales(density):
    codec = TernaryCodec(density)
    data = encode_update(_update(), codec, LAYOUT)[VALUES]
    assert codec.floor_bytes(NUMEL) == ternary_formula(NUMEL, density)
    assert ternary_formula(NUMEL, density) <= data.nbytes <= 1.05 * ternary_formula(NUMEL, density)


def test_round_trip_keeps_the_largest_entries_with_their_signs():
    update, codec = _update(), TernaryCodec(0.2)
    decoded = decode_update(encode_update(update, codec, LAYOUT), codec, LAYOUT)
    flat = torch.cat([update[k].reshape(-1) for k in LAYOUT])
    sent = torch.cat([decoded[k].reshape(-1) for k in LAYOUT])
    assert int((sent != 0).sum()) == int(codec.kept(NUMEL).sum())
    assert torch.equal(sent[sent != 0].sign(), flat[sent != 0].sign())
    first = flat[:CHUNK].abs()
    assert first[sent[:CHUNK] != 0].min() >= first[sent[:CHUNK] == 0].max()
    assert torch.allclose(sent[:CHUNK].abs().max(), first[sent[:CHUNK] != 0].mean())


def _with_positions(data: np.ndarray, codec: TernaryCodec, positions: np.ndarray) -> np.ndarray:
    """`data` with other positions, well coded."""
    kept = codec.kept(NUMEL)
    start = 5 + 4 * kept.size + -(-int(kept.sum()) // 8)
    r, stream = encode_positions(positions, NUMEL)
    return np.concatenate([data[:4], [r], data[5:start], stream]).astype(np.uint8)


def _moved(data: np.ndarray, codec: TernaryCodec) -> np.ndarray:
    """Chunk 0's first kept position moved into chunk 1: one too few, one too many."""
    positions = np.flatnonzero(codec.decode(data, NUMEL).numpy())
    free = np.setdiff1d(np.arange(CHUNK, 2 * CHUNK), positions)[0]
    return _with_positions(data, codec, np.sort(np.append(positions[1:], free)))


def _scale(data: np.ndarray, value: float) -> np.ndarray:
    return np.concatenate([data[:5], np.float32(value).reshape(1).view(np.uint8), data[9:]])


@pytest.mark.parametrize("spoil, message", [
    (lambda a, c: a.astype(np.int8), "one flat uint8 array"),
    (lambda a, c: a[:-1], "Rice-coded gaps .* take"),
    (lambda a, c: a[:20], "is at least .* bytes, got 20"),
    (lambda a, c: np.concatenate([[9, 0, 0, 0], a[4:]]).astype(np.uint8), "holds 9 values"),
    (lambda a, c: np.concatenate([a[:4], [99], a[5:]]).astype(np.uint8), "parameter 99 is over"),
    (_moved, "chunk 0 keeps 819 values; at density 0.2 it keeps 820"),
    (lambda a, c: _with_positions(a, c, np.arange(NUMEL - 2461, NUMEL + 1)),
     "reach 12298, past the last entry"),
    (lambda a, c: _scale(a, -1.0), "ternary scales are magnitudes, got -1"),
    (lambda a, c: _scale(a, np.nan), "'pafi.delta' holds 820 non-finite"),
])
def test_malformed_ternary_updates_are_refused_with_the_reason(spoil, message):
    codec = TernaryCodec(0.2)
    data = encode_update(_update(), codec, LAYOUT)[VALUES]
    assert int(codec.kept(NUMEL).sum()) == 2462  # 3 x 820 + 2
    with pytest.raises(UpdateError, match=message):
        decode_update({VALUES: spoil(data, codec)}, codec, LAYOUT)


def test_a_diverged_update_is_sent_as_such():
    """NaN counts as the largest magnitude: the server sees it and refuses the update."""
    update = _update()
    update["pafi.delta"][7] = float("nan")
    codec = TernaryCodec(0.2)
    with pytest.raises(UpdateError, match="non-finite"):
        decode_update(encode_update(update, codec, LAYOUT), codec, LAYOUT)


# ---- error feedback through the client's reply -------------------------------------------

RESULT = TrainResult(num_examples=10, steps=1, loss=0.5, seconds=0.1)


@pytest.fixture(scope="module")
def strategy(tiny_model_dir):
    cfg = RunConfig(model=str(tiny_model_dir), sparsity=0.05, codec="ternary",
                    codec_density=0.1)
    return FedPafiStrategy(Session.build(cfg))


def _turn(strategy, context, server_round, true_update, folder=None):
    """One client turn: reply with `true_update` (plus the residue), as the server sees it."""
    session = strategy.session
    config = ConfigRecord({p.ROUND: server_round})
    if folder:
        config[p.CLIENT_STATE] = str(folder)
    node = Context(run_id=1, node_id=1, node_config={}, state=context, run_config={})
    record = _reply(session, true_update, RESULT, 0, node, config)
    return strategy._validated(standalone_reply(record)).update


def _random(strategy, seed):
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) * 1e-2 for k, v in strategy.state.items()}


def test_what_was_sent_plus_the_residue_is_what_was_trained(strategy, monkeypatch):
    """Three turns (rounds 1, 2 and 4: not sampled in round 3, the residue waits)."""
    state = RecordDict()
    trained = sent = {k: torch.zeros(v.shape) for k, v in strategy.state.items()}
    for server_round, seed in ((1, 1), (2, 2), (4, 3)):
        true_update = _random(strategy, seed)
        received = _turn(strategy, state, server_round, true_update)
        trained, sent = add(trained, true_update), add(sent, received)
        assert int(sum((v != 0).sum() for v in received.values())) < 0.2 * sum(
            v.numel() for v in received.values())  # a tenth (rounded up per chunk) is sent
    residue = state[RESIDUE].to_torch_state_dict()
    assert any(v.abs().sum() > 0 for v in residue.values())
    for key, value in add(sent, residue).items():
        torch.testing.assert_close(value, trained[key], rtol=0, atol=1e-6)


def test_a_resumed_run_gets_the_residue_of_the_round_before_bit_identical(strategy, tmp_path,
                                                                          monkeypatch):
    """A live run and one that resumes after round 1 with empty contexts send the same
    round 2; a round 2 cut short (its file written, the server's checkpoint still at round
    1) is redone from round 1's residue."""
    live, first, second = RecordDict(), _random(strategy, 1), _random(strategy, 2)
    _turn(strategy, live, 1, first, tmp_path)
    expected = _turn(strategy, live, 2, second, tmp_path)  # and round 2's file
    for resumed in (RecordDict(), RecordDict()):  # twice: the redo leaves the files usable
        again = _turn(strategy, resumed, 2, second, tmp_path)
        assert all(torch.equal(again[k], expected[k]) for k in expected)
    assert sorted(f.name for f in (tmp_path / "0").iterdir()) == [
        "residue-1.safetensors", "residue-2.safetensors"]
    _turn(strategy, live, 3, first, tmp_path)
    assert sorted(f.name for f in (tmp_path / "0").iterdir()) == [
        "residue-2.safetensors", "residue-3.safetensors"]  # round 1's is no longer needed


def test_without_a_folder_the_residue_lives_in_the_context_only(tmp_path):
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    residue = {"a": torch.tensor([1.0, -2.0])}
    keep(context, None, 1, residue)
    assert torch.equal(carried(context, None, 2)["a"], residue["a"])
    fresh = Context(run_id=2, node_id=1, node_config={}, state=RecordDict(), run_config={})
    assert carried(fresh, None, 2) is None and carried(fresh, tmp_path / "0", 2) is None


def test_fixed_size_codecs_carry_no_residue(tiny_model_dir):
    session = Session.build(RunConfig(model=str(tiny_model_dir), sparsity=0.05, codec="int8"))
    state = RecordDict()
    node = Context(run_id=1, node_id=1, node_config={}, state=state, run_config={})
    _reply(session, session.method.update(), RESULT, 0, node, ConfigRecord({p.ROUND: 1}))
    assert RESIDUE not in state and not CODECS["int8"].error_feedback


@pytest.mark.parametrize("fault, refused", [("poison", None), ("nan", "non-finite"),
                                            ("wrong-length", "Rice-coded gaps")])
def test_staged_faults_reencode_with_the_run_density(strategy, fault, refused):
    """A poisoner's ternary reply is its honest one, flipped and scaled, and well-formed;
    a diverged or truncated one is refused."""
    record = reply_record(strategy.session, _random(strategy, 5), RESULT, 0)
    honest = strategy._validated(standalone_reply(record)).update
    corrupt(fault, record, strategy.session.codec)
    if refused:
        with pytest.raises(FedPafiError, match=refused):
            strategy._validated(standalone_reply(record))
        return
    poisoned = strategy._validated(standalone_reply(record)).update
    for key, value in honest.items():
        torch.testing.assert_close(poisoned[key], POISON_SCALE * value)
