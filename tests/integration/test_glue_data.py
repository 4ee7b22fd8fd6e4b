"""The offline GLUE copy reads with the official row counts and in-range labels."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import DataError
from common.glue import get_task, load_split

pytestmark = pytest.mark.integration

# Official GLUE sizes (train, dev), as listed in the GLUE copy's README.
OFFICIAL_ROWS = [
    ("sst2", "train", 67349),
    ("sst2", "validation", 872),
    ("mrpc", "train", 3668),
    ("mrpc", "validation", 408),
    ("rte", "train", 2490),
    ("rte", "validation", 277),
    ("cola", "train", 8551),
    ("cola", "validation", 1043),
    ("stsb", "train", 5749),
    ("stsb", "validation", 1500),
    ("wnli", "train", 635),
    ("wnli", "validation", 71),
    ("qnli", "validation", 5463),
]


@pytest.mark.parametrize(("task", "split", "rows"), OFFICIAL_ROWS)
def test_official_row_counts_and_label_range(
    glue_dir: Path, task: str, split: str, rows: int
) -> None:
    data = load_split(task, split, str(glue_dir))
    assert len(data) == rows
    assert data.column_names == ["text_a", "text_b", "label"]
    labels = data.select_columns("label").with_format("numpy")[:]["label"]
    spec = get_task(task)
    if spec.is_regression:
        assert labels.min() >= 0.0 and labels.max() <= 5.0
    else:
        assert set(labels.tolist()) == set(range(spec.num_labels))
    pairs = data.select(range(min(rows, 50)))
    assert all(pairs["text_a"])
    assert all(pairs["text_b"]) == (len(spec.hub_columns) == 2)


def test_mrpc_dev_first_row(glue_dir: Path) -> None:
    first = load_split("mrpc", "validation", str(glue_dir))[0]
    assert first["text_a"].startswith("He said the foodservice pie business")
    assert first["text_b"].startswith('" The foodservice pie business')
    assert first["label"] == 1


def test_rte_dev_labels_follow_the_hub(glue_dir: Path) -> None:
    # RTE dev starts "not_entailment", "entailment"; the hub ids are 1 and 0.
    assert load_split("rte", "validation", str(glue_dir))["label"][:2] == [1, 0]


def test_qnli_train_is_missing(glue_dir: Path) -> None:
    with pytest.raises(DataError, match="QNLI/train.tsv"):
        load_split("qnli", "train", str(glue_dir))


def test_stsb_dev_scores_are_floats(glue_dir: Path) -> None:
    # STS-B dev starts with scores 5.000 and 4.750.
    data = load_split("stsb", "validation", str(glue_dir))
    assert data.features["label"].dtype == "float32"
    assert data["label"][:2] == pytest.approx([5.0, 4.75])
