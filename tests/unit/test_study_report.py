"""The studies' report: how many central rounds a federated budget is worth, on the seeds
both sides ran."""

import csv

import pytest

from benchmarks import study
from benchmarks.study import first_round_reaching, mean_curve, paired_by_seed


def _history(values: list[float]) -> list[dict]:
    return [{"round": n, "metrics": {"f1": v}} for n, v in enumerate(values, start=1)]


def test_the_mean_curve_averages_seeds_round_by_round_up_to_the_shortest_run():
    curve = mean_curve([_history([0.5, 0.7, 0.9]), _history([0.7, 0.8])], "f1")
    assert curve == pytest.approx([0.6, 0.75])


def test_the_first_central_round_reaching_a_federated_final():
    curve = [0.6, 0.75, 0.74, 0.8]
    assert first_round_reaching(curve, 0.74) == 2  # not round 3, which also reaches it
    assert first_round_reaching(curve, 0.8) == 4  # equal counts as reached
    assert first_round_reaching(curve, 0.81) is None  # central never got there


def test_central_and_federated_runs_pair_on_the_seeds_both_have():
    central = [{"seed": "2", "final": "0.86"}, {"seed": "1", "final": "0.85"}]
    federated = [{"seed": s, "final": f} for s, f in (("1", "0.80"), ("3", "0.70"), ("2", "0.82"))]
    pairs = paired_by_seed(central, federated)
    assert [(a["final"], b["final"]) for a, b in pairs] == [("0.85", "0.80"), ("0.86", "0.82")]
    assert paired_by_seed(central, [{"seed": "3", "final": "0.7"}]) == []


def test_a_comparisons_runs_pair_on_the_seed_and_its_varied_settings():
    def rows(*cells: tuple[str, str]) -> list[dict]:
        return [{"seed": "1", "dp_noise_multiplier": z, "final": f} for z, f in cells]

    noisy, full = rows(("0", "0.8"), ("1", "0.6")), rows(("1", "0.7"), ("0", "0.9"))
    pairs = paired_by_seed(noisy, full, ("seed", "dp_noise_multiplier"))
    assert [(a["final"], b["final"]) for a, b in pairs] == [("0.8", "0.9"), ("0.6", "0.7")]


def test_central_rows_join_studies_and_keep_the_first_studys_run_of_a_seed(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "DOCS", tmp_path)
    for name, rows in (("a", [("full", "1", "0.85"), ("full", "2", "0.86")]),
                       ("b", [("full", "1", "0.10"), ("lora", "1", "0.84")])):
        (tmp_path / name).mkdir()
        with open(tmp_path / name / "comparison.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerows([("method", "seed", "final"), *rows])
    rows = study._central_rows(("a", "b", "missing"))
    assert sorted((r["study"], r["method"], r["seed"], r["final"]) for r in rows) == [
        ("a", "full", "1", "0.85"), ("a", "full", "2", "0.86"), ("b", "lora", "1", "0.84")]


def test_a_study_reads_against_its_baseline_seed_by_seed_on_the_seeds_both_ran():
    def runs(*cells: tuple[str, str, str]) -> dict[str, list[dict]]:
        return study._by([{"method": m, "seed": s, "final": f} for m, s, f in cells], "method")

    fedadam = runs(("pafi", "1", "0.80"), ("pafi", "2", "0.70"), ("pafi", "3", "0.75"),
                   ("lora", "1", "0.60"))
    fedavg = runs(("pafi", "2", "0.74"), ("pafi", "1", "0.82"), ("bitfit", "1", "0.7"))
    lines = study._against(fedadam, fedavg, "sst2-cosine")
    # pafi: seeds 1 and 2 only (fedavg has no seed 3): -2 and -4 points, mean -3, std 1.4;
    # lora has no baseline run and gets no row
    assert lines[2:] == ["| pafi | 1, 2 | 0.7800 ± 0.0566 | 0.7500 ± 0.0707 | -3.0 ± 1.4 |", ""]
