"""Client shards: complete, disjoint, reproducible, and label-skewed when asked."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from common.errors import ConfigError
from common.glue import format_histogram, label_histogram, partition, score_buckets, split

ROWS = 2000


def make_dataset(labels: list, regression: bool = False) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {
            "text_a": [f"row {i}" for i in range(len(labels))],
            "text_b": [""] * len(labels),
            "label": labels,
        },
        features=datasets.Features(
            {
                "text_a": datasets.Value("string"),
                "text_b": datasets.Value("string"),
                "label": datasets.Value("float32" if regression else "int64"),
            }
        ),
    )


@pytest.fixture(scope="module")
def binary() -> datasets.Dataset:
    return make_dataset([i % 2 for i in range(ROWS)])


def rows_of(shards: list[datasets.Dataset]) -> list[list[str]]:
    return [shard["text_a"] for shard in shards]


def max_class_fraction(shards: list[datasets.Dataset]) -> float:
    """Mean over clients of the share of the client's most common label."""
    shares = []
    for shard in shards:
        labels = list(shard["label"])
        shares.append(max(labels.count(v) for v in set(labels)) / len(labels))
    return sum(shares) / len(shares)


@pytest.mark.parametrize("iid", [False, True])
def test_shards_cover_the_data_without_overlap(binary: datasets.Dataset, iid: bool) -> None:
    shards = partition(binary, 5, alpha=0.5, iid=iid, seed=1, task="sst2")
    assert len(shards) == 5
    everything = [row for rows in rows_of(shards) for row in rows]
    assert len(everything) == ROWS
    assert set(everything) == set(binary["text_a"])
    assert all(shard.column_names == ["text_a", "text_b", "label"] for shard in shards)


@pytest.mark.parametrize("iid", [False, True])
def test_same_seed_same_shards_other_seed_other_shards(binary: datasets.Dataset, iid: bool) -> None:
    first = partition(binary, 4, alpha=0.5, iid=iid, seed=7, task="sst2")
    again = partition(binary, 4, alpha=0.5, iid=iid, seed=7, task="sst2")
    other = partition(binary, 4, alpha=0.5, iid=iid, seed=8, task="sst2")
    assert rows_of(first) == rows_of(again)
    assert rows_of(first) != rows_of(other)


def test_iid_shards_are_balanced_and_mixed(binary: datasets.Dataset) -> None:
    shards = partition(binary, 4, alpha=0.5, iid=True, seed=0, task="sst2")
    assert [len(s) for s in shards] == [500] * 4
    # Without a shuffle the first shard would hold rows 0..499 in order.
    assert shards[0]["text_a"] != [f"row {i}" for i in range(500)]


def test_small_alpha_skews_labels(binary: datasets.Dataset) -> None:
    skewed = partition(binary, 5, alpha=0.1, iid=False, seed=0, task="sst2")
    mixed = partition(binary, 5, alpha=0.1, iid=True, seed=0, task="sst2")
    assert max_class_fraction(mixed) < 0.6  # each IID shard is close to 50/50
    assert max_class_fraction(skewed) > 0.75


def test_stsb_is_split_over_score_buckets() -> None:
    rng = np.random.default_rng(0)
    data = make_dataset(rng.uniform(0.0, 5.0, ROWS).tolist(), regression=True)
    shards = partition(data, 4, alpha=0.1, iid=False, seed=3, task="stsb")
    assert sum(len(s) for s in shards) == ROWS
    assert all(s.column_names == ["text_a", "text_b", "label"] for s in shards)
    hist = label_histogram(shards, "stsb")
    assert hist.shape == (4, 6)
    assert hist.sum(axis=1).tolist() == [len(s) for s in shards]
    # Uniform scores put about 1/6 of each client in each bucket; alpha=0.1 does not.
    assert (hist.max(axis=1) / hist.sum(axis=1)).mean() > 0.4


def test_score_buckets_round_half_up_and_clip() -> None:
    assert score_buckets([0.0, 0.49, 0.5, 2.5, 4.5, 5.0, 5.2]).tolist() == [0, 0, 1, 3, 5, 5, 5]


