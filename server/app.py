"""fedpafi ServerApp: one shared mask, sparse updates, one merged global model.

1. Build the session: backbone, shared mask and its fingerprint, the method's layout.
2. Each round (`play_round`): sample the clients and send them the global state, validate
   and average the replies in the method's update space (with --secagg, Flower's SecAgg+
   sums them instead, `server/secagg.py`), step the server optimizer, evaluate the global
   model on the dev set, checkpoint, log.
3. End: merge the global update into a plain checkpoint and save the compact update.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.serverapp import Grid, ServerApp

from common import plots, privacy, report
from common.codecs import download_codec
from common.config import POISON_SCALE, RunConfig
from common.errors import MergeError
from common.export import save_checkpoint, save_update
from common.glue import format_histogram, histogram_labels, label_histogram, load_split, split
from common.run_folder import RunFolder
from common.session import Session
from common.train import evaluate
from server.round_log import RoundLog
from server.secagg import secure_round, secure_workflow
from server.strategy import FedPafiStrategy

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    serve(grid, RunConfig.from_mapping(context.run_config))


def serve(grid: Grid, cfg: RunConfig, resume: RunFolder | None = None,
          clients_share_disk: bool = False) -> Path:
    """Run the whole federation on `grid` (or the rest of a resumed run); returns its folder.
    `clients_share_disk` (a simulation): clients keep their state in the run folder's
    `clients/`, so that a resumed run gets it back."""
    session = Session.build(cfg)
    folder = resume or RunFolder.create(cfg)
    print(f"fedpafi run folder: {folder.path}", flush=True)
    _describe(session)
    largest_shard = _show_partitions(session, folder)

    strategy = FedPafiStrategy(session, folder.path / "clients" if clients_share_disk else None)
    secure = secure_workflow(cfg, largest_shard) if cfg.secagg else None
    records, initial = [], None
    if resume:
        done, state, info = folder.load_checkpoint()
        strategy.resume(done, state)
        records, initial = folder.keep_rounds(done), info["initial_metrics"]
    log = RoundLog(session, strategy, folder, records, initial)
    rounds_left = cfg.rounds - strategy.round_offset  # none: cut off while exporting
    if rounds_left:
        log.start(*strategy.evaluate())
    for loop_round in range(1, rounds_left + 1):
        play_round(grid, strategy, folder, log, loop_round, secure)
    folder.close()  # the TensorBoard writer
    _finish(session, strategy, log, folder)
    return folder.path


def play_round(grid: Grid, strategy: FedPafiStrategy, folder: RunFolder, log: RoundLog,
               loop_round: int, secure: SecAggPlusWorkflow | None = None) -> None:
    """One federated round, in the order of the algorithm. `loop_round` counts this
    process's rounds from 1, as Flower's strategies do; a resumed run's strategy adds the
    rounds done before it. With `secure`, SecAgg+ replaces the exchange and the average."""
    cfg, server_round = strategy.session.cfg, strategy.round_offset + loop_round
    if secure:  # the same sample and state; the server learns only the replies' mean
        secure_round(grid, strategy, secure, loop_round)
        laps = strategy.traffic[server_round].laps
        laps.lap("secure-aggregation")
    else:
        # sample the clients; each gets the global state, the run config and the fingerprint
        instructions = strategy.configure_train(loop_round, strategy.global_arrays(),
                                                strategy.base_config(), grid)
        laps = strategy.traffic[server_round].laps
        laps.lap("configure")
        replies = grid.send_and_receive(instructions, timeout=cfg.round_timeout)
        laps.lap("clients")
        # validate every reply, average the valid ones, step the server optimizer
        strategy.aggregate_train(loop_round, replies)
        laps.lap("aggregate")
    metrics, loss = strategy.evaluate()  # the new global model on the dev set
    laps.lap("evaluate")
    # checkpoint, then log: a round in the log always has its checkpoint to resume from
    folder.save_checkpoint(server_round, strategy.checkpoint(), {"initial_metrics": log.initial})
    laps.lap("checkpoint")
    log.add_round(server_round, metrics, loss)


def _describe(session: Session) -> None:
    """What a user needs to trust the run: the update's size (loud when large), the mask,
    a robust aggregator, the clients that poison on purpose, the DP noise and SecAgg+."""
    method, cfg = session.method, session.cfg
    line = report.update_size(cfg.method, method.num_values(), method.full_values,
                              session.codec.label)
    if method.mask is not None:
        line += (f"; mask k={method.mask.k:,} of {method.mask.num_eligible:,} eligible, "
                 f"fingerprint {method.mask.fingerprint[:16]}")
    if method.sparse_wire:
        line += (f"; each client picks its own k={method.num_indices():,} by gradient salience "
                 f"({cfg.salience_batches} batches) and sends them with int32 indices")
    print(line, flush=True)
    if session.codec.error_feedback:
        floor = session.codec.floor_bytes(method.num_values())
        print(f"codec {session.codec.label}: the largest {cfg.codec_density:.0%} of each "
              f"4096 values as sign x the chunk's mean magnitude, positions Rice-coded, at "
              f"least {report.human_bytes(floor)} an update; each client carries what it "
              f"drops into its next update", flush=True)
    if download := download_codec(cfg):
        print(f"download {download.label}: each client gets the coded change from "
              f"the state the clients hold, or that state whole (fp32) when it missed the "
              f"previous round; clients train from this lossy copy, the server evaluates "
              f"the global state", flush=True)
    if warning := report.large_update_warning(cfg.method, method.num_values(), method.full_values):
        print(warning, flush=True)
    if cfg.aggregator != "fedavg" or cfg.poisoning_clients:
        ids = ", ".join(map(str, range(cfg.poisoning_clients)))
        poisoners = (f"; poisoning partitions {ids} (of {cfg.num_clients}) send "
                     f"{POISON_SCALE:g} x their update every round" if ids else "")
        print(f"aggregator {cfg.aggregator}{poisoners}", flush=True)
    if cfg.dp_clipping_norm:
        m, c = cfg.sampled_clients, cfg.dp_clipping_norm
        count_std, z = privacy.noise_multipliers(cfg)
        who = ("each client clips its update" if cfg.dp_side == "client" or cfg.secagg
               else "the server clips each update")
        norm, noise = f"{c:g}", f"{z:g} x {c:g} / {m} = {z * c / m:.4g}"
        if cfg.dp_clipping == "adaptive":
            norm = (f"C, which starts at {c:g} and follows the {cfg.dp_target_quantile:g} "
                    f"quantile of the update norms (count noise std {count_std:.4g})")
            noise = f"{z:.4g} x C / {m}"
        adds = "the clients add" if cfg.dp_side == "client" else "the server adds"
        print(f"differential privacy: {who} to L2 norm {norm}; over {m} sampled clients, "
              f"{adds} Gaussian noise of std {noise} per value of the mean; epsilon at delta "
              f"{cfg.dp_delta:g} (noise multiplier {cfg.dp_noise_multiplier:g}) each round",
              flush=True)
    if cfg.secagg:
        c, levels = cfg.secagg_clipping_range, cfg.secagg_quantization_range
        weight = "1 (DP)" if cfg.dp_clipping_norm else "examples / largest shard's"
        print(f"secure aggregation (Flower's SecAgg+): the server sees only the sum; keys "
              f"shared with {cfg.secagg_share_count} of {cfg.sampled_clients} clients, "
              f"{cfg.secagg_reconstruction_threshold} shares rebuild one; each value of weight "
              f"({weight}) x update clipped to +-{c:g} and quantized in steps of "
              f"{2 * c / levels:.3g}", flush=True)


def _show_partitions(session: Session, folder: RunFolder) -> int:
    """Recompute the clients' seeded partitions to print and plot the label skew; returns
    the largest shard's size (SecAgg+ weighs each update by its share of it)."""
    cfg = session.cfg
    shards, scheme = split(load_split(session.task, "train", cfg.resolved_data_dir),
                           cfg.num_clients, cfg.alpha, cfg.iid, cfg.seed, session.task,
                           cfg.partitioner)
    hist = label_histogram(shards, session.task)
    how = "iid" if cfg.iid else f"{scheme} alpha={cfg.alpha}"
    if cfg.partitioner == "auto" and scheme == "inner-dirichlet":
        how += (" (partitioner auto: every label-wise Dirichlet draw left a client without "
                "rows, so each client draws its own label mix over an equal share)")
    print(f"partitions: {how}", flush=True)
    print(format_histogram(hist, session.task), flush=True)
    plots.label_histogram(hist, histogram_labels(session.task), folder.path / "label_histogram.png",
                          f"{cfg.task}: labels per client ({how.split(' (')[0]})")
    return max(len(shard) for shard in shards)


