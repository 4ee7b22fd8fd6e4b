"""The `fedpafi` command: simulate, compare, deploy-local, superlink, mask, export, evaluate.

Run options are generated from RunConfig, so every flag matches a `[tool.flwr.app.config]`
key of the same (kebab-case) name. Errors a user can fix print one line and exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

from common.config import POISON_SCALE, RunConfig  # noqa: E402
from common.errors import FedPafiError  # noqa: E402
from simulations import deploy  # noqa: E402

if TYPE_CHECKING:
    from common.run_folder import RunFolder

HELP = {
    "method": "pafi-hiwi (default), pafi, hiwi, lora, lora-ts, bitfit, full, shira, "
              "sparse-local",
    "task": "GLUE task: sst2 mrpc rte cola stsb qnli qqp mnli wnli",
    "clients-per-round": "clients sampled per round (0: all)",
    "partitioner": "non-IID split: dirichlet (label-wise, sizes vary), inner-dirichlet (equal "
                   "sizes, each client's label mix drawn), auto (dirichlet unless a draw leaves "
                   "a client empty)",
    "local-epochs": "passes over the local shard (replaces local-steps when > 0)",
    "lr": "one learning rate for every part of the method (0: each part's lr-* setting)",
    "lr-pafi": "learning rate of PaFi's masked deltas",
    "lr-hiwi": "learning rate of the HiWi adapters",
    "lr-head": "learning rate of the task head (and an untrained pooler when trained)",
    "lr-bitfit": "learning rate of bitfit's biases",
    "lr-sparse": "learning rate of sparse-local's entries",
    "lr-lora": "learning rate of the LoRA factors",
    "lr-shira": "learning rate of shira's random entries (magnitude: lr-pafi)",
    "lr-full": "learning rate of full fine-tuning",
    "lr-schedule": "cosine (default): each round's local rates are the set ones times "
                   "(1 + cos(pi (round - 1) / rounds)) / 2, so the last rounds settle; "
                   "or constant",
    "untrained-pooler": "a pooler the checkpoint ships untrained: identity, train or keep",
    "sparsity": "PaFi mask size as a fraction of eligible weights (compare: a comma list)",
    "mask-k": "PaFi mask size as an absolute count (replaces sparsity)",
    "mask-include": "extra mask candidates: bias, layernorm (comma list)",
    "salience-batches": "sparse-local: local batches whose summed |gradient| picks each "
                        "client's k entries",
    "logit-adjust": "train on logits + this x log(the client's label prior), so a skewed "
                    "shard does not pull the head toward its own classes; 0: off, 1: usual",
    "hiwi-sync": "merged: send P'-P; adapter: send adapter parameters",
    "lora-targets": "comma list of linear module names that get LoRA factors (and shira's "
                    "random entries)",
    "lora-ts-penalty": "lora-ts: weight of the share of tokens gated on (relaxed) in the "
                       "training loss; 0: none",
    "shira-mask": "shira's entries: random (peft's, r x (in + out) a layer) or magnitude "
                  "(PaFi's mask)",
    "shira-r": "shira random mask: r x (in + out) entries per targeted layer",
    "codec": "fp32, fp16, bf16, int8, ternary (compare: a comma list)",
    "codec-density": "ternary: the share of each chunk of 4096 values it sends, in (0, 1]",
    "download-codec": "fp32: the server sends the whole state; ternary: the change from the "
                      "state the clients hold, coded as the upload (codec-density)",
    "token-merge": "training only: merge this many similar token pairs in each middle "
                   "encoder layer (ToMe matching, straight-through); 0: off",
    "mask-criterion": "smallest, largest or random entries (compare: a comma list)",
    "server-opt": "fedavg, fedadam, fedyogi (compare: a comma list)",
    "server-lr": "fedadam/fedyogi step size (0: each part's own learning rate x "
                 "server-lr-scale)",
    "server-lr-scale": "fedadam/fedyogi with server-lr 0: the step is this x each part's "
                       "local learning rate (compare: a comma list)",
    "server-tau": "fedadam/fedyogi adaptivity floor (0: server-lr / 10, or each part's "
                  "learning rate / 10)",
    "aggregator": "how updates combine: fedavg, median, trimmed-mean, krum (compare: a comma "
                  "list)",
    "trimmed-fraction": "trimmed-mean: share of clients cut from each end, in [0, 0.5)",
    "krum-malicious": "krum: clients assumed malicious (f); needs more than 2f + 2 per round",
    "krum-keep": "krum: updates kept (1: Krum; more: Multi-Krum, their mean by examples)",
    "dp-clipping-norm": "DP: clip each update to this L2 norm, mean without example weights "
                        "(0: off; compare: one norm, or METHOD=NORM for every method)",
    "dp-noise-multiplier": "DP: Gaussian noise of std this x dp-clipping-norm / clients per "
                           "round on the mean (compare: a comma list)",
    "dp-delta": "DP: the delta epsilon is reported at, below 1 / num-clients",
    "dp-clipping": "DP: fixed, or adaptive (the norm starts at dp-clipping-norm and follows a "
                   "quantile of the update norms)",
    "dp-target-quantile": "DP adaptive: share of updates the norm leaves unclipped, in (0, 1)",
    "dp-clip-norm-lr": "DP adaptive: the norm's geometric learning rate",
    "dp-clipped-count-stddev": "DP adaptive: noise std of the unclipped count (0: clients per "
                               "round / 20 with noise)",
    "dp-side": "DP: server (clips and adds the noise) or client (each client clips and adds "
               "its share of the noise)",
    "secagg": "SecAgg+ (Flower's): the server learns only the sum of the updates",
    "secagg-shares": "SecAgg+: clients each key is shared with, odd (0: every sampled client)",
    "secagg-threshold": "SecAgg+: shares that rebuild a key, at most the clients per round "
                        "(0: a majority of the shares)",
    "secagg-clipping-range": "SecAgg+: each value of weight x update is clipped to +-this "
                             "(weight: examples / largest shard's)",
    "secagg-quantization-range": "SecAgg+: integer levels over the clipping range; times the "
                                 "clients per round below 2^32",
    "fault-kinds": "comma list of crash, nan, wrong-length, wrong-fingerprint, slow, poison",
    "poison-fraction": f"share of clients (the first partitions) that send {POISON_SCALE:g} x "
                       f"their update (compare: a comma list)",
    "model": "backbone: all-MiniLM-L6-v2 (offline), a HF id or a local folder",
    "data-dir": "classic GLUE folder (default: $GLUE_DIR, else the HF hub)",
    "eval-max-examples": "dev examples evaluated each round (0: all)",
    "out": "parent folder of the run folder: the run writes OUT/RUN-NAME/",
    "run-name": "the run folder's name ('': <timestamp>-<method>-<task>)",
    "device": "auto uses a GPU when one is present",
    "ray-address": "simulate on an existing Ray cluster, e.g. HEAD_IP:6379 after `ray start "
                   "--head` ('': a local Ray instance for the run)",
}


COMPARE_METHODS = ("full", "bitfit", "lora", "lora-ts", "pafi", "hiwi", "pafi-hiwi", "shira",
                   "sparse-local")
MASK_OPTIONS = ("model", "sparsity", "mask_k", "mask_scope", "mask_criterion", "mask_include",
                "untrained_pooler", "seed")


def add_run_options(parser: argparse.ArgumentParser, only: tuple[str, ...] = (),
                    skip: tuple[str, ...] = (), helps: dict[str, str] | None = None) -> None:
    """One flag per RunConfig field, defaulting to None so only given flags override;
    `helps` replaces HELP's text for this command."""
    defaults, helps = RunConfig(), {**HELP, **(helps or {})}
    for field in dataclasses.fields(RunConfig):
        if (only and field.name not in only) or field.name in skip:
            continue
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        help_text = f"{helps.get(flag[2:], '')} [default: {default!r}]".strip()
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        else:
            parser.add_argument(flag, type=str, default=None, help=help_text)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)
             if getattr(args, f.name, None) is not None}
    return RunConfig.from_mapping(given).validate()


