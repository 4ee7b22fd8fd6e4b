"""The server's side of a round: sample and address the clients, validate and aggregate
their replies in the method's update space, evaluate the global model, count the bytes.

Flower's FedAvg averages whole ArrayRecords; here replies are encoded updates (fp16,
int8, ...) that must be decoded and checked first, so `aggregate_train` is replaced: the
valid updates combine by `--aggregator` (the example-weighted mean, or a robust rule,
`common.aggregators`), or with `--dp-clipping-norm` into the clipped, noised mean of
`common.privacy` (clipped and noised by the clients with `--dp-side client`), and the
result goes to the server optimizer (FedAvg, FedAdam or FedYogi in the method's layout,
`common.server_opt`). The ServerApp (`server/app.py`) calls these steps in the order of
the algorithm, one round after the other. With `--secagg`, `server/secagg.py` runs
Flower's SecAgg+ workflow around the same sampling, reply checks (`accept`,
`checked_envelope`) and optimizer step (`step`). With `--download-codec ternary` the
server sends each client the coded change from the state the clients hold (the client view,
`common.download`) instead of the whole state, or that view whole to a client that does
not hold the previous one.
"""

from __future__ import annotations

import io
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import SType
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from common import protocol as p
from common.aggregators import aggregate
from common.codecs import download_codec
from common.download import coded_change
from common.errors import FedPafiError
from common.laps import Laps
from common.privacy import next_clipping_norm, noised_mean, private_mean
from common.server_opt import server_optimizer_for
from common.session import Session
from common.train import evaluate
from common.updates import INDICES, State, decode_update, pack_state, unpack_state
from server.traffic import message_bytes

DP_NORM_KEY = "dp.clipping_norm"  # in the checkpoint
VIEW_PREFIX = "download.view."  # the client view's entries in the checkpoint


@dataclass
class RoundTraffic:
    """What one round sent and received, and from whom."""

    started: float = field(default_factory=time.perf_counter)
    sent_to: list[int] = field(default_factory=list)
    sent: list[Message] = field(default_factory=list)  # Flower sets their ids as it sends them
    bytes_down: list[int] = field(default_factory=list)
    bytes_up: list[int] = field(default_factory=list)
    clients: list[int] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    skipped: bool = False
    train_loss: float | None = None
    laps: Laps = field(default_factory=Laps)  # the server's phases (`server/app.py`)
    client_seconds: dict[str, float] = field(default_factory=dict)  # summed over valid replies
    secagg: dict = field(default_factory=dict)  # SecAgg+: bytes by stage, the tolerance
    dp_clipping_norm: float | None = None  # DP: the norm this round's updates were clipped to
    whole_downloads: int | None = None  # coded download: clients sent the whole view

    def node_of(self, reply: Message) -> int:
        """The node a reply stands for. The SuperLink answers for an offline node itself
        (an error reply from node 1), so look up where the instruction went."""
        for message in self.sent:
            if message.metadata.message_id == reply.metadata.reply_to_message_id:
                return message.metadata.dst_node_id
        return reply.metadata.src_node_id


