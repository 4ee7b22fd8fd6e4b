"""What the server records of each round: rounds.jsonl, TensorBoard and a printed table row."""

from __future__ import annotations

import time

from common import privacy, report
from common.run_folder import RunFolder
from common.session import Session
from server.strategy import FedPafiStrategy


class RoundLog:
    """The log of round 0 (the model before training) and of every round after it."""

    def __init__(self, session: Session, strategy: FedPafiStrategy, folder: RunFolder,
                 records: list[dict] | None = None, initial: dict | None = None) -> None:
        """`records` and `initial` carry the log of the rounds before a resume."""
        self.session = session
        self.strategy = strategy
        self.folder = folder
        self.metric = session.task.main_metric
        self.floor_up = session.codec.floor_bytes(session.method.num_values(),
                                                  session.method.num_indices())
        self.initial: dict[str, float] = initial or {}
        self.records: list[dict] = records or []
        self.cumulative_bytes = float(sum(r["bytes_up"] + r["bytes_down"] for r in self.records))

    def start(self, metrics: dict[str, float], loss: float) -> None:
        """Round 0, or the model a resumed run goes on from (printed only: it is logged)."""
        done = self.strategy.round_offset
        if done:
            print(f"resumed after round {done}: dev {self.metric} {metrics[self.metric]:.4f}",
                  flush=True)
        else:
            self.initial = {**metrics, "loss": loss}
            self.folder.log_initial(metrics, loss)
            print(f"round 0 (pre-trained backbone, new head): dev {self.metric} "
                  f"{metrics[self.metric]:.4f}", flush=True)
        print(report.table_header(self.metric, bool(self.session.cfg.dp_noise_multiplier)),
              flush=True)

    def add_round(self, server_round: int, metrics: dict[str, float], loss: float) -> None:
        traffic = self.strategy.traffic.get(server_round)
        up, down = traffic.bytes_up, traffic.bytes_down
        record = {
            "round": server_round,
            "metrics": metrics,
            "loss": loss,
            "train_loss": traffic.train_loss,
            "clients": traffic.clients,
            "rejected": traffic.rejected,
            "skipped": traffic.skipped,
            "bytes_up": sum(up),
            "bytes_down": sum(down),
            "bytes_up_per_client": sum(up) / len(up) if up else 0.0,
            "bytes_down_per_client": sum(down) / len(down) if down else 0.0,
            "floor_bytes_up_per_client": self.floor_up,
            "codec": self.session.codec.label,
            "wall_s": time.perf_counter() - traffic.started,
            # where the round's time went: the server's phases (`clients` is the wait for
            # the replies) and the clients' own phases summed over the valid replies
            "seconds": {k: round(v, 4) for k, v in traffic.laps.seconds.items()},
            "client_seconds": {k: round(v, 4) for k, v in traffic.client_seconds.items()},
        }
        if self.session.cfg.dp_noise_multiplier:  # every round not skipped released a mean
            releases = sum(not r["skipped"] for r in self.records) + (not traffic.skipped)
            record["epsilon"] = privacy.epsilon(self.session.cfg, releases)
        if traffic.dp_clipping_norm is not None:  # DP: the norm the round clipped to
            record["dp_clipping_norm"] = traffic.dp_clipping_norm
        if traffic.whole_downloads is not None:  # coded download: who got the whole view
            record["download"] = {"codec": self.strategy.download.label,
                                  "whole": traffic.whole_downloads}
        if traffic.secagg:  # SecAgg+: bytes and seconds by stage, the mean's tolerance
            record["secagg"] = traffic.secagg
        if self.session.method.sparse_wire:  # entries any client has changed so far
            record["union_values"] = self.session.method.union_values(self.strategy.state)
        self.cumulative_bytes += record["bytes_up"] + record["bytes_down"]
        self.records.append(record)
        self.folder.append_round(record)
        print(report.table_row(record, self.metric, self.cumulative_bytes), flush=True)
        for rejected in traffic.rejected:
            print(f"      rejected node {rejected['node_id']}: {rejected['reason']}", flush=True)