def preflight(cfg: RunConfig) -> None:
    """Fail on a bad model or data folder before Ray or Flower start anything."""
    from common.glue import load_split
    from common.model import resolve_model

    resolve_model(cfg.model)
    for split in ("train", "validation"):
        load_split(cfg.task, split, cfg.resolved_data_dir)


def client_gpus(cfg: RunConfig) -> float:
    """Ray GPU share per client: with `--device auto` and a GPU, four clients share it."""
    if cfg.client_gpus or cfg.device == "cpu":
        return cfg.client_gpus
    import torch

    if not torch.cuda.is_available():
        return 0.0
    print("GPU found: clients train on it, four at a time (set --client-gpus to change)")
    return 0.25


def cmd_simulate(args: argparse.Namespace) -> None:
    from common.run_folder import RunFolder

    resume = None
    cfg = config_from_args(args)
    if args.resume:
        if cfg != RunConfig():
            raise FedPafiError("--resume continues a run with its own config.json; "
                               "give no other run options.")
        resume, cfg = RunFolder.existing(args.resume)
        cfg.validate()
        resume.load_checkpoint()  # fail now, not inside the simulation
    simulate(cfg, resume)


def simulate(cfg: RunConfig, resume: RunFolder | None = None) -> Path:
    """One run on Flower's simulation engine; returns its run folder."""
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from client.app import app as client_app
    from server.app import serve

    preflight(cfg)
    if not cfg.verbose:  # Flower's per-step INFO lines and notices would bury the table
        logging.getLogger("flwr").setLevel(logging.ERROR)
    folders: list[Path] = []
    server_app = ServerApp()

    @server_app.main()
    def _main(grid, context) -> None:
        folders.append(serve(grid, cfg, resume, clients_share_disk=True))

    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=cfg.num_clients,
        backend_config={
            "client_resources": {"num_cpus": cfg.client_cpus, "num_gpus": client_gpus(cfg)},
            "init_args": {"logging_level": "error" if not cfg.verbose else "info",
                          **({"address": cfg.ray_address} if cfg.ray_address else {})},
        },
        verbose_logging=cfg.verbose,
    )
    if not folders:
        raise FedPafiError("The simulation ended without finishing the run (see the log above).")
    return folders[0]


