"""Per-round bookkeeping: evaluate the merged global model, log the round, print a row."""

from __future__ import annotations

import time

from flwr.app import ArrayRecord, MetricRecord

from common import report
from common.run_folder import RunFolder
from common.session import Session
from common.train import evaluate
from common.updates import unpack_state
from server.strategy import FedPafiStrategy


class RoundReporter:
    """Flower's `evaluate_fn`: called with round 0 (untrained) and after every round."""

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

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        method = self.session.method
        method.load(unpack_state({k: a.numpy() for k, a in arrays.items()}, method.layout,
                                 method.sparse_wire))
        cfg = self.session.cfg
        metrics, loss = evaluate(self.session.method.model, self.session.dev_set,
                                 self.session.tokenizer, self.session.task,
                                 cfg.max_seq_length, cfg.eval_batch_size)
        done = self.strategy.round_offset
        if server_round == 0 and done:
            print(f"resumed after round {done}: dev {self.metric} {metrics[self.metric]:.4f}",
                  flush=True)
        elif server_round == 0:
            self.initial = {**metrics, "loss": loss}
            self.folder.log_initial(metrics, loss)
            print(f"round 0 (pre-trained backbone, new head): dev {self.metric} "
                  f"{metrics[self.metric]:.4f}", flush=True)
        else:  # checkpoint first: a round in the log always has its checkpoint
            self.folder.save_checkpoint(done + server_round, self.strategy.checkpoint(),
                                        {"initial_metrics": self.initial})
            self._log_round(done + server_round, metrics, loss)
        if server_round == 0:
            print(report.table_header(self.metric), flush=True)
        return MetricRecord({**metrics, "loss": loss})

    def _log_round(self, server_round: int, metrics: dict[str, float], loss: float) -> None:
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
        }
        if self.session.method.sparse_wire:  # entries any client has changed so far
            record["union_values"] = self.session.method.union_values(self.strategy.state)
        self.cumulative_bytes += record["bytes_up"] + record["bytes_down"]
        self.records.append(record)
        self.folder.append_round(record)
        print(report.table_row(record, self.metric, self.cumulative_bytes), flush=True)
        for rejected in traffic.rejected:
            print(f"      rejected node {rejected['node_id']}: {rejected['reason']}", flush=True)
