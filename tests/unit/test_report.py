"""The lines a user reads: byte sizes and the closing comparison with full fine-tuning."""

from __future__ import annotations

import pytest

from common.report import human_bytes, upload_comparison


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