def cmd_compare(args: argparse.Namespace) -> None:
    from simulations.compare import LIST_OPTIONS, run_comparison, split_list, variants

    lists = {name: split_list(getattr(args, name)) for name in LIST_OPTIONS
             if getattr(args, name) is not None}
    methods = split_list(args.methods)
    own = per_method_settings(args, methods)
    for name in LIST_OPTIONS:  # set per run by the grid, not in the base config
        setattr(args, name, None)
    base = config_from_args(args)
    if args.central:
        base = central_reference(base)
    seeds = [_integer("--seeds", seed) for seed in split_list(args.seeds or str(base.seed))]
    grid = variants(base, methods, lists, seeds, own)
    target = None if args.target is None else _number("--target", args.target)
    run_comparison(base, grid, simulate, _number("--target-fraction", args.target_fraction),
                   target)


def per_method_settings(args: argparse.Namespace, methods: list[str]
                        ) -> dict[str, dict[str, float]]:
    """compare's METHOD=VALUE settings, method -> {field: value}, taken out of `args`:
    `--lr` always (a bare rate would train full fine-tuning at a PEFT rate), and
    `--dp-clipping-norm` when given as pairs (the update norms differ between methods by
    their parts and rates; one bare norm still applies to every method)."""
    from simulations.compare import split_list

    own: dict[str, dict[str, float]] = {}
    if args.lr:
        for method, rate in method_pairs("--lr", split_list(args.lr), methods, (
                "one rate for every method would train full fine-tuning at a PEFT rate. Each "
                "part has its own rate already (--lr-pafi, --lr-full, ...).")).items():
            own.setdefault(method, {})["lr"] = rate
        args.lr = None
    if args.dp_clipping_norm and "=" in args.dp_clipping_norm:
        norms = method_pairs("--dp-clipping-norm", split_list(args.dp_clipping_norm), methods,
                             "give one bare norm, or a norm for each method.")
        missing = [m for m in methods if m not in norms]
        if missing:
            raise FedPafiError(f"compare --dp-clipping-norm gives no norm for {', '.join(missing)}"
                               f": name every method in --methods, or give one bare norm.")
        for method, norm in norms.items():
            own.setdefault(method, {})["dp_clipping_norm"] = norm
        args.dp_clipping_norm = None
    return own


