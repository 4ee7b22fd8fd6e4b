"""The comparison grid, its table and plots, on fake runs (the real one is an integration test)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from common.config import RunConfig
from common.errors import ConfigError
from common.plots import COMPARISON_PLOTS
from simulations.cli import main
from simulations.compare import run_comparison, variants

BYTES_UP = {"full": 9e7, "pafi": 2.5e5}


def fake_simulate(cfg: RunConfig) -> Path:
    """Write what a finished run leaves behind, with numbers that depend on the variant."""
    run = Path(cfg.out) / cfg.run_name
    run.mkdir(parents=True)
    up = BYTES_UP[cfg.method] / (4 if cfg.codec == "int8" else 1)
    records = [{"round": r, "metrics": {"accuracy": a}, "bytes_up_per_client": up}
               for r, a in ((1, 0.8), (2, 0.7))]
    (run / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "summary.json").write_text(json.dumps({
        "method": cfg.method, "codec": cfg.codec + (" (lossy)" if cfg.codec == "int8" else ""),
        "server_opt": cfg.server_opt, "trainable_parameters": 10, "values_per_update": 9,
        "main_metric": "accuracy", "initial_metrics": {"accuracy": 0.5},
        "final_metrics": {"accuracy": 0.7}, "upload_per_client_per_round": up,
        "download_per_client_per_round": up, "bytes_up_total": 4 * up, "bytes_down_total": 4 * up,
    }))
    return run


def test_every_combination_runs_once_and_lands_in_the_table(tmp_path):
    base = RunConfig(out=str(tmp_path), run_name="cmp")
    grid = variants(base, ["full", "pafi"], ["fp32", "int8"], ["fedavg"])
    folder = run_comparison(base, grid, fake_simulate)
    rows = list(csv.DictReader(open(folder / "comparison.csv")))
    assert [(r["method"], r["codec"]) for r in rows] == [
        ("full", "fp32"), ("full", "int8 (lossy)"), ("pafi", "fp32"), ("pafi", "int8 (lossy)")]
    assert float(rows[3]["upload_per_client_per_round"]) == BYTES_UP["pafi"] / 4
    assert float(rows[0]["total_mb"]) == pytest.approx(8 * BYTES_UP["full"] / 1e6)
    assert (rows[0]["final"], rows[0]["best"], rows[0]["best_round"]) == ("0.7", "0.8", "1")
    table = (folder / "comparison.md").read_text().splitlines()
    assert len(table) == 2 + len(rows) and "| pafi | int8 (lossy) | fedavg |" in table[-1]
    assert "62.5 KB" in table[-1]  # 250 KB / 4, the same number as the CSV
    assert "0.5000 -> 0.7000 | 0.8000 (1) |" in table[-1]
    for name in COMPARISON_PLOTS:
        assert (folder / name).stat().st_size > 10_000


def test_a_bad_value_in_a_list_fails_before_any_run(tmp_path, capsys):
    with pytest.raises(ConfigError, match="Unknown server-opt 'sgd'"):
        variants(RunConfig(), ["pafi"], ["fp32"], ["fedavg", "sgd"])
    assert main(["compare", "--methods", "pafi,lorax", "--out", str(tmp_path)]) == 2
    assert "Unknown method 'lorax'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
