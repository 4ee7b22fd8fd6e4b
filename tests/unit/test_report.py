"""The lines a user reads: byte sizes, the update's share of full fine-tuning at the start,
and the closing comparison with full fine-tuning."""

from __future__ import annotations

import pytest

from common.report import (
    human_bytes,
    large_update_warning,
    table_header,
    table_row,
    update_size,
    upload_comparison,
)


@pytest.mark.parametrize("size, text", [
    (512, "512 B"), (999, "999 B"), (1000, "1.0 KB"), (255_002, "255.0 KB"),
    (90_855_944, "90.9 MB"), (3.2e9, "3.2 GB"),
])
def test_human_bytes_uses_decimal_units(size, text):
    assert human_bytes(size) == text


def test_upload_comparison_states_the_ratio():
    line = upload_comparison(255_002, 90_855_944)
    assert line == ("upload per client per round: 255.0 KB vs 90.9 MB for full fine-tuning, "
                    "356x less")


FULL = 22_713_986  # all-MiniLM-L6-v2 with a two-label head


def test_every_method_states_its_share_of_full_fine_tuning():
    assert update_size("pafi-hiwi", 63_070, FULL, "fp32") == (
        "method pafi-hiwi: 63,070 values per update (fp32), 0.28% of full fine-tuning's "
        "22,713,986")
    assert update_size("full", FULL, FULL, "fp16 (lossy)").endswith(
        "(fp16 (lossy)), 100.00% of full fine-tuning's 22,713,986")


def test_an_update_over_one_percent_of_full_stands_out():
    assert large_update_warning("pafi-hiwi", 63_070, FULL) is None
    assert large_update_warning("full", FULL, FULL) is None  # it is full fine-tuning
    # HiWi on the FFN input weights, merged sync: the whole matrix change of 6 layers
    warning = large_update_warning("hiwi", 6 * 1536 * 384 + 770, FULL)
    assert warning.startswith("WARNING: hiwi sends 15.6% of full fine-tuning's values per "
                              "update, over 1%.")
    assert "hiwi-sync adapter" in warning


def test_the_round_table_has_an_epsilon_column_only_with_dp_noise():
    record = {"round": 3, "metrics": {"accuracy": 0.8}, "loss": 0.5, "bytes_up_per_client": 1e3,
              "bytes_down_per_client": 2e3, "clients": [1, 2], "wall_s": 1.5}
    plain, private = table_header("accuracy"), table_header("accuracy", private=True)
    assert "epsilon" not in plain and private == plain + " |  epsilon"
    assert len(table_row(record, "accuracy", 3e3)) == len(plain)
    row = table_row({**record, "epsilon": 2.13349}, "accuracy", 3e3)
    assert row.endswith(" |    2.133") and len(row) == len(private)
