"""The comparison grid, seeds, resume, time to target, table and plots, on fake runs (the
real one is an integration test)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from common.comparison import mean_std, privacy_points, time_to_target
from common.config import RunConfig
from common.errors import ConfigError
from common.plots import COMPARISON_PLOTS
from simulations.cli import central_reference, main
from simulations.compare import run_comparison, variants

BYTES_UP = {"full": 9e7, "pafi": 2.5e5}
# dev accuracy after rounds 1, 2, 3, by method and seed (seed 2 learns faster)
CURVES = {("full", 1): (0.70, 0.80, 0.82), ("full", 2): (0.78, 0.84, 0.86),
          ("pafi", 1): (0.60, 0.75, 0.82), ("pafi", 2): (0.70, 0.83, 0.80)}


def fake_simulate(cfg: RunConfig, resume=None) -> Path:
    """Write what a finished run leaves behind, with numbers that depend on the variant."""
    run = Path(cfg.out) / cfg.run_name
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    up = BYTES_UP[cfg.method] / (4 if cfg.codec == "int8" else 1)
    curve = CURVES[cfg.method, cfg.seed]
    records = [{"round": r, "metrics": {"accuracy": a}, "bytes_up_per_client": up,
                "wall_s": 10.0 * r} for r, a in enumerate(curve, start=1)]
    (run / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "summary.json").write_text(json.dumps({
        "method": cfg.method, "codec": cfg.codec + (" (lossy)" if cfg.codec == "int8" else ""),
        "server_opt": cfg.server_opt, "trainable_parameters": 10, "values_per_update": 9,
        "main_metric": "accuracy", "initial_metrics": {"accuracy": 0.5},
        "final_metrics": {"accuracy": curve[-1]}, "upload_per_client_per_round": up,
        "download_per_client_per_round": up, "bytes_up_total": 4 * up, "bytes_down_total": 4 * up,
        "wall_s": 60.0,
        **({"epsilon": 10 / cfg.dp_noise_multiplier} if cfg.dp_noise_multiplier else {}),
    }))
    return run


def rows_of(folder: Path) -> list[dict]:
    return list(csv.DictReader(open(folder / "comparison.csv")))


def test_every_combination_runs_once_and_lands_in_the_table(tmp_path):
    base = RunConfig(out=str(tmp_path), run_name="cmp", seed=1)
    grid = variants(base, ["full", "pafi"], {"codec": ["fp32", "int8"]}, [1])
    folder = run_comparison(base, grid, fake_simulate)
    rows = rows_of(folder)
    assert [(r["method"], r["codec"]) for r in rows] == [
        ("full", "fp32"), ("full", "int8 (lossy)"), ("pafi", "fp32"), ("pafi", "int8 (lossy)")]
    assert rows[3]["run"] == "pafi-int8-fedavg-seed1"
    assert float(rows[3]["upload_per_client_per_round"]) == BYTES_UP["pafi"] / 4
    assert float(rows[0]["total_mb"]) == pytest.approx(8 * BYTES_UP["full"] / 1e6)
    assert (rows[0]["final"], rows[0]["best"], rows[0]["best_round"]) == ("0.82", "0.82", "3")
    table = (folder / "comparison.md").read_text().splitlines()
    assert "| pafi | int8 (lossy) | fedavg | 1 |" in table[5]
    assert "62.5 KB" in table[5]  # 250 KB / 4, the same number as the CSV
    for name in COMPARISON_PLOTS:
        assert (folder / name).stat().st_size > 10_000


def test_seeds_repeat_every_cell_and_the_table_shows_mean_and_sample_std(tmp_path):
    base = RunConfig(out=str(tmp_path), run_name="cmp")
    grid = variants(base, ["full", "pafi"], {}, [1, 2])
    folder = run_comparison(base, grid, fake_simulate)
    rows = rows_of(folder)
    # seed outermost: a comparison stopped part-way holds every cell at its first seeds
    assert [(r["method"], r["seed"]) for r in rows] == [
        ("full", "1"), ("pafi", "1"), ("full", "2"), ("pafi", "2")]
    table = (folder / "comparison.md").read_text()
    # pafi finals 0.82 and 0.80: mean 0.81, sample std sqrt(2 * 0.01^2 / 1) = 0.0141;
    # bests 0.82 and 0.83
    assert "| 0.8100 ± 0.0141 | 0.8250 ± 0.0071 |" in table
    assert mean_std([0.82, 0.80]) == pytest.approx((0.81, 0.0141421), abs=1e-6)
    assert "| full | fp32 | fedavg | 2 |" in table and table.count("| pafi |") == 1


def test_a_task_with_two_metrics_shows_the_other_one_beside_the_main_one(tmp_path):
    """MRPC is scored by F1 and accuracy: the table averages both over seeds."""
    def two_metrics(cfg: RunConfig, resume=None) -> Path:
        run = fake_simulate(cfg)
        summary = json.loads((run / "summary.json").read_text())
        summary.update(main_metric="f1", initial_metrics={"f1": 0.5, "accuracy": 0.5},
                       final_metrics={"f1": summary["final_metrics"]["accuracy"],
                                      "accuracy": {1: 0.72, 2: 0.60}[cfg.seed]})
        (run / "summary.json").write_text(json.dumps(summary))
        history = [{**r, "metrics": {"f1": r["metrics"]["accuracy"]}} for r in
                   map(json.loads, (run / "rounds.jsonl").read_text().splitlines())]
        (run / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
        return run

    base = RunConfig(out=str(tmp_path), run_name="cmp")
    folder = run_comparison(base, variants(base, ["pafi"], {}, [1, 2]), two_metrics)
    assert [r["final_others"] for r in rows_of(folder)] == ["accuracy=0.72", "accuracy=0.6"]
    table = (folder / "comparison.md").read_text().splitlines()
    assert "| final | final accuracy | best |" in table[0]
    # f1 finals 0.82 and 0.80; accuracy 0.72 and 0.60: mean 0.66, std sqrt(2 * 0.06^2) 0.0849
    assert "| 0.8100 ± 0.0141 | 0.6600 ± 0.0849 |" in table[2]


def test_time_to_target_is_the_first_round_at_or_above_the_target():
    history = [{"round": r, "metrics": {"accuracy": a}, "bytes_up_per_client": 100.0,
                "wall_s": 5.0} for r, a in ((1, 0.6), (2, 0.81), (3, 0.79), (4, 0.9))]
    assert time_to_target(history, "accuracy", 0.8) == {
        "target_round": 2, "target_upload_per_client": 200.0, "target_wall_s": 10.0}
    assert time_to_target(history, "accuracy", 0.95)["target_round"] is None
    assert time_to_target(history, "accuracy", None)["target_round"] is None


def test_the_target_is_a_fraction_of_the_best_full_run(tmp_path):
    base = RunConfig(out=str(tmp_path), run_name="cmp")
    folder = run_comparison(base, variants(base, ["full", "pafi"], {}, [1, 2]), fake_simulate)
    rows = {(r["method"], r["seed"]): r for r in rows_of(folder)}
    target = 0.95 * 0.86  # the best full run: seed 2, round 3
    assert float(rows["pafi", "1"]["target"]) == pytest.approx(target)
    assert rows["pafi", "1"]["target_round"] == "3"  # 0.82 >= 0.817; 0.75 is not
    assert rows["pafi", "2"]["target_round"] == "2"  # 0.83, though it ends below (0.80)
    assert float(rows["pafi", "2"]["target_upload_per_client"]) == 2 * BYTES_UP["pafi"]
    assert float(rows["pafi", "2"]["target_wall_s"]) == 10.0 + 20.0
    assert "0.95 x the best `full` dev accuracy (0.8600) = 0.8170" in (
        folder / "comparison.md").read_text()
    folder = run_comparison(base.replace(run_name="abs"),
                            variants(base, ["pafi"], {}, [1]), fake_simulate, target=0.7)
    assert rows_of(folder)[0]["target_round"] == "2"


def test_an_interrupted_comparison_resumes_where_it_stopped(tmp_path):
    base = RunConfig(out=str(tmp_path), run_name="cmp")
    grid = variants(base, ["full", "pafi"], {}, [1, 2])
    calls: list[tuple[str, bool]] = []

    def dies_at_the_third_run(cfg, resume=None):
        calls.append((cfg.run_name, resume is not None))
        if len(calls) == 3:
            (Path(cfg.out) / cfg.run_name).mkdir()
            (Path(cfg.out) / cfg.run_name / "checkpoint.safetensors").write_bytes(b"round 1")
            raise KeyboardInterrupt
        return fake_simulate(cfg, resume)

    with pytest.raises(KeyboardInterrupt):
        run_comparison(base, grid, dies_at_the_third_run)
    assert len(rows_of(tmp_path / "cmp")) == 2  # what finished is in the table already
    run_comparison(base, grid, dies_at_the_third_run)
    assert calls[3:] == [("full-fp32-fedavg-seed2", True), ("pafi-fp32-fedavg-seed2", False)]
    assert len(rows_of(tmp_path / "cmp")) == 4


def test_a_comparison_stopped_again_keeps_the_runs_an_earlier_piece_finished(tmp_path):
    base = RunConfig(out=str(tmp_path), run_name="cmp")
    run_comparison(base, variants(base, ["pafi"], {}, [1]), fake_simulate)  # an earlier piece
    grid = variants(base, ["full", "pafi"], {}, [1, 2])  # the grid grows: full comes first

    def dies_at_the_second_run(cfg, resume=None):
        if cfg.run_name == "full-fp32-fedavg-seed2":
            raise KeyboardInterrupt
        return fake_simulate(cfg, resume)

    with pytest.raises(KeyboardInterrupt):
        run_comparison(base, grid, dies_at_the_second_run)
    assert [r["run"] for r in rows_of(tmp_path / "cmp")] == [
        "full-fp32-fedavg-seed1", "pafi-fp32-fedavg-seed1"]


def test_resuming_with_other_settings_is_refused_before_any_run(tmp_path):
    base = RunConfig(out=str(tmp_path), run_name="cmp")
    run_comparison(base, variants(base, ["pafi"], {}, [1]), fake_simulate)
    longer = base.replace(rounds=10)
    with pytest.raises(ConfigError, match=r"rounds 5 -> 10.*new --run-name"):
        run_comparison(longer, variants(longer, ["full", "pafi"], {}, [1]), fake_simulate)
    assert not (tmp_path / "cmp" / "full-fp32-fedavg-seed1").exists()


def test_mask_settings_are_grid_axes_and_name_the_runs(tmp_path):
    base = RunConfig(out=str(tmp_path))
    grid = variants(base, ["pafi"], {"mask_criterion": ["smallest", "random"],
                                     "sparsity": ["0.001", "0.02"]}, [3])
    assert [v.slug for v in grid] == [
        "pafi-fp32-fedavg-smallest-0.001-seed3", "pafi-fp32-fedavg-smallest-0.02-seed3",
        "pafi-fp32-fedavg-random-0.001-seed3", "pafi-fp32-fedavg-random-0.02-seed3"]


def test_the_central_reference_keeps_the_steps_per_round():
    central = central_reference(RunConfig(num_clients=8, clients_per_round=4, local_steps=20))
    assert (central.num_clients, central.iid, central.local_steps) == (1, True, 80)


def test_a_bad_value_in_a_list_fails_before_any_run(tmp_path, capsys):
    with pytest.raises(ConfigError, match="Unknown server-opt 'sgd'"):
        variants(RunConfig(), ["pafi"], {"server_opt": ["fedavg", "sgd"]}, [1])
    assert main(["compare", "--methods", "pafi,lorax", "--out", str(tmp_path)]) == 2
    assert "Unknown method 'lorax'" in capsys.readouterr().err
    assert main(["compare", "--seeds", "1,x", "--out", str(tmp_path)]) == 2
    assert "--seeds takes integers" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_compare_lr_names_its_methods_and_a_bare_rate_is_refused(tmp_path, capsys):
    assert main(["compare", "--methods", "full,pafi", "--lr", "1e-2", "--out", str(tmp_path)]) == 2
    assert "compare --lr takes METHOD=VALUE pairs" in capsys.readouterr().err
    assert main(["compare", "--methods", "full,pafi", "--lr", "bitfit=1e-3",
                 "--out", str(tmp_path)]) == 2
    assert "'bitfit', which is not among --methods" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
    base = RunConfig(out=str(tmp_path), run_name="cmp", seed=1)
    grid = variants(base, ["full", "pafi"], {}, [1], {"pafi": {"lr": 0.02}})
    folder = run_comparison(base, grid, fake_simulate)
    rates = {run: json.loads((folder / run / "config.json").read_text())["lr"]
             for run in ("full-fp32-fedavg-seed1", "pafi-fp32-fedavg-seed1")}
    assert rates == {"full-fp32-fedavg-seed1": 0.0, "pafi-fp32-fedavg-seed1": 0.02}


def test_compare_clips_each_method_at_its_own_norm_and_names_every_method(tmp_path, capsys):
    """Update norms differ by method (pafi-hiwi ~8.5, full ~1.4 after 10 steps): one norm
    for all would clip one method's learning away, so compare takes one per method."""
    common = ["compare", "--methods", "full,pafi", "--dp-noise-multiplier", "0.1",
              "--out", str(tmp_path), "--run-name", "dp", "--rounds", "1"]
    assert main([*common, "--dp-clipping-norm", "pafi=8"]) == 2
    assert "gives no norm for full" in capsys.readouterr().err
    assert main([*common, "--dp-clipping-norm", "pafi=8,lora=1"]) == 2
    assert "'lora', which is not among --methods" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
    base = RunConfig(out=str(tmp_path), run_name="dp", seed=1, dp_noise_multiplier=0.1)
    own = {"full": {"dp_clipping_norm": 1.4}, "pafi": {"dp_clipping_norm": 8.0, "lr": 0.02}}
    folder = run_comparison(base, variants(base, ["full", "pafi"], {}, [1], own), fake_simulate)
    configs = {run: json.loads((folder / run / "config.json").read_text())
               for run in ("full-fp32-fedavg-seed1", "pafi-fp32-fedavg-seed1")}
    assert [(c["dp-clipping-norm"], c["lr"]) for c in configs.values()] == [(1.4, 0.0),
                                                                           (8.0, 0.02)]


