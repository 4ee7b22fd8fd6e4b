"""One resolved set of run settings, shared by the CLI, `flwr run` and the ClientApp.

Keys are kebab-case everywhere a user types them (CLI flags, `[tool.flwr.app.config]`),
snake_case as Python attributes. The server sends the whole config to clients in each
message, so a SuperNode needs nothing but its partition id.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from common.errors import ConfigError

DEFAULT_MODEL = "all-MiniLM-L6-v2"

CHOICES: dict[str, tuple[str, ...]] = {
    "partitioner": ("auto", "dirichlet", "inner-dirichlet"),
    "mask_scope": ("global", "per-tensor"),
    "mask_criterion": ("smallest", "largest", "random"),
    "hiwi_target": ("bias", "weight"),
    "hiwi_sync": ("merged", "adapter"),
    "shira_mask": ("random", "magnitude"),
    "untrained_pooler": ("identity", "train", "keep"),
    "lr_schedule": ("constant", "cosine"),
    "download_codec": ("fp32", "ternary"),  # fp32: the whole state; ternary: coded changes
    "server_opt": ("fedavg", "fedadam", "fedyogi"),
    "aggregator": ("fedavg", "median", "trimmed-mean", "krum"),
    "dp_clipping": ("fixed", "adaptive"),
    "dp_side": ("server", "client"),
    "device": ("auto", "cpu", "cuda"),
}
MASK_INCLUDE_PARTS = ("bias", "layernorm")
# a learning rate each
LR_GROUPS = ("pafi", "hiwi", "head", "bitfit", "lora", "full", "sparse", "shira")
# Faults that cost the server a reply: refused with a reason, or never arriving. They are
# the default kinds; `poison` is opt-in, as the server accepts it (that is its point).
FAILURE_KINDS = ("crash", "nan", "wrong-length", "wrong-fingerprint", "slow")
FAULT_KINDS = (*FAILURE_KINDS, "poison")
# A `poison` client sends its honest update times this: finite and well-formed, so it
# passes validation, and ten times larger than an honest update, so one poisoner of four
# turns FedAvg's mean around ((3 - 10) / 4 of an honest update) while a median ignores it.
POISON_SCALE = -10.0
# A `slow` client answers round-timeout + 1 s late, holding its round for round-timeout:
# staging it needs a round-timeout given on purpose, no longer than this.
SLOW_FAULT_MAX_TIMEOUT = 600.0
# SecAgg+ sums each client's quantized values, each in [0, quantization range), modulo this
# (Flower's default and largest modulus): the sum of the clients per round must stay below.
SECAGG_MODULUS = 2**32


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a run; defaults are the demo (pafi-hiwi on SST-2, 4 clients)."""

    method: str = "pafi-hiwi"
    task: str = "sst2"
    num_clients: int = 4
    clients_per_round: int = 0  # 0: every client, every round
    alpha: float = 0.5
    iid: bool = False
    partitioner: str = "auto"  # how non-IID shards are cut (common.glue.split)
    rounds: int = 5
    local_steps: int = 20
    local_epochs: float = 0.0  # > 0 replaces local-steps with passes over the shard
    batch_size: int = 16
    max_seq_length: int = 128
    lr: float = 0.0  # > 0 overrides every part's learning rate below
    lr_pafi: float = 1e-2  # PaFi's masked deltas
    lr_hiwi: float = 3e-3  # HiWi adapters
    lr_head: float = 1e-2  # the task head (and an untrained pooler, when trained)
    lr_bitfit: float = 1e-3  # bitfit's biases
    lr_lora: float = 1e-3  # LoRA factors
    lr_full: float = 1e-4  # full fine-tuning, every weight
    lr_sparse: float = 1e-3  # sparse-local's own entries (salient, not small: not PaFi's rate)
    lr_shira: float = 1e-3  # shira's random entries (magnitude: PaFi's entries, lr-pafi)
    lr_schedule: str = "cosine"  # every part's rate decays over the rounds; or constant
    sparsity: float = 0.005
    mask_k: int = 0  # > 0 replaces sparsity with an absolute number of entries
    mask_scope: str = "global"
    mask_criterion: str = "smallest"
    mask_include: str = ""  # comma list of extra parameter kinds: bias, layernorm
    salience_batches: int = 4  # sparse-local: local batches whose |gradient| picks the entries
    logit_adjust: float = 0.0  # > 0: train on logits + this x log(the shard's label prior)
    hiwi_target: str = "bias"
    hiwi_rank: int = 8
    hiwi_sync: str = "merged"
    untrained_pooler: str = "identity"  # a pooler that was never trained: identity/train/keep
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: str = "query,value"  # comma list of linear module names
    lora_ts_penalty: float = 0.0  # lora-ts: weight of the share of tokens gated on in the loss
    shira_mask: str = "random"  # random: peft's, on lora-targets; magnitude: PaFi's mask
    shira_r: int = 32  # random mask: r x (in + out) entries per layer, peft's default
    codec: str = "fp32"
    codec_density: float = 0.3  # ternary: the share of each chunk's values it keeps
    download_codec: str = "fp32"  # ternary: send the change from the clients' view, coded
    token_merge: int = 0  # > 0: merge this many token pairs per middle layer in training
    server_opt: str = "fedavg"
    server_lr: float = 0.0  # fedadam/fedyogi step; 0: each part's own learning rate x scale
    server_lr_scale: float = 1.0  # server-lr 0: the server step is this x each part's lr
    server_beta1: float = 0.9
    server_beta2: float = 0.99
    server_tau: float = 0.0  # adaptivity floor; 0: a tenth of server-lr or of each part's lr
    aggregator: str = "fedavg"  # how the updates combine (common.aggregators)
    trimmed_fraction: float = 0.2  # trimmed-mean: share cut from each end, Flower's beta
    krum_malicious: int = 0  # krum: clients assumed malicious (f), Flower's default
    krum_keep: int = 1  # krum: updates kept and averaged; 1 is Krum, more is Multi-Krum
    dp_clipping_norm: float = 0.0  # > 0: clip each update to this L2 norm, unweighted mean
    dp_noise_multiplier: float = 0.0  # > 0: Gaussian noise z x clipping norm / sampled clients
    dp_delta: float = 1e-5  # the delta epsilon is reported at (common.privacy)
    dp_clipping: str = "fixed"  # adaptive: the norm follows a quantile of the update norms
    dp_target_quantile: float = 0.5  # adaptive: share of updates left unclipped (Flower's)
    dp_clip_norm_lr: float = 0.2  # adaptive: the norm's geometric step (Flower's)
    dp_clipped_count_stddev: float = 0.0  # adaptive: count noise; 0: Flower's m / 20 (z > 0)
    dp_side: str = "server"  # client: each client clips and adds its share of the noise
    secagg: bool = False  # SecAgg+: the server learns only the sum of the updates
    secagg_shares: int = 0  # clients each one's key is shared with; 0: every sampled client
    secagg_threshold: int = 0  # shares that rebuild a key; 0: a majority of the shares
    secagg_clipping_range: float = 1.0  # each value of a weighted update is clipped to +-this
    secagg_quantization_range: int = 2**22  # integer levels over the clipping range (Flower's)
    seed: int = 42
    model: str = DEFAULT_MODEL
    data_dir: str = ""  # empty: $GLUE_DIR, else the Hugging Face hub
    eval_max_examples: int = 256  # 0: the whole dev set
    eval_batch_size: int = 64
    out: str = "runs"
    run_name: str = ""  # empty: <timestamp>-<method>-<task>
    device: str = "auto"
    client_cpus: float = 2.0
    client_gpus: float = 0.0
    ray_address: str = ""  # simulations: an existing Ray cluster ('': a local one per run)
    min_replies: int = 1  # valid replies a round needs; fewer: the round is skipped
    max_update_norm: float = 0.0  # > 0: refuse updates with a larger L2 norm
    round_timeout: float = 3600.0  # seconds the server waits for a round's replies
    fault_rate: float = 0.0  # simulations: share of client rounds that misbehave on purpose
    fault_kinds: str = ",".join(FAILURE_KINDS)
    poison_fraction: float = 0.0  # simulations: share of clients that poison, every round
    verbose: bool = False

    # ---- conversions -------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Kebab-case mapping, the form of `[tool.flwr.app.config]` and config.json."""
        return {_kebab(f.name): getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from kebab- or snake-case keys, coercing types; unknown keys are errors."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, raw in values.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(
                    f"Unknown setting '{key}'. Known settings: "
                    f"{', '.join(_kebab(n) for n in known)}."
                )
            kwargs[name] = _coerce(key, raw, type(getattr(cls(), name)))
        return cls(**kwargs)

    def to_json(self) -> str:
        """The kebab-case mapping as canonical JSON (sorted keys): what the server sends
        each client and an update file keeps."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        return cls.from_mapping(json.loads(text))

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    # ---- derived values ----------------------------------------------------------

    @property
    def resolved_data_dir(self) -> str:
        """The GLUE folder to read, or '' to read from the Hugging Face hub."""
        return self.data_dir or os.environ.get("GLUE_DIR", "")

    @property
    def mask_include_parts(self) -> tuple[str, ...]:
        return tuple(sorted(p.strip() for p in self.mask_include.split(",") if p.strip()))

    def part_lr(self, group: str) -> float:
        """The learning rate of one part of a method (`lr` > 0 overrides them all)."""
        return self.lr or getattr(self, f"lr_{group}")

    @property
    def sampled_clients(self) -> int:
        return self.clients_per_round or self.num_clients

    @property
    def secagg_share_count(self) -> int:
        """Clients each client's secrets are shared with (itself included)."""
        return self.secagg_shares or self.sampled_clients

    @property
    def secagg_reconstruction_threshold(self) -> int:
        """Shares that rebuild a client's secret: a majority of them unless given."""
        return self.secagg_threshold or self.secagg_share_count // 2 + 1

    @property
    def fault_kind_list(self) -> tuple[str, ...]:
        return tuple(k.strip() for k in self.fault_kinds.split(",") if k.strip())

    @property
    def poisoning_clients(self) -> int:
        """How many clients poison: partitions 0 to this - 1, in every round they train.
        The first ids rather than a seeded draw: the partitions are a seeded shuffle already,
        and a 20% run's poisoners include the 10% run's, so the levels nest."""
        return round(self.poison_fraction * self.num_clients)

    # ---- validation --------------------------------------------------------------

    def validate(self) -> RunConfig:
        """Check every setting before any work starts; returns self for chaining."""
        from common.codecs import CODECS
        from common.glue import TASKS
        from common.methods import METHODS

        _one_of("method", self.method, tuple(METHODS))
        _one_of("task", self.task, tuple(TASKS))
        _one_of("codec", self.codec, tuple(CODECS))
        for name, allowed in CHOICES.items():
            _one_of(_kebab(name), getattr(self, name), allowed)
        for part in self.mask_include_parts:
            _one_of("mask-include", part, MASK_INCLUDE_PARTS)
        for kind in self.fault_kind_list:
            _one_of("fault-kinds", kind, FAULT_KINDS)
        if not 0 <= self.fault_rate <= 1:
            raise ConfigError(f"fault-rate is a fraction in [0, 1], got {self.fault_rate}.")
        if self.fault_rate and not self.fault_kind_list:
            raise ConfigError(f"fault-rate > 0 needs fault-kinds from: {', '.join(FAULT_KINDS)}.")
        if (self.fault_rate and "slow" in self.fault_kind_list
                and self.round_timeout > SLOW_FAULT_MAX_TIMEOUT):
            raise ConfigError(
                f"fault kind 'slow' answers round-timeout + 1 s late, so each slow client "
                f"holds its round for round-timeout ({self.round_timeout:g} s). Give "
                f"--round-timeout of at most {SLOW_FAULT_MAX_TIMEOUT:g} s (e.g. 60), or leave "
                f"slow out of --fault-kinds."
            )
        if not 1 <= self.min_replies <= self.sampled_clients:
            raise ConfigError(
                f"min-replies must be between 1 and the clients sampled per round "
                f"({self.sampled_clients}), got {self.min_replies}."
            )
        _positive("round-timeout", self.round_timeout)
        _positive("num-clients", self.num_clients)
        _positive("rounds", self.rounds)
        _positive("batch-size", self.batch_size)
        _positive("salience-batches", self.salience_batches)
        _positive("server-lr-scale", self.server_lr_scale)
        if self.logit_adjust < 0:
            raise ConfigError(f"logit-adjust scales the shard's log label prior added to the "
                              f"training logits (0: off, 1: the usual), got {self.logit_adjust}.")
        _positive("hiwi-rank", self.hiwi_rank)
        _positive("lora-rank", self.lora_rank)
        _positive("lora-alpha", self.lora_alpha)
        _positive("shira-r", self.shira_r)
        if self.token_merge < 0:
            raise ConfigError(f"token-merge is the token pairs merged per middle layer (0: "
                              f"off), got {self.token_merge}.")
        if self.token_merge and self.method == "lora-ts":
            raise ConfigError(
                "lora-ts counts its gated tokens against the input's attention mask, which "
                "token-merge shortens in the middle layers; use --token-merge 0 with lora-ts.")
        if self.lora_ts_penalty < 0:
            raise ConfigError(f"lora-ts-penalty must be >= 0 (0: no sparsity pressure), got "
                              f"{self.lora_ts_penalty}.")
        if self.method == "shira" and self.shira_mask == "magnitude" and self.mask_include:
            raise ConfigError(
                f"shira trains entries of linear weights only, but mask-include "
                f"'{self.mask_include}' adds biases or LayerNorm to the mask; leave "
                "mask-include empty with --shira-mask magnitude."
            )
        if not self.lora_targets.strip(","):
            raise ConfigError("lora-targets needs at least one module name, e.g. 'query,value'.")
        _positive("eval-batch-size", self.eval_batch_size)
        if self.max_seq_length < 8:
            raise ConfigError(f"max-seq-length must be at least 8, got {self.max_seq_length}.")
        if self.local_steps <= 0 and self.local_epochs <= 0:
            raise ConfigError("Set local-steps > 0 or local-epochs > 0: clients must train.")
        if not 0 <= self.clients_per_round <= self.num_clients:
            raise ConfigError(
                f"clients-per-round must be between 1 and num-clients ({self.num_clients}),"
                f" or 0 for all; got {self.clients_per_round}."
            )
        if not 0 < self.sparsity <= 1:
            raise ConfigError(f"sparsity is a fraction in (0, 1], got {self.sparsity}.")
        for name in LR_GROUPS:
            _positive(f"lr-{name}", getattr(self, f"lr_{name}"))
        for name in ("mask_k", "eval_max_examples", "lr", "client_cpus", "client_gpus",
                     "max_update_norm", "server_lr", "server_tau", "krum_malicious"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{_kebab(name)} must be >= 0, got {getattr(self, name)}.")
        for name in ("server_beta1", "server_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{_kebab(name)} is in [0, 1), got {getattr(self, name)}.")
        self._validate_codec()
        if not self.iid and self.alpha <= 0:
            raise ConfigError(f"alpha must be > 0 (or use iid), got {self.alpha}.")
        self._validate_poisoning()
        self._validate_aggregator()
        self._validate_privacy()
        self._validate_secagg()
        return self

    def _validate_codec(self) -> None:
        if not 0 < self.codec_density <= 1:
            raise ConfigError(f"codec-density is the share of values ternary keeps, in (0, 1], "
                              f"got {self.codec_density}.")
        if self.codec == "ternary" and self.method == "sparse-local":
            raise ConfigError(
                "ternary codes positions inside a layout every client shares, but sparse-local's "
                "clients send their own entries with int32 indices (and the entries its error "
                "feedback carries would outgrow its k); use fp32, fp16, bf16 or int8 with it."
            )
        if self.download_codec != "fp32" and self.method == "sparse-local":
            raise ConfigError(
                "download-codec ternary codes the change of the global state in the shared "
                "layout, but sparse-local sends its state as the union of the clients' own "
                "entries with indices; use download-codec fp32 with it."
            )

    def _validate_poisoning(self) -> None:
        """A whole number of poisoners: a study's "10%" must be exactly that many clients."""
        if not 0 <= self.poison_fraction <= 1:
            raise ConfigError(f"poison-fraction is a fraction in [0, 1], got "
                              f"{self.poison_fraction}.")
        count = self.poison_fraction * self.num_clients
        if abs(count - round(count)) > 1e-9:
            raise ConfigError(
                f"poison-fraction {self.poison_fraction:g} of {self.num_clients} clients is "
                f"{count:g} clients; give a multiple of 1/{self.num_clients}, e.g. "
                f"{max(1, int(count)) / self.num_clients:g}."
            )

    def _validate_aggregator(self) -> None:
        """The robust rules' own limits, against the clients sampled per round."""
        n, f = self.sampled_clients, self.krum_malicious
        if self.aggregator != "fedavg" and self.method == "sparse-local":
            raise ConfigError(
                f"{self.aggregator} compares the clients' values entry by entry, but "
                "sparse-local's clients send different entries (zeros elsewhere, so a median "
                "would be mostly zeros); use a shared-mask method such as pafi, or fedavg."
            )
        if not 0 <= self.trimmed_fraction < 0.5:
            raise ConfigError(f"trimmed-fraction is the share cut from each end, in [0, 0.5), "
                              f"got {self.trimmed_fraction}.")
        _positive("krum-keep", self.krum_keep)
        if (self.aggregator == "trimmed-mean" and self.trimmed_fraction
                and int(self.trimmed_fraction * n) == 0):  # Flower's cut: int(beta x n)
            fix = (f"give at least {math.ceil(100 / n) / 100:g}" if n >= 3 else
                   "sample 3 or more clients, or use median")
            raise ConfigError(
                f"trimmed-fraction {self.trimmed_fraction:g} of {n} clients per round trims "
                f"none (int({self.trimmed_fraction:g} x {n}) = 0 from each end); {fix}."
            )
        if self.aggregator == "krum" and n <= 2 * f + 2:
            raise ConfigError(
                f"krum with krum-malicious {f} needs more than 2 x {f} + 2 = {2 * f + 2} "
                f"clients per round, got {n}; sample more clients or lower krum-malicious."
            )
        if self.aggregator == "krum" and self.krum_keep > n - f:
            raise ConfigError(
                f"krum-keep {self.krum_keep} exceeds the clients per round that may be honest "
                f"({n} - krum-malicious {f} = {n - f}); give at most {n - f}."
            )

    def _validate_privacy(self) -> None:
        """Client-level DP bounds each client's share of the mean; settings that would
        unbound it, or report a guarantee for no client, are refused."""
        for name in ("dp_clipping_norm", "dp_noise_multiplier"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{_kebab(name)} must be >= 0, got {getattr(self, name)}.")
        if self.dp_noise_multiplier and not self.dp_clipping_norm:
            raise ConfigError(
                f"dp-noise-multiplier {self.dp_noise_multiplier:g} scales noise to the clipping "
                f"norm, but dp-clipping-norm is 0 (no clipping); give dp-clipping-norm > 0."
            )
        if not 0 < self.dp_delta < 1 / self.num_clients:
            raise ConfigError(
                f"dp-delta is the chance the guarantee fails, below 1 / num-clients "
                f"(1/{self.num_clients}: else it could fail for a whole client), got "
                f"{self.dp_delta:g}; e.g. 1e-5."
            )
        if not self.dp_clipping_norm:
            for name, default in (("dp_clipping", "fixed"), ("dp_side", "server")):
                if getattr(self, name) != default:
                    raise ConfigError(
                        f"{_kebab(name)} {getattr(self, name)} needs differential privacy on, "
                        f"but dp-clipping-norm is 0; give dp-clipping-norm > 0 (with "
                        f"adaptive clipping: the initial norm).")
            return
        self._validate_adaptive_clipping()
        if self.aggregator != "fedavg":
            raise ConfigError(
                f"differential privacy clips and averages the updates itself, with noise sized "
                f"to that mean, so it cannot follow aggregator {self.aggregator}; use fedavg."
            )
        if self.method == "sparse-local":
            raise ConfigError(
                "differential privacy clips each update as a whole and adds noise to every "
                "entry, but sparse-local's clients send different entries, so the noise would "
                "cover entries no client chose; use a shared-mask method such as pafi."
            )

    def _validate_adaptive_clipping(self) -> None:
        """The norm's update (Andrew et al., 2021) moves only inside (0, 1), and its count
        noise must leave room for the update's: both together spend dp-noise-multiplier."""
        if self.dp_clipping != "adaptive":
            return
        if not 0 < self.dp_target_quantile < 1:
            raise ConfigError(
                f"dp-target-quantile is the share of updates the adaptive norm leaves "
                f"unclipped, in (0, 1) (0 or 1 drives the norm to 0 or without bound), got "
                f"{self.dp_target_quantile:g}; e.g. 0.5.")
        if self.dp_clip_norm_lr <= 0:
            raise ConfigError(f"dp-clip-norm-lr must be > 0, got {self.dp_clip_norm_lr:g}.")
        if self.dp_clipped_count_stddev < 0:
            raise ConfigError(f"dp-clipped-count-stddev must be >= 0, got "
                              f"{self.dp_clipped_count_stddev:g}.")
        z = self.dp_noise_multiplier
        count_std = self.dp_clipped_count_stddev or self.sampled_clients / 20
        if z and z >= 2 * count_std:
            raise ConfigError(
                f"dp-noise-multiplier {z:g} is what the update and the clipped count spend "
                f"together, which needs it below 2 x dp-clipped-count-stddev ({count_std:g}"
                f"{', clients per round / 20' if not self.dp_clipped_count_stddev else ''}); "
                f"give dp-clipped-count-stddev above {z / 2:g}.")
        if self.secagg:
            raise ConfigError(
                "adaptive clipping needs each client's clipped-or-not bit, which secagg would "
                "show the server in the clear beside the secure sum; use dp-clipping fixed "
                "with secagg.")

    def _validate_secagg(self) -> None:
        """SecAgg+ hides every single update from the server, so what needs one is refused,
        as are key-sharing settings Flower's workflow cannot run and a sum that overflows."""
        if not self.secagg:
            return
        m, shares = self.sampled_clients, self.secagg_share_count
        threshold = self.secagg_reconstruction_threshold
        refusals = [
            (m < 2, f"secagg needs at least 2 clients per round (the sum of one client is its "
                    f"update), got {m}; raise num-clients or clients-per-round."),
            (self.aggregator != "fedavg",
             f"aggregator {self.aggregator} needs each client's update, but secagg shows the "
             f"server only their sum; use aggregator fedavg with secagg, or drop secagg."),
            (self.method == "sparse-local",
             "secagg sums the clients' vectors value by value, but sparse-local's clients "
             "send different entries (and their indices); use a shared-mask method such as "
             "pafi."),
            (self.max_update_norm > 0,
             "max-update-norm checks each update's norm, but secagg shows the server only "
             "their sum; drop max-update-norm (secagg-clipping-range bounds each value of "
             "an honest client's update instead)."),
            (self.codec != "fp32",
             f"codec {self.codec} would add its own rounding before secagg's quantization "
             f"(secagg-quantization-range), which replaces it on the wire; use codec fp32."),
            (self.download_codec != "fp32",
             f"download-codec {self.download_codec} sends each client a change of the state it "
             f"holds, but secagg's workflow sends every client the same whole state; use "
             f"download-codec fp32 with secagg."),
            (self.secagg_shares != 0 and not 3 <= self.secagg_shares <= m,
             f"secagg-shares must be 0 (every sampled client) or between 3 and the clients "
             f"sampled per round ({m}), got {self.secagg_shares}."),
            (self.secagg_shares not in (0, m) and self.secagg_shares % 2 == 0,
             f"secagg-shares {self.secagg_shares} is even; give an odd number (each client "
             f"shares with as many neighbours on either side), or 0 for every client."),
            (threshold > m,
             f"secagg-threshold {threshold} is above the clients sampled per round ({m}): "
             f"no key could ever be rebuilt; give at most {m}."),
            (not 2 <= threshold <= shares or (self.secagg_shares and threshold >= shares),
             f"secagg-threshold must be at least 2 and below secagg-shares ({shares}; at most "
             f"all of them when secagg-shares is 0), got {threshold}."),
            (self.secagg_clipping_range <= 0,
             f"secagg-clipping-range must be > 0, got {self.secagg_clipping_range}."),
            (not 0 < self.secagg_quantization_range * m < SECAGG_MODULUS,
             f"secagg-quantization-range {self.secagg_quantization_range} x {m} clients per "
             f"round must be in (0, 2^32) (the secure sum is taken modulo 2^32); give at "
             f"most {(SECAGG_MODULUS - 1) // m}."),
        ]
        for refused, sentence in refusals:
            if refused:
                raise ConfigError(sentence)


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def _one_of(setting: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"Unknown {setting} '{value}'. Allowed: {', '.join(allowed)}.")


def _positive(setting: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{setting} must be > 0, got {value}.")


def _coerce(key: str, raw: Any, kind: type) -> Any:
    """Convert a CLI string or TOML value to the field's type, with a clear error."""
    try:
        if kind is bool:
            if isinstance(raw, str):
                if raw.lower() in ("1", "true", "yes", "on"):
                    return True
                if raw.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(raw)
            return bool(raw)
        if kind is int and isinstance(raw, float) and not raw.is_integer():
            raise ValueError(raw)
        return kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(
            f"Setting '{key}' expects {kind.__name__}, got {raw!r}."
        ) from None
