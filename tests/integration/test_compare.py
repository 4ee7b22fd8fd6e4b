"""`fedpafi compare` end to end: two methods on the real MiniLM, one short round each."""

from __future__ import annotations

import csv
import json

import pytest

from common.plots import COMPARISON_PLOTS
from tests.integration.test_simulation import fedpafi

pytestmark = pytest.mark.integration


def test_compare_writes_a_consistent_table_and_plots(glue_dir, tmp_path):
    done = fedpafi("compare", "--methods", "bitfit,pafi", "--codec", "int8", "--task",
                   "rte", "--num-clients", "2", "--rounds", "1", "--local-steps", "2",
                   "--batch-size", "4", "--max-seq-length", "32", "--eval-max-examples", "16",
                   "--iid", "--data-dir", str(glue_dir), "--out", str(tmp_path),
                   "--run-name", "cmp")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[2/2] pafi, codec int8, server_opt fedavg" in done.stdout
    folder = tmp_path / "cmp"
    rows = list(csv.DictReader(open(folder / "comparison.csv")))
    assert [(r["method"], r["codec"]) for r in rows] == [("bitfit", "int8 (lossy)"),
                                                         ("pafi", "int8 (lossy)")]
    table = (folder / "comparison.md").read_text()
    for row in rows:
        run = folder / row["run"]
        summary = json.loads((run / "summary.json").read_text())
        rounds = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]
        assert float(row["upload_per_client_per_round"]) == rounds[0]["bytes_up_per_client"]
        assert float(row["final"]) == summary["final_metrics"]["accuracy"]
        assert (run / "model" / "model.safetensors").is_file()
        assert f"| {row['method']} | {row['codec']} | fedavg | " in table
    up = {r["method"]: float(r["upload_per_client_per_round"]) for r in rows}
    values = {r["method"]: int(r["values_per_update"]) for r in rows}
    for method in up:  # one byte a value (int8), plus scales and framing
        assert values[method] < up[method] < 1.05 * values[method]
    assert up["bitfit"] < up["pafi"]  # ~27k biases vs ~54k deltas
    for name in COMPARISON_PLOTS:
        assert (folder / name).stat().st_size > 10_000
