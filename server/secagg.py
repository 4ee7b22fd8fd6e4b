"""The server's side of SecAgg+ (`--secagg`): one round through Flower's `SecAggPlusWorkflow`.

Flower's workflow runs the protocol's four stages (setup: public keys; share keys:
encrypted Shamir shares; collect masked vectors: the clients train and send masked,
quantized updates; unmask: shares that remove the masks, those of clients lost after
sharing their keys included) and hands the dequantized, example-weighted mean to a legacy
`Strategy.aggregate_fit`. It is written for Flower's legacy loop, so a thin bridge answers
its two calls from `FedPafiStrategy`: `configure_fit` samples the round's clients as a plain
round does and sends them the same global state and config, and `aggregate_fit` receives
the mean, which goes through DP noise (when on) to the server optimizer.

The grid it talks through (`LedgerGrid`) counts every stage's messages both ways (and its
seconds), so the round's bytes include the protocol's own, and checks each masked reply as
a plain reply is checked (mask fingerprint, codec, example count, and the masked vector's
length instead of the update's). A refused reply is left out of the workflow's view, which
then treats its client as lost after sharing keys: its masks are rebuilt from the others'
shares and its update never reaches the sum.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common import FitIns, FitRes, Parameters, bytes_to_ndarray, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from common import protocol as p
from common.config import SECAGG_MODULUS, RunConfig
from common.privacy import noised_mean
from common.updates import VALUES, unpack_state
from server.strategy import FedPafiStrategy, RejectedReply, RoundTraffic, ValidReply
from server.traffic import message_bytes


def secure_workflow(cfg: RunConfig, largest_shard: int) -> SecAggPlusWorkflow:
    """Flower's workflow with the run's settings.

    The mod multiplies each update by its weight, examples / max-weight, before it clips
    and quantizes, and sends the weight quantized to 1 / quantization-range inside the sum.
    max-weight is the largest shard rounded up to a power of two: every weight is then at
    most 1 (the clipping range bounds the largest client's values within a factor 2) and an
    exact multiple of 1 / quantization-range, so the mean keeps FedAvg's weights exactly.
    Under DP every client weighs 1 (the DP mean is unweighted)."""
    return SecAggPlusWorkflow(
        num_shares=cfg.secagg_shares or 1.0,  # Flower's 1.0: every sampled client
        reconstruction_threshold=cfg.secagg_reconstruction_threshold,
        max_weight=1.0 if cfg.dp_clipping_norm else float(2 ** math.ceil(math.log2(largest_shard))),
        clipping_range=cfg.secagg_clipping_range,
        quantization_range=cfg.secagg_quantization_range,
        modulus_range=SECAGG_MODULUS,
        timeout=cfg.round_timeout,
    )


def secure_round(grid: Grid, strategy: FedPafiStrategy, workflow: SecAggPlusWorkflow,
                 loop_round: int) -> None:
    """One round of SecAgg+: sample, run the four stages, step on the secure mean."""
    server_round = loop_round + strategy.round_offset
    bridge = _StrategyBridge(strategy, grid, loop_round)
    context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=RecordDict(),
                                    run_config={}), strategy=bridge)
    context.state[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round})
    context.state[MAIN_PARAMS_RECORD] = strategy.global_arrays()
    ledger = LedgerGrid(grid, strategy, strategy.traffic.setdefault(server_round, RoundTraffic()))
    workflow(ledger, context)
    ledger.close()
    accepted = ledger.accepted
    if bridge.mean is None:  # the workflow halted: too few clients kept up
        print(f"round {server_round}: SecAgg+ stopped with {len(accepted)} masked updates "
              f"(a client lost before sharing its keys, or fewer than secagg-threshold "
              f"left); the global model stays as it was.", flush=True)
        strategy.traffic[server_round].skipped = True
        return
    if not strategy.enough(accepted, server_round):
        return
    cfg = strategy.session.cfg
    weights = [1.0 if cfg.dp_clipping_norm else r.num_examples for r in accepted]
    strategy.traffic[server_round].secagg["tolerance"] = tolerance(workflow, weights)
    mean = unpack_state({VALUES: bridge.mean.astype(np.float32)}, strategy.session.method.layout)
    if cfg.dp_clipping_norm:  # every client weighed 1: the mean times their count is the sum
        total = {k: v.double() * len(accepted) for k, v in mean.items()}
        mean = noised_mean(cfg, total, server_round, strategy.clipping_norm, len(accepted))
        strategy.traffic[server_round].dp_clipping_norm = strategy.clipping_norm
    strategy.step(accepted, mean, server_round)


def tolerance(workflow: SecAggPlusWorkflow, weights: list[float]) -> float:
    """The most any value of the secure mean differs from FedAvg of the same (clipped)
    updates: each client's weighted values are rounded stochastically to one of
    quantization-range levels over +-clipping-range, off by less than one level 2C/T; their
    sum is divided by the sum of the weights (examples / max-weight, kept exactly)."""
    level = 2 * workflow.clipping_range / workflow.quantization_range
    return len(weights) * level / sum(w / workflow.max_weight for w in weights)


class _StrategyBridge(LegacyFedAvg):
    """The two legacy calls Flower's workflow makes, answered by our strategy."""

    def __init__(self, strategy: FedPafiStrategy, grid: Grid, loop_round: int) -> None:
        super().__init__()
        self.strategy, self.grid, self.loop_round = strategy, grid, loop_round
        self.mean: np.ndarray | None = None

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        """The round's sample, each sent the global state (`parameters`) and our config."""
        config = dict(self.strategy.base_config())
        config[p.ROUND] = server_round
        nodes = self.strategy.sample(self.grid, self.loop_round)
        return [(GridClientProxy(node, self.grid, 0), FitIns(parameters, config))
                for node in nodes]

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list) -> tuple[Parameters | None, dict]:
        """Every result carries the same unmasked, dequantized mean: keep it."""
        (self.mean,) = parameters_to_ndarrays(results[0][1].parameters)
        return None, {}


