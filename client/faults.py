"""Faults staged on purpose (--fault-rate, --poison-fraction), to study what a server survives.

A Flower client mod around the ClientApp's train handler, so the handler stays
train-and-reply: `inject_faults` picks this client round's fault and stages it around the
handler. Which client round misbehaves, and how, is drawn from (seed, round, partition), so
a faulty run is as reproducible as a clean one. The faults mimic real failures: a client
that dies (`crash`), diverges (`nan`), sends a truncated vector (`wrong-length`), runs
another mask (`wrong-fingerprint`) or answers after the server stopped waiting (`slow`).
One mimics an attacker: `poison` sends its honest update times POISON_SCALE, well-formed
and finite, so validation accepts it and only the aggregator can limit it. The first
`poison-fraction` of the clients poison in every round they train, as attackers that
control whole clients do; `--fault-kinds poison` with `--fault-rate` draws poisoned client
rounds instead, like any other fault.
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Array, Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from common import protocol as p
from common.codecs import Codec, run_codec
from common.config import POISON_SCALE, RunConfig
from common.updates import VALUES


class InjectedCrash(RuntimeError):
    """A client failure staged by --fault-rate (kind `crash`)."""


def pick_fault(cfg: RunConfig, server_round: int, partition_id: int) -> str | None:
    """The fault this client round stages, or None for a normal round."""
    if partition_id < cfg.poisoning_clients:
        return "poison"
    if not cfg.fault_rate:
        return None
    rng = np.random.default_rng([cfg.seed, server_round, partition_id, 0xFA17])
    if rng.random() >= cfg.fault_rate:
        return None
    kinds = cfg.fault_kind_list
    return kinds[int(rng.integers(len(kinds)))]


def inject_faults(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Stage this client round's fault around the handler: a crash instead of it, a late
    or corrupted reply after it. Without a fault it passes the message straight through."""
    config = msg.content[p.CONFIG]
    cfg = RunConfig.from_json(str(config[p.RUN_CONFIG]))
    partition_id = int(context.node_config["partition-id"])
    fault = pick_fault(cfg, int(config[p.ROUND]), partition_id)
    if fault == "crash":
        raise InjectedCrash(f"client {partition_id} crashed on purpose (fault-rate)")
    reply = call_next(msg, context)
    if fault == "slow":
        time.sleep(cfg.round_timeout + 1)  # answers after the server stopped waiting
    elif fault:
        corrupt(fault, reply.content, run_codec(cfg))
    return reply


def corrupt(kind: str, reply: RecordDict, codec: Codec) -> None:
    """Alter a client's reply in place as the corrupting fault `kind` sends it, re-encoded
    with the run's `codec`."""
    update, info = reply[p.UPDATE], reply[p.REPLY_INFO]
    values = update[VALUES].numpy()
    if kind == "wrong-fingerprint":
        info[p.FINGERPRINT] = "0" * 64
    elif kind == "wrong-length":  # one value short
        update[VALUES] = Array(values[:-1])
    elif kind in ("nan", "poison"):
        decoded = codec.decode(values, codec.count(values))
        if kind == "nan":  # the first value diverged
            decoded[0] = float("nan")
        else:  # scaled and sign-flipped: as well-formed as the honest update
            decoded *= POISON_SCALE
        update[VALUES] = Array(codec.encode(decoded))