class FedPafiStrategy(FedAvg):
    """Flower's FedAvg with sampling, validation and aggregation in the method's space. The
    ServerApp calls its steps itself (`play_round`) rather than Flower's `start` loop, so
    that a round ends with its checkpoint and reads in one place."""

    poll_s = 1.0  # seconds between looks at the online nodes while waiting for enough

    def __init__(self, session: Session, client_state: Path | None = None) -> None:
        """`client_state`: a folder on a disk the clients share (a simulation), where they
        keep the residues of a codec with error feedback so that a resumed run has them."""
        cfg = session.cfg
        super().__init__(
            fraction_evaluate=0.0,  # the server evaluates the merged model itself
            min_train_nodes=cfg.sampled_clients,
            min_available_nodes=cfg.sampled_clients,
        )
        self.session = session
        self.state: State = session.method.state()
        self.optimizer = server_optimizer_for(cfg, session.method.lr_by_key())
        self.traffic: dict[int, RoundTraffic] = {}
        self.round_offset = 0  # rounds completed before this process (a resumed run)
        self.online: set[int] | None = None  # nodes online at the last sampling
        self.client_state = client_state if session.codec.error_feedback else None
        self.clipping_norm = cfg.dp_clipping_norm  # DP: the next round's (adaptive moves it)
        self.download = download_codec(cfg)  # None: every client gets the whole fp32 state
        self.view: State | None = None  # coded download: the state the clients hold
        self.view_round = 0  # the round whose instructions built the view
        self.holds: dict[int, int] = {}  # node -> the round of the view its reply said it holds

    def checkpoint(self) -> State:
        """What a resumed run needs: the global state, the server optimizer's moments, the
        DP clipping norm (moved by adaptive clipping) and the client view (coded download:
        the next change is coded from it)."""
        norm = ({DP_NORM_KEY: torch.tensor([self.clipping_norm], dtype=torch.float64)}
                if self.session.cfg.dp_clipping == "adaptive" else {})
        view = {VIEW_PREFIX + k: v for k, v in (self.view or {}).items()}
        return {**self.state, **self.optimizer.state_dict(), **norm, **view}

    def resume(self, completed_round: int, saved: State) -> None:
        """Continue after `completed_round` from its checkpoint."""
        state = {k: saved[k] for k in self.session.method.layout if k in saved}
        self.session.method.check_layout(state, "checkpoint")
        self.optimizer.load_state_dict(saved)
        if DP_NORM_KEY in saved:
            self.clipping_norm = float(saved[DP_NORM_KEY].item())
        view = {k[len(VIEW_PREFIX):]: v for k, v in saved.items() if k.startswith(VIEW_PREFIX)}
        if view:  # no node of this new Flower run holds it yet: each gets it whole first
            self.session.method.check_layout(view, "checkpoint's client view")
            self.view, self.view_round = view, completed_round
        self.state, self.round_offset = state, completed_round

    def global_arrays(self) -> ArrayRecord:
        """The current global state on the wire: one flat fp32 array in the method's layout
        (for sparse-local its non-zero entries with their indices: the union of client
        masks)."""
        method = self.session.method
        return _array_record(pack_state(self.state, method.layout, method.sparse_wire))

    def evaluate(self) -> tuple[dict[str, float], float]:
        """Dev-set metrics and loss of the global model: pre-trained + the global state."""
        session, cfg = self.session, self.session.cfg
        session.method.load(self.state)
        metrics, loss = evaluate(session.method.model, session.dev_set, session.tokenizer,
                                 session.task, cfg.max_seq_length, cfg.eval_batch_size)
        return {**metrics, **session.method.metrics()}, loss  # lora-ts: gate-on, dev tokens

    def base_config(self) -> ConfigRecord:
        """What every instruction carries besides the state: the run config, the fingerprint,
        where clients keep their residues when they share this disk, and the DP clipping
        norm when clients clip."""
        config = ConfigRecord({
            p.RUN_CONFIG: self.session.cfg.to_json(),
            p.FINGERPRINT: self.session.fingerprint,
        })
        if self.client_state:
            config[p.CLIENT_STATE] = str(self.client_state)
        if self.clipping_norm:  # DP: the norm clients clip to (client side, secagg)
            config[p.DP_CLIPPING_NORM] = self.clipping_norm
        return config

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        nodes = self.sample(grid, server_round)
        traffic = self.traffic[server_round + self.round_offset]
        config[p.ROUND] = server_round + self.round_offset
        records = (self._coded_download(nodes, config, traffic) if self.download
                   else dict.fromkeys(nodes, self._record(arrays, config)))
        messages = [Message(content=records[n], message_type="train", dst_node_id=n)
                    for n in nodes]
        sizes: dict[int, int] = {}  # messages that share a record weigh alike: measure once
        traffic.bytes_down = [sizes.setdefault(id(m.content), message_bytes(m))
                              for m in messages]
        traffic.sent = messages
        return messages

    def _coded_download(self, nodes: list[int], config: ConfigRecord,
                        traffic: RoundTraffic) -> dict[int, RecordDict]:
        """Each node's instruction when the download is coded (`common.download`): the
        coded change from the previous view to a node whose reply said it holds that view,
        the new view whole (fp32) to any other. Round 1 (or a run's first without a view)
        sends the global state whole, and it becomes the view."""
        method, server_round = self.session.method, int(config[p.ROUND])
        base, change = self.view_round, None
        if self.view is None:
            self.view = unpack_state(pack_state(self.state, method.layout), method.layout)
        else:
            arrays, self.view = coded_change(self.state, self.view, self.download, method.layout)
            change = self._record(_array_record(arrays),
                                  ConfigRecord({**config, p.VIEW_BASE: base}))
        self.view_round = server_round
        coded = {n for n in nodes if change is not None and self.holds.get(n) == base}
        whole = None if coded == set(nodes) else self._record(
            _array_record(pack_state(self.view, method.layout)), config)
        traffic.whole_downloads = len(nodes) - len(coded)
        return {n: change if n in coded else whole for n in nodes}

    def sample(self, grid: Grid, loop_round: int) -> list[int]:
        """This round's clients, drawn from the available nodes by (seed, round); the
        round's traffic starts here."""
        server_round = loop_round + self.round_offset
        traffic = self.traffic.setdefault(server_round, RoundTraffic())
        available = self._available_nodes(grid, server_round)
        sampler = random.Random(self.session.cfg.seed * 1_000_003 + server_round)
        nodes = sampler.sample(sorted(available), min(self.min_train_nodes, len(available)))
        traffic.sent_to = nodes
        return nodes

    def _available_nodes(self, grid: Grid, server_round: int) -> list[int]:
        """The nodes to sample from: all of them at the start, then those still online.

        The first round waits for `sampled_clients` SuperNodes, as Flower's `sample_nodes`
        does. Later a SuperNode that crashed or was stopped goes offline (no heartbeat) and
        never comes back under its id; waiting for it would stall a deployment forever, so
        a round goes on with the online nodes as long as `min-replies` of them are, and says
        which nodes left or joined.
        """
        if self.online is None:
            self._hint_if_waiting(grid)
            _, available = sample_nodes(grid, self.min_available_nodes, self.min_train_nodes)
        else:
            available = self._wait_for_min_replies(grid, server_round)
        self._report_changes(set(available), server_round)
        return available

    def _wait_for_min_replies(self, grid: Grid, server_round: int) -> list[int]:
        """Online nodes, once `min-replies` are; after `round-timeout` whatever is online."""
        cfg = self.session.cfg
        deadline = time.monotonic() + cfg.round_timeout
        online = list(grid.get_node_ids())
        if len(online) < cfg.min_replies:
            print(f"round {server_round}: {len(online)} SuperNodes online, min-replies is "
                  f"{cfg.min_replies}; waiting up to {cfg.round_timeout:g}s for more",
                  flush=True)
        while len(online) < cfg.min_replies and time.monotonic() < deadline:
            time.sleep(self.poll_s)
            online = list(grid.get_node_ids())
        return online

    def _report_changes(self, online: set[int], server_round: int) -> None:
        if self.online is not None:
            if gone := sorted(self.online - online):
                print(f"round {server_round}: SuperNode {', '.join(map(str, gone))} went "
                      f"offline (stopped, or crashed and missed its heartbeats); going on "
                      f"with the {len(online)} online", flush=True)
            if joined := sorted(online - self.online):
                print(f"round {server_round}: SuperNode {', '.join(map(str, joined))} joined",
                      flush=True)
        self.online = online

    def _hint_if_waiting(self, grid: Grid) -> None:
        connected, needed = len(list(grid.get_node_ids())), self.min_available_nodes
        if connected < needed:
            print(f"waiting for {needed} SuperNodes (num-clients), {connected} connected; "
                  f"for a local `flwr run`, size the federation to match: "
                  f"--federation-config 'num-supernodes={needed}'", flush=True)

    @staticmethod
    def _record(arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        return RecordDict({p.ARRAYS: arrays, p.CONFIG: config})

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        traffic = self.traffic.setdefault(server_round, RoundTraffic())
        replies = list(replies)
        traffic.bytes_up += [message_bytes(r) for r in replies if r.has_content()]  # errors: 0
        self._note_views(traffic, replies, server_round)
        accepted = self.accept(traffic, replies, self._validated, traffic.sent_to)
        if not self.enough(accepted, server_round):
            return None, None
        weights = [r.num_examples for r in accepted]
        updates, cfg = [r.update for r in accepted], self.session.cfg
        combined = (self.private(accepted, server_round) if cfg.dp_clipping_norm
                    else aggregate(cfg, updates, weights))
        self.step(accepted, combined, server_round)
        return self.global_arrays(), MetricRecord({"train-loss": traffic.train_loss})

    def _note_views(self, traffic: RoundTraffic, replies: list[Message],
                    server_round: int) -> None:
        """Coded download: which nodes now hold this round's view, by their own word (a
        refused reply still says it; a crashed client says nothing, and gets it whole)."""
        for reply in replies if self.download else ():
            info = reply.content.get(p.REPLY_INFO) if reply.has_content() else None
            if info is not None and info.get(p.VIEW_ROUND) == server_round:
                self.holds[traffic.node_of(reply)] = server_round

    def private(self, accepted: list[ValidReply], server_round: int) -> State:
        """The DP mean of the valid updates (`common.privacy`), clipped here or, with
        `--dp-side client`, by their clients; then adaptive clipping moves the norm."""
        cfg, norm = self.session.cfg, self.clipping_norm
        updates = [r.update for r in accepted]
        if cfg.dp_side == "client":
            total = {k: sum(u[k].double() for u in updates) for k in updates[0]}
            mean = noised_mean(cfg, total, server_round, norm, contributed=len(accepted))
            unclipped = sum(r.unclipped for r in accepted)
        else:
            mean, unclipped = private_mean(cfg, updates, server_round, norm)
        self.traffic[server_round].dp_clipping_norm = norm
        if cfg.dp_clipping == "adaptive":
            self.clipping_norm = next_clipping_norm(cfg, norm, unclipped, len(accepted),
                                                    server_round)
        return mean

    def accept(self, traffic: RoundTraffic, replies: list[Message],
               check: Callable[[Message], ValidReply],
               sent_to: list[int]) -> list[ValidReply]:
        """The replies that pass `check`, in partition order; the others, and the nodes of
        `sent_to` that never replied, go to the round's rejected list with the reason."""
        accepted: list[ValidReply] = []
        replied = set()
        for reply in replies:
            node = traffic.node_of(reply)
            replied.add(node)
            try:
                accepted.append(check(reply))
            except FedPafiError as exc:
                traffic.rejected.append({"node_id": node, "reason": str(exc)})
        timeout = self.session.cfg.round_timeout
        traffic.rejected += [{"node_id": node, "reason": f"no reply within {timeout:g}s"}
                             for node in sent_to if node not in replied]
        return sorted(accepted, key=lambda r: r.partition_id)  # a fixed summation order

    def enough(self, accepted: list[ValidReply], server_round: int) -> bool:
        """Whether the round has `min-replies` valid replies; if not, it is skipped."""
        if len(accepted) >= self.session.cfg.min_replies:
            return True
        self.traffic[server_round].skipped = True
        print(f"round {server_round} skipped: {len(accepted)} valid replies, min-replies is "
              f"{self.session.cfg.min_replies}; the global model stays as it was.", flush=True)
        return False

    def step(self, accepted: list[ValidReply], combined: State, server_round: int) -> None:
        """The server optimizer's step on the round's combined update, and its log."""
        traffic = self.traffic[server_round]
        traffic.clients = [r.node_id for r in accepted]
        self.state = self.optimizer.step(self.state, combined, server_round)
        examples = sum(r.num_examples for r in accepted)
        traffic.train_loss = sum(r.num_examples * r.loss for r in accepted) / examples
        for reply in accepted:
            for phase, seconds in reply.seconds.items():
                traffic.client_seconds[phase] = traffic.client_seconds.get(phase, 0.0) + seconds

    def _validated(self, reply: Message) -> ValidReply:
        """Decode and check one reply, or raise with the reason it is refused."""
        valid = self.checked_envelope(reply, p.UPDATE)
        arrays = {key: received_values(key, array)
                  for key, array in reply.content[p.UPDATE].items()}
        method = self.session.method
        if method.sparse_wire and len(arrays.get(INDICES, ())) > method.num_values():
            raise RejectedReply(f"sparse update carries {len(arrays[INDICES])} values; "
                                f"the method sends at most {method.num_values()} (k + head)")
        valid.update = decode_update(arrays, self.session.codec, method.layout,
                                     method.sparse_wire)
        cfg = self.session.cfg
        if cfg.dp_side == "client" and cfg.dp_clipping == "adaptive":
            bit = reply.content[p.METRICS].get(p.DP_UNCLIPPED)
            if bit not in (0, 1):
                raise RejectedReply(f"{p.DP_UNCLIPPED} must be 0 or 1 with client-side "
                                    f"adaptive clipping, got {bit!r}")
            valid.unclipped = bool(bit)
        bound = cfg.max_update_norm
        if bound:
            norm = float(sum(v.double().pow(2).sum() for v in valid.update.values()) ** 0.5)
            if norm > bound:
                raise RejectedReply(f"update norm {norm:.4g} exceeds max-update-norm {bound:g}")
        return valid

    def checked_envelope(self, reply: Message, payload: str) -> ValidReply:
        """Check what a reply says about its update (its `payload` record aside): no error,
        the same mask and codec, a positive example count. Its update is left empty."""
        if reply.has_error():
            raise RejectedReply(f"client error: {reply.error.reason}")
        content = reply.content
        needed = (payload, p.METRICS, p.REPLY_INFO)
        if any(key not in content for key in needed):
            raise RejectedReply(f"reply lacks a record: needs {', '.join(needed)}")
        info, metrics = content[p.REPLY_INFO], content[p.METRICS]
        if info.get(p.FINGERPRINT) != self.session.fingerprint:
            raise RejectedReply(
                f"mask fingerprint {info.get(p.FINGERPRINT)!r} differs from the server's "
                f"{self.session.fingerprint!r}"
            )
        if info.get(p.CODEC) != self.session.codec.name:
            expected = self.session.codec.name
            raise RejectedReply(f"codec {info.get(p.CODEC)!r}, expected {expected!r}")
        num_examples = float(metrics.get(p.NUM_EXAMPLES, 0))
        if not num_examples > 0:
            raise RejectedReply(f"{p.NUM_EXAMPLES} must be > 0, got {num_examples}")
        return ValidReply(
            node_id=reply.metadata.src_node_id,
            update={},
            num_examples=num_examples,
            partition_id=int(metrics.get(p.PARTITION, 0)),
            loss=float(metrics.get("train-loss", float("nan"))),
            seconds={phase: float(metrics[f"{phase}-seconds"]) for phase in p.CLIENT_PHASES
                     if f"{phase}-seconds" in metrics},
        )


@dataclass
class ValidReply:
    node_id: int
    update: State  # empty under secagg: the server sees only the sum
    num_examples: float
    partition_id: int
    loss: float
    seconds: dict[str, float]  # the client's own account of its phases (`p.CLIENT_PHASES`)
    unclipped: bool = False  # client-side adaptive DP: its update was within the norm


class RejectedReply(FedPafiError):
    """A reply that must not reach the aggregate."""


def _array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """Packed arrays as the record an instruction carries."""
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0,  # what np.save writes
                (2, 0): np.lib.format.read_array_header_2_0}  # for headers over 64 KiB


def received_values(key: str, array: Array) -> np.ndarray:
    """A reply's array as a read-only view of the bytes Flower received: `Array.numpy()`
    copies them (91 MB for `full`). The decoders copy what they keep, and numpy refuses
    any write into the view."""
    try:
        if array.stype != SType.NUMPY:
            raise ValueError(f"stype {array.stype!r}, expected {SType.NUMPY!r}")
        npy = io.BytesIO(array.data)
        read_header = _NPY_HEADERS.get(np.lib.format.read_magic(npy))
        if read_header is None:
            raise ValueError("not an .npy of format 1.0 or 2.0")
        shape, fortran_order, dtype = read_header(npy)
        if dtype.hasobject:
            raise ValueError("object arrays are refused: they would need pickle")
        flat = np.frombuffer(array.data, dtype, count=math.prod(shape), offset=npy.tell())
    except ValueError as exc:
        raise RejectedReply(f"array '{key}' is not a readable NumPy array: {exc}") from exc
    return flat.reshape(shape, order="F" if fortran_order else "C")