class LedgerGrid:
    """The grid as the workflow sees it: every message counted both ways per node, and the
    masked replies checked before they reach the sum."""

    def __init__(self, grid: Grid, strategy: FedPafiStrategy, traffic: RoundTraffic) -> None:
        self.grid, self.strategy, self.traffic = grid, strategy, traffic
        self.down: dict[int, int] = defaultdict(int)
        self.up: dict[int, int] = defaultdict(int)
        self.accepted: list[ValidReply] = []

    def send_and_receive(self, messages: Iterable[Message], timeout: float | None = None
                         ) -> list[Message]:
        messages = list(messages)
        stage = str(messages[0].content[RECORD_KEY_CONFIGS][Key.STAGE]) if messages else ""
        for message in messages:
            self.down[message.metadata.dst_node_id] += message_bytes(message)
            self.stage(stage)["down"] += message_bytes(message)
        self.traffic.sent += messages
        started = time.perf_counter()
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.stage(stage)["wall_s"] = time.perf_counter() - started
        for reply in replies:
            self.up[self.traffic.node_of(reply)] += message_bytes(reply)
            self.stage(stage)["up"] += message_bytes(reply)
        sent_to = [m.metadata.dst_node_id for m in messages]
        if stage == Stage.COLLECT_MASKED_VECTORS:
            self.accepted = self.strategy.accept(self.traffic, replies, self._checked, sent_to)
            kept = {r.node_id for r in self.accepted}
            return [r for r in replies if not r.has_error() and r.metadata.src_node_id in kept]
        if stage in (Stage.SETUP, Stage.SHARE_KEYS):  # lost before its update was asked for
            self._note_lost(stage, replies, sent_to)
        return replies

    def _note_lost(self, stage: str, replies: list[Message], sent_to: list[int]) -> None:
        by_node = {self.traffic.node_of(r): r for r in replies}
        for node in sent_to:
            reply = by_node.get(node)
            if reply is None or reply.has_error():
                why = (f"client error: {reply.error.reason}" if reply else
                       f"no reply within {self.strategy.session.cfg.round_timeout:g}s")
                self.traffic.rejected.append({"node_id": node,
                                              "reason": f"SecAgg+ stage {stage}: {why}"})

    def stage(self, stage: str) -> dict[str, float]:
        """What a stage cost: bytes up and down, and the seconds it took."""
        return self.traffic.secagg.setdefault("stages", {}).setdefault(
            stage, {"up": 0, "down": 0, "wall_s": 0.0})

    def _checked(self, reply: Message) -> ValidReply:
        """A masked reply checked as a plain one is, its masked vector's length included."""
        valid = self.strategy.checked_envelope(reply, RECORD_KEY_CONFIGS)
        masked = reply.content[RECORD_KEY_CONFIGS].get(Key.MASKED_PARAMETERS, [])
        shapes = [bytes_to_ndarray(b).shape for b in masked]
        expected = [(1,), (self.strategy.session.method.num_values(),)]  # weight, values
        if shapes != expected:
            raise RejectedReply(f"masked update of shapes {shapes}, expected {expected}")
        return valid

    def close(self) -> None:
        """The round's bytes, per sampled node over all stages."""
        self.traffic.bytes_down = [self.down[n] for n in self.traffic.sent_to]
        self.traffic.bytes_up = [self.up[n] for n in self.traffic.sent_to if self.up[n]]