def _finish(session: Session, strategy: FedPafiStrategy, log: RoundLog,
            folder: RunFolder) -> None:
    cfg = session.cfg
    session.method.load(strategy.state)
    compact = session.method.compact()
    save_update(session, compact, folder.path / "update.safetensors")
    try:
        merged, which = save_checkpoint(session, compact, folder.path / "model"), "merged model"
    except MergeError as exc:  # lora-ts: the global model keeps its adapter
        print(f"no merged checkpoint: {exc}", flush=True)
        merged, which = session.method.model, "model (adapter kept, not merged)"
    final, final_loss = evaluate(merged, session.dev_set, session.tokenizer, session.task,
                                 cfg.max_seq_length, cfg.eval_batch_size)
    records = log.records
    upload = _mean([r["bytes_up_per_client"] for r in records if r["clients"]])
    full_bytes = 4 * session.method.full_values  # fp32, every parameter
    folder.write_json("summary.json", {
        "method": cfg.method,
        "task": cfg.task,
        "codec": session.codec.label,
        "server_opt": cfg.server_opt,
        "main_metric": session.task.main_metric,
        "initial_metrics": log.initial,
        "final_metrics": final,
        "final_loss": final_loss,
        "rounds_completed": len(records),
        "bytes_up_total": sum(r["bytes_up"] for r in records),
        "bytes_down_total": sum(r["bytes_down"] for r in records),
        "upload_per_client_per_round": upload,
        "download_per_client_per_round": _mean([r["bytes_down_per_client"] for r in records]),
        "full_finetuning_bytes": full_bytes,
        "floor_bytes_up_per_client": log.floor_up,
        "values_per_update": session.method.num_values(),
        "trainable_parameters": sum(p.numel() for p in session.method.trainable_parameters()),
        "mask_fingerprint": session.fingerprint,
        "k": session.method.mask.k if session.method.mask else session.method.num_indices(),
        "wall_s": sum(r["wall_s"] for r in records),
        **({"download_codec": strategy.download.label} if strategy.download else {}),
        **_privacy_summary(cfg, records),
    })
    if records:
        plots.rounds(records, log.initial, session.task.main_metric,
                     folder.path / "rounds.png", f"{cfg.method} on {cfg.task}")
    metric = session.task.main_metric
    print(f"final {which}: dev {metric} {final[metric]:.4f} "
          f"(round 0: {log.initial.get(metric, float('nan')):.4f})", flush=True)
    print(report.upload_comparison(upload, full_bytes), flush=True)
    print(f"fedpafi run folder: {folder.path}", flush=True)


def _privacy_summary(cfg: RunConfig, records: list[dict]) -> dict:
    """The DP settings and the epsilon spent by the last round, when DP is on."""
    if not cfg.dp_clipping_norm:
        return {}
    spent = [r["epsilon"] for r in records if "epsilon" in r]
    norms = [r["dp_clipping_norm"] for r in records if "dp_clipping_norm" in r]
    return {"dp_clipping_norm": cfg.dp_clipping_norm,
            "dp_noise_multiplier": cfg.dp_noise_multiplier,
            "dp_delta": cfg.dp_delta, "dp_clipping": cfg.dp_clipping, "dp_side": cfg.dp_side,
            "dp_last_clipping_norm": norms[-1] if norms else None,
            "epsilon": spent[-1] if spent else None}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
