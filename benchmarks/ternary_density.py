"""How the ternary codec's density trades bytes for fidelity: the measurement behind the
default `--codec-density`.

One client trains pafi-hiwi on an SST-2 shard for a few rounds, once with fp32 updates and
once per density with ternary updates and error feedback (the residue carried from round
to round, as a client does). Per density it prints the reply's bytes (what Flower carries)
and their ratio to full fine-tuning's fp32 update, the relative L2 error of the first
round's update, how far the state after the last round is from fp32's (relative to how far
fp32's moved), and the dev accuracy. A few minutes on a CPU:

    .venv/bin/python -m benchmarks.ternary_density            # 3 rounds of 20 steps
"""

from __future__ import annotations

import argparse

from client.train_round import reply_record
from common.codecs import run_codec
from common.config import RunConfig
from common.glue import load_split
from common.session import Session
from common.train import evaluate, train_locally
from common.updates import State, add, decode_update, dropped, encode_update
from server.traffic import message_bytes, standalone_reply

DENSITIES = (0.1, 0.2, 0.3, 0.4, 0.5)


def trajectory(session: Session, start: State, shard, rounds: int) -> tuple[State, dict]:
    """The client's rounds from `start` with the session's codec: the final state, the
    first reply's bytes and the first update's relative error."""
    method, cfg, codec = session.method, session.cfg, session.codec
    state, residue, first = start, None, {}
    for server_round in range(1, rounds + 1):
        method.load(state)
        result = train_locally(method, shard, session.tokenizer, session.task, cfg,
                               server_round, 0)
        update = method.update() if residue is None else add(method.update(), residue)
        arrays = encode_update(update, codec, method.layout)
        sent = decode_update(arrays, codec, method.layout)
        if codec.error_feedback:
            residue = dropped(update, arrays, codec, method.layout)
        if not first:
            record = reply_record(session, update, result, 0)
            first = {"bytes": message_bytes(standalone_reply(record)),
                     "error": _distance(sent, update)}
        state = add(state, sent)
    return state, first


def _distance(a: State, b: State, origin: State | None = None) -> float:
    """||a - b|| / ||b - origin|| over every entry (origin: zero)."""
    diff = sum(float((a[k] - b[k]).double().pow(2).sum()) for k in b)
    span = sum(float((b[k] - (origin[k] if origin else 0)).double().pow(2).sum()) for k in b)
    return (diff / span) ** 0.5


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ternary_density",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=20)
    parser.add_argument("--shard", type=int, default=2000, help="training sentences")
    args = parser.parse_args(argv)
    cfg = RunConfig(local_steps=args.local_steps, max_seq_length=64, eval_max_examples=256)
    session = Session.build(cfg)
    shard = load_split(session.task, "train", cfg.resolved_data_dir).select(range(args.shard))
    start = session.method.state()
    full = 4 * session.method.full_values
    reference, first = trajectory(session, start, shard, args.rounds)
    print(f"pafi-hiwi, {session.method.num_values():,} values, {args.rounds} rounds of "
          f"{args.local_steps} steps; full fine-tuning sends {full:,} B")
    print(f"{'codec':<22}{'reply B':>9}{'x less':>9}{'error r1':>10}{'vs fp32':>9}{'dev acc':>9}")
    for density in (None, *DENSITIES):
        if density is not None:
            session.cfg = cfg.replace(codec="ternary", codec_density=density)
            final, first = trajectory(session, start, shard, args.rounds)
        else:
            final = reference
        session.method.load(final)
        metrics, _ = evaluate(session.method.model, session.dev_set, session.tokenizer,
                              session.task, cfg.max_seq_length)
        print(f"{run_codec(session.cfg).label:<22}{first['bytes']:>9,}"
              f"{full / first['bytes']:>9,.0f}{first['error']:>10.3f}"
              f"{_distance(final, reference, start):>9.3f}{metrics['accuracy']:>9.4f}", flush=True)


if __name__ == "__main__":
    main()
