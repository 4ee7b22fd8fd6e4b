"""fedpafi ServerApp: one shared mask, sparse updates, one merged global model.

1. Build the session: backbone, shared mask and its fingerprint, the method's layout.
2. Each round (Flower's loop): send the global state, validate and average the replies
   in the method's update space, evaluate the merged model on the dev set, log.
3. End: merge the global update into a plain checkpoint and save the compact update.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common import plots, report
from common.config import RunConfig
from common.export import save_checkpoint, save_update
from common.glue import format_histogram, histogram_labels, label_histogram, load_split, partition
from common.run_folder import RunFolder
from common.session import Session
from common.train import evaluate
from server.rounds import RoundReporter
from server.strategy import FedPafiStrategy

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    serve(grid, RunConfig.from_mapping(context.run_config))


def serve(grid: Grid, cfg: RunConfig, resume: RunFolder | None = None) -> Path:
    """Run the whole federation on `grid` (or the rest of a resumed run); returns its folder."""
    session = Session.build(cfg)
    folder = resume or RunFolder.create(cfg)
    print(f"fedpafi run folder: {folder.path}", flush=True)
    _describe(session)
    _show_partitions(session, folder)

    strategy = FedPafiStrategy(session)
    records, initial = [], None
    if resume:
        done, state, info = folder.load_checkpoint()
        strategy.resume(done, state)
        records, initial = folder.keep_rounds(done), info["initial_metrics"]
    reporter = RoundReporter(session, strategy, folder, records, initial)
    if cfg.rounds > strategy.round_offset:
        strategy.start(
            grid=grid,
            initial_arrays=strategy.initial_arrays(),
            num_rounds=cfg.rounds - strategy.round_offset,
            timeout=cfg.round_timeout,
            train_config=strategy.base_config(),
            evaluate_fn=reporter,
        )
    folder.close()  # the TensorBoard writer
    _finish(session, strategy, reporter, folder)
    return folder.path


def _describe(session: Session) -> None:
    method, cfg = session.method, session.cfg
    line = f"method {cfg.method}: {method.num_values():,} values per update ({session.codec.label})"
    if method.mask is not None:
        line += (f"; mask k={method.mask.k:,} of {method.mask.num_eligible:,} eligible, "
                 f"fingerprint {method.mask.fingerprint[:16]}")
    if method.sparse_wire:
        line += (f"; each client picks its own k={method.num_indices():,} by gradient salience "
                 f"({cfg.salience_batches} batches) and sends them with int32 indices")
    print(line, flush=True)


def _show_partitions(session: Session, folder: RunFolder) -> None:
    """Recompute the clients' seeded partitions to print and plot the label skew."""
    cfg = session.cfg
    shards = partition(load_split(session.task, "train", cfg.resolved_data_dir),
                       cfg.num_clients, cfg.alpha, cfg.iid, cfg.seed, session.task)
    hist = label_histogram(shards, session.task)
    print(format_histogram(hist, session.task), flush=True)
    split = "iid" if cfg.iid else f"Dirichlet alpha={cfg.alpha}"
    plots.label_histogram(hist, histogram_labels(session.task), folder.path / "label_histogram.png",
                          f"{cfg.task}: labels per client ({split})")


def _finish(session: Session, strategy: FedPafiStrategy, reporter: RoundReporter,
            folder: RunFolder) -> None:
    cfg = session.cfg
    session.method.load(strategy.state)
    compact = session.method.compact()
    save_update(session, compact, folder.path / "update.safetensors")
    merged = save_checkpoint(session, compact, folder.path / "model")
    final, final_loss = evaluate(merged, session.dev_set, session.tokenizer, session.task,
                                 cfg.max_seq_length, cfg.eval_batch_size)
    records = reporter.records
    upload = _mean([r["bytes_up_per_client"] for r in records if r["clients"]])
    full_bytes = 4 * sum(p.numel() for p in merged.parameters())
    folder.write_json("summary.json", {
        "method": cfg.method,
        "task": cfg.task,
        "codec": session.codec.label,
        "server_opt": cfg.server_opt,
        "main_metric": session.task.main_metric,
        "initial_metrics": reporter.initial,
        "final_metrics": final,
        "final_loss": final_loss,
        "rounds_completed": len(records),
        "bytes_up_total": sum(r["bytes_up"] for r in records),
        "bytes_down_total": sum(r["bytes_down"] for r in records),
        "upload_per_client_per_round": upload,
        "download_per_client_per_round": _mean([r["bytes_down_per_client"] for r in records]),
        "full_finetuning_bytes": full_bytes,
        "floor_bytes_up_per_client": reporter.floor_up,
        "values_per_update": session.method.num_values(),
        "trainable_parameters": sum(p.numel() for p in session.method.trainable_parameters()),
        "mask_fingerprint": session.fingerprint,
        "k": session.method.mask.k if session.method.mask else session.method.num_indices(),
        "wall_s": sum(r["wall_s"] for r in records),
    })
    if records:
        plots.rounds(records, reporter.initial, session.task.main_metric,
                     folder.path / "rounds.png", f"{cfg.method} on {cfg.task}")
    metric = session.task.main_metric
    print(f"final merged model: dev {metric} {final[metric]:.4f} "
          f"(round 0: {reporter.initial.get(metric, float('nan')):.4f})", flush=True)
    print(report.upload_comparison(upload, full_bytes), flush=True)
    print(f"fedpafi run folder: {folder.path}", flush=True)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