def method_pairs(flag: str, items: list[str], methods: list[str], why: str
                 ) -> dict[str, float]:
    """`METHOD=VALUE` items of a compare option; each method among --methods."""
    values = {}
    for item in items:
        method, _, value = item.partition("=")
        if not value:
            raise FedPafiError(f"compare {flag} takes METHOD=VALUE pairs (e.g. "
                               f"full=1e-4,pafi=1e-2), got {item!r}: {why}")
        if method.strip() not in methods:
            raise FedPafiError(f"compare {flag} names {method.strip()!r}, which is not among "
                               f"--methods ({', '.join(methods)}).")
        values[method.strip()] = _number(flag, value)
    return values


def central_reference(cfg: RunConfig) -> RunConfig:
    """The same budget on one client holding all the data: every round trains as many
    steps as the federated round's sampled clients did together."""
    if cfg.local_epochs > 0:
        raise FedPafiError("--central needs --local-steps (not --local-epochs): it keeps the "
                           "total number of steps per round.")
    return cfg.replace(num_clients=1, clients_per_round=0, iid=True, min_replies=1,
                       local_steps=cfg.local_steps * cfg.sampled_clients).validate()


def _number(flag: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise FedPafiError(f"{flag} takes a number, got {value!r}.") from None


def _integer(flag: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise FedPafiError(f"{flag} takes integers (a comma list), got {value!r}.") from None


def cmd_deploy_local(args: argparse.Namespace) -> None:
    cfg = config_from_args(args)
    if args.write_compose:
        for path in deploy.write_compose(cfg.num_clients, Path(args.write_compose)):
            print(f"wrote {path}")
        return
    preflight(cfg)
    deploy.deploy_local(cfg, args.tls, Path(args.certs), args.base_port)


def cmd_superlink(args: argparse.Namespace) -> None:
    from simulations import superlink

    print(f"fedpafi superlink: {superlink.start() if args.action == 'start' else superlink.stop()}")


def cmd_mask(args: argparse.Namespace) -> None:
    from common.glue import get_task
    from common.methods.pafi import backbone_mask
    from common.model import load_backbone

    cfg = config_from_args(args)
    # the head is not masked
    backbone = load_backbone(cfg.model, get_task(cfg.task), cfg.seed, cfg.untrained_pooler)
    mask = backbone_mask(backbone, cfg)
    print(f"{'tensor':<60} {'selected':>9} {'of':>10} {'%':>7}")
    for name, (chosen, size) in mask.counts().items():
        print(f"{name:<60} {chosen:>9,} {size:>10,} {100 * chosen / size:>6.3f}%")
    print(f"k = {mask.k:,} of {mask.num_eligible:,} eligible "
          f"({100 * mask.k / mask.num_eligible:.3f}%), {len(mask.indices)} tensors")
    print(f"fingerprint {mask.fingerprint}")
    if args.mask_out:
        mask.save(args.mask_out)
        print(f"saved {args.mask_out}")


def cmd_export(args: argparse.Namespace) -> None:
    from common.export import save_checkpoint, session_for_update

    update = Path(args.update)
    if update.is_dir():
        update = update / "update.safetensors"
    if not update.is_file():
        raise FedPafiError(f"No update file at {update}: pass a run folder or update.safetensors.")
    session, compact = session_for_update(update, args.model or "")
    save_checkpoint(session, compact, Path(args.export_out))
    print(f"merged checkpoint written to {args.export_out} "
          f"(loads with AutoModelForSequenceClassification.from_pretrained)")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from common.glue import get_task, load_split
    from common.token_merge import merging
    from common.train import eval_subset, evaluate

    cfg = RunConfig.from_mapping({k: v for k, v in {
        "task": args.task, "data_dir": args.data_dir, "seed": args.seed,
        "eval_max_examples": args.eval_max_examples, "max_seq_length": args.max_seq_length,
        "token_merge": args.token_merge,
    }.items() if v is not None}).validate()
    task = get_task(cfg.task)
    if not (Path(args.model) / "config.json").is_file():
        raise FedPafiError(f"{args.model} is not a checkpoint folder (no config.json).")
    model = AutoModelForSequenceClassification.from_pretrained(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    dev = eval_subset(load_split(task, "validation", cfg.resolved_data_dir),
                      cfg.eval_max_examples, cfg.seed)
    with merging(model, cfg.token_merge):
        metrics, loss = evaluate(model, dev, tokenizer, task, cfg.max_seq_length)
    print(json.dumps({"task": task.name, "examples": len(dev), "token_merge": cfg.token_merge,
                      "loss": loss, **metrics}, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedpafi", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    simulate = commands.add_parser("simulate", help="run a federated simulation (Flower + Ray)")
    add_run_options(simulate)
    simulate.add_argument("--resume", metavar="RUN_DIR",
                          help="continue a run from its last completed round")
    simulate.set_defaults(func=cmd_simulate)

    compare = commands.add_parser(
        "compare", help="run several methods/codecs/server optimizers on identical partitions")
    add_run_options(compare, skip=("method", "lr"), helps={
        "out": "parent folder of the comparison folder: it writes OUT/RUN-NAME/, with a run "
               "folder in it per run",
        "run-name": "the comparison folder's name; the same name again resumes it "
                    "('': compare-<timestamp>-<task>)"})
    compare.add_argument("--methods", default=",".join(COMPARE_METHODS),
                         help="comma list of methods [default: all]")
    compare.add_argument("--lr", metavar="METHOD=RATE,...", help="one learning rate for "
                         "every part of the methods named, e.g. full=1e-4,pafi=1e-2; the "
                         "others train each part at its --lr-* rate [default: none]")
    compare.add_argument("--seeds", help="comma list: every run is repeated with each seed "
                         "(partitions change with it) [default: --seed]")
    compare.add_argument("--target-fraction", default="0.95", help="time-to-target: the "
                         "fraction of the best full fine-tuning result [default: 0.95]")
    compare.add_argument("--target", help="time-to-target: an absolute dev metric instead")
    compare.add_argument("--central", action="store_true", help="the central reference: 1 "
                         "client, IID, local steps x sampled clients per round")
    compare.set_defaults(func=cmd_compare)

    local = commands.add_parser("deploy-local", help="run the app on the docker-compose "
                                "services, started as local processes (no Docker)")
    add_run_options(local, helps={
        "out": "parent folder of the run folder (OUT/RUN-NAME/) and of the services' logs "
               "(OUT/.deploy-local/)"})
    deploy.add_options(local)
    local.set_defaults(func=cmd_deploy_local)

    link = commands.add_parser("superlink", help="Flower's local SuperLink for `flwr run .`: "
                               "start it from this environment, stop the one it started")
    link.add_argument("action", choices=("start", "stop"))
    link.set_defaults(func=cmd_superlink)

    mask = commands.add_parser("mask", help="compute the shared PaFi mask and its fingerprint")
    add_run_options(mask, only=MASK_OPTIONS)
    mask.add_argument("--out", dest="mask_out", metavar="FILE",
                      help="the mask file to write (safetensors) [default: print only]")
    mask.set_defaults(func=cmd_mask)

    export = commands.add_parser("export", help="merge an update file into a HF checkpoint")
    export.add_argument("--update", required=True, help="run folder or update.safetensors")
    export.add_argument("--out", dest="export_out", metavar="DIR", required=True,
                        help="the checkpoint folder itself (created if missing; files in it "
                             "are overwritten)")
    export.add_argument("--model", help="backbone (default: the one the run used)")
    export.set_defaults(func=cmd_export)

    evaluate = commands.add_parser("evaluate", help="score a checkpoint on a GLUE dev set")
    evaluate.add_argument("--model", required=True, help="checkpoint folder")
    evaluate.add_argument("--task", required=True)
    evaluate.add_argument("--data-dir")
    evaluate.add_argument("--eval-max-examples", help="0: the whole dev set [default: 256]")
    evaluate.add_argument("--max-seq-length")
    evaluate.add_argument("--seed")
    evaluate.add_argument("--token-merge", help="merge this many token pairs per middle layer "
                          "while scoring, as training with --token-merge does [default: 0]")
    evaluate.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except FedPafiError as exc:
        print(f"fedpafi: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