def test_aggregator_and_poisoning_are_grid_axes_with_a_column_each(tmp_path):
    base = RunConfig(out=str(tmp_path), run_name="poison", num_clients=10)
    grid = variants(base, ["pafi"], {"aggregator": ["fedavg", "median"],
                                     "poison_fraction": ["0", "0.2"]}, [1])
    assert [v.slug for v in grid] == [
        "pafi-fp32-fedavg-fedavg-0-seed1", "pafi-fp32-fedavg-fedavg-0.2-seed1",
        "pafi-fp32-fedavg-median-0-seed1", "pafi-fp32-fedavg-median-0.2-seed1"]
    folder = run_comparison(base, grid, fake_simulate)
    rows = rows_of(folder)
    assert [(r["aggregator"], r["poison_fraction"]) for r in rows] == [
        ("fedavg", "0.0"), ("fedavg", "0.2"), ("median", "0.0"), ("median", "0.2")]
    header = (folder / "comparison.md").read_text().splitlines()[0]
    assert "| aggregator | poison fraction |" in header
    with pytest.raises(ConfigError, match="poison-fraction 0.1 of 4 clients"):
        variants(RunConfig(), ["pafi"], {"poison_fraction": ["0", "0.1"]}, [1])


def test_dp_noise_is_a_grid_axis_with_a_column_and_the_epsilon_spent(tmp_path):
    base = RunConfig(out=str(tmp_path), run_name="dp", dp_clipping_norm=1.0)
    grid = variants(base, ["pafi"], {"dp_noise_multiplier": ["0", "0.5", "1"]}, [1])
    assert [v.slug for v in grid] == [
        "pafi-fp32-fedavg-0-seed1", "pafi-fp32-fedavg-0.5-seed1", "pafi-fp32-fedavg-1-seed1"]
    folder = run_comparison(base, grid, fake_simulate)
    assert [(r["dp_noise_multiplier"], r["epsilon"]) for r in rows_of(folder)] == [
        ("0.0", ""), ("0.5", "20.0"), ("1.0", "10.0")]
    table = (folder / "comparison.md").read_text().splitlines()
    assert "| dp noise multiplier | epsilon |" in table[0]
    assert "| 0.5 | 20.0 | 1 |" in table[3] and "| 0.0 | – | 1 |" in table[2]
    with pytest.raises(ConfigError, match="but dp-clipping-norm is 0"):
        variants(RunConfig(), ["pafi"], {"dp_noise_multiplier": ["0", "1"]}, [1])