def test_histogram_counts_by_hand() -> None:
    shards = [make_dataset([0, 0, 1]), make_dataset([1]), make_dataset([2, 0])]
    hist = label_histogram(shards, "mnli")
    assert hist.tolist() == [[2, 1, 0], [0, 1, 0], [1, 0, 1]]
    stsb = label_histogram([make_dataset([0.2, 0.5, 2.4, 4.6, 5.0], regression=True)], "stsb")
    assert stsb.tolist() == [[1, 1, 1, 0, 0, 2]]


def test_histogram_sums_match_sizes(binary: datasets.Dataset) -> None:
    shards = partition(binary, 6, alpha=0.3, iid=False, seed=2, task="sst2")
    hist = label_histogram(shards, "sst2")
    assert hist.shape == (6, 2)
    assert hist.sum(axis=1).tolist() == [len(s) for s in shards]
    assert hist.sum(axis=0).tolist() == [ROWS // 2, ROWS // 2]


def test_format_histogram_has_a_row_per_client() -> None:
    text = format_histogram(np.array([[3, 1], [0, 2]]), "rte")
    lines = text.splitlines()
    assert lines[0].split() == ["client", "size", "entailment", "not_entailment"]
    assert lines[1].split() == ["0", "4", "3", "1"]
    assert lines[2].split() == ["1", "2", "0", "2"]


def test_more_clients_than_rows_is_a_config_error(binary: datasets.Dataset) -> None:
    with pytest.raises(ConfigError, match="num-clients"):
        partition(binary.select(range(5)), 10, alpha=0.5, iid=True, seed=0, task="sst2")


def test_impossible_dirichlet_split_says_what_to_change(binary: datasets.Dataset) -> None:
    # 12 rows over 10 clients at alpha=0.01: each label-wise draw puts nearly all rows on
    # one client, and client-wise mixes of exact zeros run out of labels.
    with pytest.raises(ConfigError, match="Raise alpha or lower num-clients"):
        partition(binary.select(range(12)), 10, alpha=0.01, iid=False, seed=0, task="sst2")


@pytest.fixture(scope="module")
def many_clients() -> datasets.Dataset:
    """SST-2's label balance (44% / 56%) at a size where 1,000 clients hold ~20 rows each."""
    rng = np.random.default_rng(0)
    return make_dataset((rng.random(20_000) < 0.56).astype(int).tolist())


def test_thousand_clients_auto_falls_back_and_no_client_is_empty(
        many_clients: datasets.Dataset) -> None:
    shards, scheme = split(many_clients, 1000, alpha=0.1, iid=False, seed=3, task="sst2")
    assert scheme == "inner-dirichlet"
    assert min(len(s) for s in shards) >= 1
    assert sum(len(s) for s in shards) == len(many_clients)
    again = partition(many_clients, 1000, alpha=0.1, iid=False, seed=3, task="sst2")
    assert rows_of(again) == rows_of(shards)
    other = partition(many_clients, 1000, alpha=0.1, iid=False, seed=4, task="sst2")
    assert rows_of(other) != rows_of(shards)
    mixed = partition(many_clients, 1000, alpha=100.0, iid=False, seed=3,
                      task="sst2", scheme="inner-dirichlet")
    # alpha 0.1 leaves most clients with one label; alpha 100 mixes them like the whole set
    assert max_class_fraction(shards) > 0.85
    assert max_class_fraction(mixed) < 0.75


def test_label_wise_dirichlet_refuses_empty_clients_with_the_way_out(
        many_clients: datasets.Dataset) -> None:
    with pytest.raises(ConfigError, match="inner-dirichlet"):
        partition(many_clients, 1000, alpha=0.1, iid=False, seed=3, task="sst2",
                  scheme="dirichlet")


def test_auto_keeps_the_label_wise_split_where_it_succeeds(binary: datasets.Dataset) -> None:
    shards, scheme = split(binary, 5, alpha=0.5, iid=False, seed=1, task="sst2")
    explicit = partition(binary, 5, alpha=0.5, iid=False, seed=1, task="sst2",
                         scheme="dirichlet")
    assert scheme == "dirichlet" and rows_of(shards) == rows_of(explicit)


def test_many_clients_are_summarised_not_listed() -> None:
    hist = np.array([[i % 7, 10 - i % 7] for i in range(1000)])
    lines = format_histogram(hist, "sst2").splitlines()
    assert len(lines) == 6  # header + min, 25%, median, 75%, max
    assert lines[0].split()[:2] == ["1000", "clients"]
    assert lines[-1].split()[:3] == ["max", "10", "1.00"]  # size 10, one label only
