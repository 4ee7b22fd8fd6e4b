"""Settings: one set of names for the CLI, `[tool.flwr.app.config]` and config.json."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from common.config import RunConfig
from common.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_flower_config_matches_defaults():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["flwr"]["app"]["config"] == RunConfig().to_dict()


def test_from_mapping_coerces_strings_and_accepts_both_spellings():
    cfg = RunConfig.from_mapping({"num-clients": "7", "iid": "true", "lr": "1e-3",
                                  "local_steps": 3})
    assert (cfg.num_clients, cfg.iid, cfg.lr, cfg.local_steps) == (7, True, 1e-3, 3)
    assert RunConfig.from_mapping(cfg.to_dict()) == cfg


@pytest.mark.parametrize("values, message", [
    ({"method": "lorax"},
     "Unknown method 'lorax'. Allowed: full, bitfit, lora, lora-ts, pafi, hiwi, pafi-hiwi, shira"),
    ({"task": "imdb"}, "Unknown task 'imdb'"),
    ({"codec": "int4"}, "Unknown codec 'int4'. Allowed: fp32, fp16, bf16, int8, ternary"),
    ({"codec-density": 0.0}, "codec-density is the share of values ternary keeps"),
    ({"codec": "ternary", "method": "sparse-local"}, "use fp32, fp16, bf16 or int8 with it"),
    ({"mask-scope": "local"}, "Allowed: global, per-tensor"),
    ({"shira-mask": "salient"}, "Unknown shira-mask 'salient'. Allowed: random, magnitude"),
    ({"shira-r": 0}, "shira-r must be > 0"),
    ({"lora-ts-penalty": -1}, "lora-ts-penalty must be >= 0"),
    ({"token-merge": -2}, "token-merge is the token pairs merged per middle layer"),
    ({"method": "lora-ts", "token-merge": 4}, "use --token-merge 0 with lora-ts"),
    ({"mask-include": "bias,heads"}, "Unknown mask-include 'heads'"),
    ({"sparsity": 2.0}, "sparsity is a fraction"),
    ({"clients-per-round": 9}, "clients-per-round must be between 1 and num-clients"),
    ({"local-steps": 0}, "clients must train"),
    ({"alpha": 0.0}, "alpha must be > 0"),
    ({"fault-kinds": "crash,meteor"}, "Unknown fault-kinds 'meteor'. Allowed: crash, nan"),
    ({"fault-rate": 1.5}, "fault-rate is a fraction"),
    ({"fault-rate": 0.3}, "fault kind 'slow' answers round-timeout \\+ 1 s late"),
    ({"fault-rate": 0.3, "round-timeout": 601}, "Give --round-timeout of at most 600 s"),
    ({"min-replies": 5}, "min-replies must be between 1 and the clients sampled per round (4)"),
    ({"round-timeout": 0}, "round-timeout must be > 0"),
    ({"max-update-norm": -1}, "max-update-norm must be >= 0"),
])
def test_validation_names_the_setting_and_allowed_values(values, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RunConfig.from_mapping(values).validate()


@pytest.mark.parametrize("values, message", [
    ({"aggregator": "mean"}, "Unknown aggregator 'mean'. Allowed: fedavg, median, trimmed-mean, "
                             "krum."),
    ({"trimmed-fraction": 0.5}, "trimmed-fraction is the share cut from each end, in [0, 0.5), "
                                "got 0.5."),
    ({"aggregator": "trimmed-mean"}, "trimmed-fraction 0.2 of 4 clients per round trims none "
                                     "(int(0.2 x 4) = 0 from each end); give at least 0.25."),
    ({"aggregator": "trimmed-mean", "num-clients": 2, "trimmed-fraction": 0.4},
     "trims none (int(0.4 x 2) = 0 from each end); sample 3 or more clients, or use median."),
    ({"aggregator": "krum", "krum-malicious": 1},
     "krum with krum-malicious 1 needs more than 2 x 1 + 2 = 4 clients per round, got 4; "
     "sample more clients or lower krum-malicious."),
    ({"aggregator": "krum", "num-clients": 10, "clients-per-round": 6, "krum-malicious": 2},
     "needs more than 2 x 2 + 2 = 6 clients per round, got 6"),
    ({"aggregator": "krum", "krum-keep": 5},
     "krum-keep 5 exceeds the clients per round that may be honest (4 - krum-malicious 0 = 4); "
     "give at most 4."),
    ({"aggregator": "median", "method": "sparse-local"},
     "median compares the clients' values entry by entry, but sparse-local's clients send "
     "different entries"),
    ({"krum-malicious": -1}, "krum-malicious must be >= 0, got -1."),
    ({"krum-keep": 0}, "krum-keep must be > 0, got 0."),
    ({"poison-fraction": 1.5}, "poison-fraction is a fraction in [0, 1], got 1.5."),
    ({"poison-fraction": 0.1}, "poison-fraction 0.1 of 4 clients is 0.4 clients; give a multiple "
                               "of 1/4, e.g. 0.25."),
    ({"fault-kinds": "poison,meteor"}, "Unknown fault-kinds 'meteor'. Allowed: crash, nan, "
                                       "wrong-length, wrong-fingerprint, slow, poison."),
    ({"dp-noise-multiplier": -1}, "dp-noise-multiplier must be >= 0, got -1.0."),
    ({"dp-clipping-norm": -0.5}, "dp-clipping-norm must be >= 0, got -0.5."),
    ({"dp-noise-multiplier": 1.0},
     "dp-noise-multiplier 1 scales noise to the clipping norm, but dp-clipping-norm is 0 "
     "(no clipping); give dp-clipping-norm > 0."),
    ({"dp-delta": 0.5},
     "dp-delta is the chance the guarantee fails, below 1 / num-clients (1/4: else it could "
     "fail for a whole client), got 0.5; e.g. 1e-5."),
    ({"dp-delta": 0}, "dp-delta is the chance the guarantee fails"),
    ({"dp-clipping-norm": 1.0, "aggregator": "median"},
     "differential privacy clips and averages the updates itself, with noise sized to that "
     "mean, so it cannot follow aggregator median; use fedavg."),
    ({"dp-clipping-norm": 1.0, "dp-noise-multiplier": 1.0, "method": "sparse-local"},
     "differential privacy clips each update as a whole and adds noise to every entry, but "
     "sparse-local's clients send different entries, so the noise would cover entries no "
     "client chose; use a shared-mask method such as pafi."),
    ({"dp-clipping": "adaptive"},
     "dp-clipping adaptive needs differential privacy on, but dp-clipping-norm is 0; give "
     "dp-clipping-norm > 0 (with adaptive clipping: the initial norm)."),
    ({"dp-side": "client", "dp-noise-multiplier": 0},
     "dp-side client needs differential privacy on, but dp-clipping-norm is 0"),
    ({"dp-side": "both", "dp-clipping-norm": 1.0}, "Unknown dp-side 'both'. Allowed: server, "
                                                   "client."),
    *[({"dp-clipping-norm": 1.0, "dp-clipping": "adaptive", "dp-target-quantile": q},
       f"dp-target-quantile is the share of updates the adaptive norm leaves unclipped, in "
       f"(0, 1) (0 or 1 drives the norm to 0 or without bound), got {q:g}; e.g. 0.5.")
      for q in (0.0, 1.0, -0.2, 1.5)],
    ({"dp-clipping-norm": 1.0, "dp-clipping": "adaptive", "dp-clip-norm-lr": 0},
     "dp-clip-norm-lr must be > 0, got 0."),
    ({"dp-clipping-norm": 1.0, "dp-clipping": "adaptive", "dp-clipped-count-stddev": -1},
     "dp-clipped-count-stddev must be >= 0, got -1."),
    ({"dp-clipping-norm": 1.0, "dp-clipping": "adaptive", "dp-noise-multiplier": 1.0,
      "num-clients": 100, "clients-per-round": 10},
     "dp-noise-multiplier 1 is what the update and the clipped count spend together, which "
     "needs it below 2 x dp-clipped-count-stddev (0.5, clients per round / 20); give "
     "dp-clipped-count-stddev above 0.5."),
    ({"dp-clipping-norm": 1.0, "dp-clipping": "adaptive", "dp-noise-multiplier": 1.0,
      "dp-clipped-count-stddev": 0.5}, "below 2 x dp-clipped-count-stddev (0.5); give"),
    ({"dp-clipping-norm": 1.0, "dp-clipping": "adaptive", "secagg": True},
     "adaptive clipping needs each client's clipped-or-not bit, which secagg would show the "
     "server in the clear beside the secure sum; use dp-clipping fixed with secagg."),
    ({"secagg": True, "secagg-threshold": 5},
     "secagg-threshold 5 is above the clients sampled per round (4): no key could ever be "
     "rebuilt; give at most 4."),
    ({"secagg": True, "num-clients": 10, "clients-per-round": 3, "secagg-threshold": 4},
     "secagg-threshold 4 is above the clients sampled per round (3)"),
    ({"secagg": True, "aggregator": "median"},
     "aggregator median needs each client's update, but secagg shows the server only their "
     "sum; use aggregator fedavg with secagg, or drop secagg."),
    ({"secagg": True, "aggregator": "krum"}, "aggregator krum needs each client's update"),
    ({"secagg": True, "method": "sparse-local"},
     "secagg sums the clients' vectors value by value, but sparse-local's clients send "
     "different entries"),
    ({"secagg": True, "max-update-norm": 10.0},
     "max-update-norm checks each update's norm, but secagg shows the server only their sum; "
     "drop max-update-norm (secagg-clipping-range bounds each value of an honest client's "
     "update instead)."),
    ({"secagg": True, "codec": "int8"},
     "codec int8 would add its own rounding before secagg's quantization"),
    ({"secagg": True, "num-clients": 1}, "secagg needs at least 2 clients per round"),
    ({"secagg": True, "num-clients": 10, "secagg-shares": 2},
     "secagg-shares must be 0 (every sampled client) or between 3 and the clients sampled per "
     "round (10), got 2."),
    ({"secagg": True, "num-clients": 10, "secagg-shares": 11}, "between 3 and the clients"),
    ({"secagg": True, "num-clients": 10, "secagg-shares": 4}, "secagg-shares 4 is even"),
    ({"secagg": True, "num-clients": 10, "secagg-shares": 5, "secagg-threshold": 5},
     "secagg-threshold must be at least 2 and below secagg-shares (5"),
    ({"secagg": True, "secagg-threshold": 1}, "secagg-threshold must be at least 2"),
    ({"secagg": True, "secagg-clipping-range": 0}, "secagg-clipping-range must be > 0, got 0."),
    ({"secagg": True, "secagg-quantization-range": 2**31},
     "secagg-quantization-range 2147483648 x 4 clients per round must be in (0, 2^32)"),
])
def test_settings_a_rule_cannot_use_are_refused_naming_the_fix(values, message):
    with pytest.raises(ConfigError) as refused:
        RunConfig.from_mapping(values).validate()
    assert message in str(refused.value)


@pytest.mark.parametrize("values", [
    {"aggregator": "krum"},  # f = 0: 4 > 2 clients a round
    {"aggregator": "krum", "num-clients": 10, "krum-malicious": 2, "krum-keep": 8},
    {"aggregator": "trimmed-mean", "num-clients": 10},  # cuts 2 of 10 from each end
    {"aggregator": "trimmed-mean", "trimmed-fraction": 0.0},  # the plain mean, on purpose
    {"aggregator": "median"},
    {"aggregator": "median", "poison-fraction": 0.25},
    {"dp-clipping-norm": 1.0},  # clipping alone: the no-noise point of a study
    {"dp-clipping-norm": 0.1, "dp-noise-multiplier": 1.0, "method": "pafi"},
    {"dp-clipping-norm": 1.0, "dp-noise-multiplier": 0.5, "num-clients": 100, "dp-delta": 1e-3},
    {"dp-delta": 1e-3, "method": "sparse-local"},  # DP off: delta is only reported
    {"secagg": True, "dp-clipping-norm": 1.0, "dp-noise-multiplier": 1.0, "server-opt": "fedadam"},
    {"secagg-threshold": 9, "aggregator": "median"},  # secagg off: its settings are unused
    {"dp-clipping-norm": 0.1, "dp-clipping": "adaptive"},  # no noise: no count noise either
    {"dp-clipping-norm": 0.1, "dp-clipping": "adaptive", "dp-noise-multiplier": 1.0,
     "num-clients": 100, "clients-per-round": 40},  # Flower's m / 20 = 2: z below 4
    {"dp-clipping-norm": 0.1, "dp-noise-multiplier": 1.0, "dp-side": "client"},
    {"dp-clipping-norm": 0.1, "dp-clipping": "adaptive", "dp-noise-multiplier": 1.0,
     "dp-clipped-count-stddev": 1.0, "dp-side": "client"},
    {"secagg": True, "dp-clipping-norm": 1.0, "dp-noise-multiplier": 1.0, "dp-side": "client"},
    {"dp-target-quantile": 0.0},  # DP off: unused
])
def test_settings_that_a_rule_can_use_are_accepted(values):
    RunConfig.from_mapping(values).validate()


@pytest.mark.parametrize("clients", range(2, 13))
def test_every_accepted_secagg_setting_is_one_flowers_workflow_takes(clients):
    """Our refusals cover Flower's own checks, so no refusal waits for the run to start; the
    defaults keep a majority threshold (dropouts up to a minority survive)."""
    from server.secagg import secure_workflow

    accepted = 0
    for shares in range(0, clients + 2):
        for threshold in range(0, clients + 2):
            cfg = RunConfig(secagg=True, num_clients=clients, secagg_shares=shares,
                            secagg_threshold=threshold)
            try:
                cfg.validate()
            except ConfigError:
                continue
            accepted += 1
            workflow = secure_workflow(cfg, largest_shard=1000)  # raises if Flower refuses
            assert workflow.max_weight == 1024  # a power of two: weights kept exactly
            assert 2 <= cfg.secagg_reconstruction_threshold <= clients
    assert accepted
    default = RunConfig(secagg=True, num_clients=clients).validate()
    assert default.secagg_reconstruction_threshold == clients // 2 + 1


def test_poisoners_are_a_whole_number_of_clients():
    assert RunConfig(num_clients=10, poison_fraction=0.2).validate().poisoning_clients == 2
    assert RunConfig(num_clients=10, poison_fraction=0.3).validate().poisoning_clients == 3
    assert RunConfig().poisoning_clients == 0


def test_unknown_setting_and_bad_type_are_clear():
    with pytest.raises(ConfigError, match="Unknown setting 'round'"):
        RunConfig.from_mapping({"round": 3})
    with pytest.raises(ConfigError, match="'rounds' expects int, got 'three'"):
        RunConfig.from_mapping({"rounds": "three"})