def test_the_server_step_scale_is_a_grid_axis_with_a_column(tmp_path):
    base = RunConfig(out=str(tmp_path), run_name="adam", server_opt="fedadam")
    grid = variants(base, ["pafi"], {"server_lr_scale": ["1", "10"]}, [1])
    assert [v.slug for v in grid] == ["pafi-fp32-fedadam-1-seed1", "pafi-fp32-fedadam-10-seed1"]
    folder = run_comparison(base, grid, fake_simulate)
    assert [r["server_lr_scale"] for r in rows_of(folder)] == ["1.0", "10.0"]
    assert "| server lr scale |" in (folder / "comparison.md").read_text().splitlines()[0]


def test_accuracy_against_epsilon_has_a_point_per_noise_level_and_method(tmp_path):
    base = RunConfig(out=str(tmp_path), run_name="dp", dp_clipping_norm=1.0)
    grid = variants(base, ["full", "pafi"], {"dp_noise_multiplier": ["0", "0.5", "1"]}, [1, 2])
    folder = run_comparison(base, grid, fake_simulate)
    # finals: full 0.82 (seed 1) and 0.86 (seed 2), pafi 0.82 and 0.80, at every level
    full, pafi = (0.84, 0.82, 0.86), (0.81, 0.80, 0.82)
    points = {method: [tuple(v if v is None else round(v, 6) for v in p) for p in ps]
              for method, ps in privacy_points(rows_of(folder)).items()}
    assert points == {
        "full": [(None, *full), (20.0, *full), (10.0, *full)],
        "pafi": [(None, *pafi), (20.0, *pafi), (10.0, *pafi)]}
    assert (folder / "metric_vs_epsilon.png").stat().st_size > 10_000
    plain = run_comparison(base.replace(run_name="plain"), variants(base, ["pafi"], {}, [1]),
                           fake_simulate)
    assert not (plain / "metric_vs_epsilon.png").exists()  # no noise, no privacy plot


def test_a_run_older_than_the_aggregator_setting_counts_as_fedavg(tmp_path):
    base = RunConfig(out=str(tmp_path), run_name="old")
    folder = run_comparison(base, variants(base, ["pafi"], {}, [1]), fake_simulate)
    config = folder / "pafi-fp32-fedavg-seed1" / "config.json"
    saved = json.loads(config.read_text())
    del saved["aggregator"], saved["poison-fraction"]
    config.write_text(json.dumps(saved))
    run_comparison(base, variants(base, ["pafi"], {}, [1]), fake_simulate)  # resumes, no refusal
    assert [(r["aggregator"], r["poison_fraction"]) for r in rows_of(folder)] == [("fedavg", "0.0")]
