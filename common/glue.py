"""GLUE tasks: what each one is, how to read it, and how to split it across clients.

Every split comes back in one shape (`text_a`, `text_b`, `label`) whether it was read from
the Hugging Face hub or from a classic offline GLUE folder, so the rest of the code never
needs to know the source. Label ids follow the hub release (`nyu-mll/glue`).
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    InnerDirichletPartitioner,
)

from common.errors import ConfigError, DataError

HUB_DATASET = "nyu-mll/glue"
SPLITS = ("train", "validation")
STSB_BUCKETS = 6  # scores 0.0-5.0 rounded to 0..5
BUCKET_COLUMN = "label_bucket"
COLUMNS = ("text_a", "text_b", "label")
# Every client needs a row to train on. A higher floor makes the Dirichlet draw fail often at
# small alpha or many clients (2490 rows, 10 clients, alpha 0.1: 0 of 10 seeds succeed with a
# floor of 10, 8 of 10 with 1), and FedAvg weights a tiny client by its size anyway.
MIN_CLIENT_ROWS = 1


@dataclass(frozen=True)
class TaskSpec:
    """One GLUE task: where its data lives, its labels and the metrics it is judged by.

    `tsv_columns` names the text column(s) and then the label column in the TSV header;
    `tsv_header` is set only for files without a header line (CoLA) and names their columns.
    """

    name: str
    folder: str
    hub_columns: tuple[str, ...]
    num_labels: int
    label_names: tuple[str, ...]
    metrics: tuple[str, ...]
    main_metric: str
    tsv_columns: tuple[str, ...]
    tsv_header: tuple[str, ...] = ()
    dev_file: str = "dev.tsv"
    hub_validation: str = "validation"

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1


_ACC = ("accuracy",)
_F1 = ("f1", "accuracy")  # the first metric of a task is its main one
_NLI = ("entailment", "not_entailment")
_PAIR = ("sentence1", "sentence2")


def _task(
    name: str,
    folder: str,
    hub_columns: tuple[str, ...],
    label_names: tuple[str, ...],
    metrics: tuple[str, ...],
    tsv_columns: tuple[str, ...],
    **extra: str | tuple[str, ...],
) -> TaskSpec:
    """One row of the table below: the label count and main metric follow from the rest."""
    return TaskSpec(
        name=name,
        folder=folder,
        hub_columns=hub_columns,
        num_labels=len(label_names) or 1,  # no label names: a regression score
        label_names=label_names,
        metrics=metrics,
        main_metric=metrics[0],
        tsv_columns=tsv_columns,
        **extra,
    )


# fmt: off
TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        _task("sst2", "SST-2", ("sentence",), ("negative", "positive"), _ACC,
              ("sentence", "label")),
        _task("mrpc", "MRPC", _PAIR, ("not_equivalent", "equivalent"), _F1,
              ("#1 String", "#2 String", "Quality")),
        _task("rte", "RTE", _PAIR, _NLI, _ACC, (*_PAIR, "label")),
        _task("cola", "CoLA", ("sentence",), ("unacceptable", "acceptable"),
              ("matthews_correlation",), ("sentence", "label"),
              tsv_header=("source", "label", "original_label", "sentence")),
        _task("stsb", "STS-B", _PAIR, (), ("pearson", "spearmanr"), (*_PAIR, "score")),
        _task("qnli", "QNLI", ("question", "sentence"), _NLI, _ACC,
              ("question", "sentence", "label")),
        _task("qqp", "QQP", ("question1", "question2"), ("not_duplicate", "duplicate"), _F1,
              ("question1", "question2", "is_duplicate")),
        _task("mnli", "MNLI", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
              _ACC, (*_PAIR, "gold_label"), dev_file="dev_matched.tsv",
              hub_validation="validation_matched"),
        _task("wnli", "WNLI", _PAIR, ("not_entailment", "entailment"), _ACC, (*_PAIR, "label")),
    )
}
# fmt: on


def get_task(name: str) -> TaskSpec:
    """Look a task up by its hub name, with an error that lists the choices."""
    if name not in TASKS:
        raise ConfigError(f"Unknown task '{name}'. Allowed: {', '.join(TASKS)}.")
    return TASKS[name]


def _spec(task: str | TaskSpec) -> TaskSpec:
    return task if isinstance(task, TaskSpec) else get_task(task)


def _features(task: TaskSpec) -> datasets.Features:
    label = datasets.Value("float32" if task.is_regression else "int64")
    return datasets.Features(
        {"text_a": datasets.Value("string"), "text_b": datasets.Value("string"), "label": label}
    )


# ---- loading ---------------------------------------------------------------------------


def load_split(task: str | TaskSpec, split: str, data_dir: str) -> datasets.Dataset:
    """Load `train` or `validation` of a task from `data_dir`, or from the hub if it is ''."""
    spec = _spec(task)
    if split not in SPLITS:
        raise ConfigError(f"Unknown split '{split}'. Allowed: {', '.join(SPLITS)}.")
    if data_dir:
        return _load_tsv(spec, split, Path(data_dir))
    return _load_hub(spec, split)


def _load_hub(task: TaskSpec, split: str) -> datasets.Dataset:
    hub_split = task.hub_validation if split == "validation" else split
    try:
        data = datasets.load_dataset(HUB_DATASET, task.name, split=hub_split)
    except OSError as err:  # ConnectionError, hub HTTP errors, dataset not found
        raise DataError(
            f"cannot reach the Hugging Face hub for {HUB_DATASET}/{task.name} ({err}); "
            "set GLUE_DIR or --data-dir to an offline GLUE folder."
        ) from err
    text_b = task.hub_columns[1] if len(task.hub_columns) == 2 else None
    data = data.select_columns([*task.hub_columns, "label"])
    data = data.rename_column(task.hub_columns[0], "text_a")
    if text_b:
        data = data.rename_column(text_b, "text_b")
    else:
        data = data.add_column("text_b", [""] * len(data))
    return data.select_columns(list(COLUMNS)).cast(_features(task))


def _load_tsv(task: TaskSpec, split: str, data_dir: Path) -> datasets.Dataset:
    if not data_dir.is_dir():
        raise DataError(
            f"GLUE folder {data_dir} does not exist. Point --data-dir / GLUE_DIR at a classic "
            "GLUE folder, or leave both empty to use the Hugging Face hub."
        )
    path = data_dir / task.folder / (task.dev_file if split == "validation" else "train.tsv")
    if not path.is_file():
        raise DataError(
            f"{task.folder} {split} is not in this GLUE copy: {path} is missing. Use a task "
            f"with a {split} split here, or point --data-dir / GLUE_DIR at a full GLUE folder."
        )
    columns: dict[str, list] = {name: [] for name in COLUMNS}
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = list(task.tsv_header) or next(reader, [])
        where = _column_positions(task, header, path)
        for row in reader:
            if len(row) != len(header):
                raise DataError(
                    f"{path}, line {reader.line_num}: expected {len(header)} tab-separated "
                    f"fields, found {len(row)}. The file is damaged; download it again."
                )
            texts = [row[i] for i in where[:-1]]
            columns["text_a"].append(texts[0])
            columns["text_b"].append(texts[1] if len(texts) == 2 else "")
            columns["label"].append(_parse_label(task, row[where[-1]], path, reader.line_num))
    return datasets.Dataset.from_dict(columns, features=_features(task))


def _column_positions(task: TaskSpec, header: Sequence[str], path: Path) -> list[int]:
    """Positions of the text and label columns, so extra or reordered columns don't matter."""
    missing = [name for name in task.tsv_columns if name not in header]
    if missing:
        raise DataError(
            f"{path} has no column(s) {', '.join(missing)} in its header; "
            f"is it the {task.folder} file of a classic GLUE folder?"
        )
    return [list(header).index(name) for name in task.tsv_columns]


def _parse_label(task: TaskSpec, text: str, path: Path, line: int) -> float | int:
    """Accept a label name (RTE, QNLI, MNLI) or its id (SST-2, MRPC, ...); STS-B a score."""
    try:
        if task.is_regression:
            return float(text)
        if text in task.label_names:
            return task.label_names.index(text)
        if int(text) in range(task.num_labels):
            return int(text)
    except ValueError:
        pass
    raise DataError(
        f"{path}, line {line}: unknown label '{text}' for {task.folder}; expected "
        f"{'a number' if task.is_regression else ', '.join(task.label_names)}."
    )


# ---- partitioning ----------------------------------------------------------------------


def _labels(dataset: datasets.Dataset) -> np.ndarray:
    """The label column as one array (plain column access builds Python objects: slow)."""
    return dataset.select_columns("label").with_format("numpy")[:]["label"]


def score_buckets(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    """STS-B scores rounded half up to 0..5: the classes its Dirichlet split is drawn over."""
    return np.clip(np.floor(np.asarray(scores, dtype=np.float64) + 0.5), 0, 5).astype(np.int64)


def partition(
    dataset: datasets.Dataset,
    num_partitions: int,
    alpha: float,
    iid: bool,
    seed: int,
    task: str | TaskSpec,
    scheme: str = "auto",
) -> list[datasets.Dataset]:
    """Split a train set into one shard per client, label-skewed by Dirichlet(alpha) or IID.

    The same seed always gives the same shards, so every SuperNode can cut its own shard.
    `split` says which scheme `auto` picked."""
    return split(dataset, num_partitions, alpha, iid, seed, task, scheme)[0]


def split(
    dataset: datasets.Dataset,
    num_partitions: int,
    alpha: float,
    iid: bool,
    seed: int,
    task: str | TaskSpec,
    scheme: str = "auto",
) -> tuple[list[datasets.Dataset], str]:
    """The shards and the scheme that cut them: `iid`, `dirichlet` or `inner-dirichlet`.

    - `dirichlet` (flwr-datasets' DirichletPartitioner): each label is spread over the clients
      by one Dirichlet(alpha) draw, so client sizes vary as much as their labels. A draw that
      leaves a client without rows is drawn again (flwr-datasets tries 11 times). With many
      clients or a small alpha every draw does: at 1,000 SST-2 clients a draw leaves about 10
      empty at alpha 0.5 and 280 at alpha 0.1.
    - `inner-dirichlet` (flwr-datasets' InnerDirichletPartitioner): every client gets an equal
      share of the rows and draws its own label mix from Dirichlet(alpha); no client is empty.
    - `auto` (the default) is `dirichlet` where a draw succeeds and `inner-dirichlet` where none
      does, so small federations keep the classic split and large ones still run.
    STS-B is split over its score buckets (a temporary `label_bucket` column, dropped from
    the shards). Self-balancing stays off: it caps client sizes, bending the skew alpha sets,
    and does not save the draws above (it leaves as many clients empty).
    """
    spec = _spec(task)
    if len(dataset) < num_partitions:
        raise ConfigError(
            f"Cannot give each of {num_partitions} clients a row of the {len(dataset)} "
            f"{spec.name} rows. Lower num-clients."
        )
    if iid:
        partitioner = IidPartitioner(num_partitions=num_partitions)
        partitioner.dataset = dataset.shuffle(seed=seed)  # IidPartitioner cuts contiguously
        return [partitioner.load_partition(i) for i in range(num_partitions)], "iid"
    if spec.is_regression:
        dataset = dataset.add_column(BUCKET_COLUMN, score_buckets(_labels(dataset)).tolist())
    by = BUCKET_COLUMN if spec.is_regression else "label"
    shards = None
    if scheme != "inner-dirichlet":
        shards = _dirichlet(dataset, num_partitions, alpha, seed, by)
        if shards is None and scheme == "dirichlet":
            raise ConfigError(
                f"Cannot split {len(dataset)} {spec.name} rows into {num_partitions} non-IID "
                f"clients with alpha={alpha}: every Dirichlet draw left a client without rows. "
                "Lower num-clients, raise alpha, or use partitioner inner-dirichlet (or auto)."
            )
    scheme = "dirichlet" if shards is not None else "inner-dirichlet"
    if shards is None:
        try:
            shards = _inner_dirichlet(dataset, num_partitions, alpha, seed, by)
        except ValueError as err:  # a drawn label mix of exact zeros met an exhausted label
            raise ConfigError(
                f"Cannot split {len(dataset)} {spec.name} rows into {num_partitions} non-IID "
                f"clients with alpha={alpha}: neither Dirichlet scheme gives every client rows. "
                "Raise alpha or lower num-clients."
            ) from err
    if spec.is_regression:
        shards = [shard.remove_columns(BUCKET_COLUMN) for shard in shards]
    return shards, scheme


def _dirichlet(dataset: datasets.Dataset, num_partitions: int, alpha: float, seed: int,
               by: str) -> list[datasets.Dataset] | None:
    """flwr-datasets' label-wise Dirichlet split, or None when every draw left a client empty."""
    partitioner = DirichletPartitioner(num_partitions=num_partitions, partition_by=by,
                                       alpha=alpha, min_partition_size=MIN_CLIENT_ROWS,
                                       self_balancing=False, seed=seed)
    partitioner.dataset = dataset
    try:
        with warnings.catch_warnings():  # its retry warnings end in the error below anyway
            warnings.simplefilter("ignore")
            return [partitioner.load_partition(i) for i in range(num_partitions)]
    except ValueError:
        return None


def _inner_dirichlet(dataset: datasets.Dataset, num_partitions: int, alpha: float, seed: int,
                     by: str) -> list[datasets.Dataset]:
    """flwr-datasets' client-wise Dirichlet split over equal shard sizes."""
    rows, extra = divmod(len(dataset), num_partitions)
    sizes = [rows + (i < extra) for i in range(num_partitions)]
    partitioner = InnerDirichletPartitioner(partition_sizes=sizes, partition_by=by, alpha=alpha,
                                            seed=seed)
    partitioner.dataset = dataset
    with warnings.catch_warnings():  # "a class got exhausted": expected at small alpha
        warnings.simplefilter("ignore")
        return [partitioner.load_partition(i) for i in range(num_partitions)]


# ---- histograms --------------------------------------------------------------------------


def histogram_labels(task: str | TaskSpec) -> tuple[str, ...]:
    """Column names of `label_histogram`: label names, or the STS-B score buckets."""
    spec = _spec(task)
    if spec.is_regression:
        return tuple(f"score~{b}" for b in range(STSB_BUCKETS))
    return spec.label_names


def label_histogram(partitions: Sequence[datasets.Dataset], task: str | TaskSpec) -> np.ndarray:
    """Counts per client (rows) and class (columns; STS-B: score buckets 0..5)."""
    spec = _spec(task)
    width = STSB_BUCKETS if spec.is_regression else spec.num_labels
    hist = np.zeros((len(partitions), width), dtype=np.int64)
    for row, shard in enumerate(partitions):
        labels = _labels(shard)
        ids = score_buckets(labels) if spec.is_regression else labels.astype(np.int64)
        hist[row] = np.bincount(ids, minlength=width)
    return hist


HISTOGRAM_ROWS = 20  # more clients than this are summarised, not listed


def format_histogram(hist: np.ndarray, task: str | TaskSpec) -> str:
    """A plain-text table of `label_histogram`, printed at the start of a run: a row per
    client up to HISTOGRAM_ROWS clients, quantiles over the clients beyond."""
    labels = histogram_labels(task)
    if len(hist) <= HISTOGRAM_ROWS:
        header = ("client", "size", *labels)
        rows = [(str(i), str(int(c.sum())), *map(str, c)) for i, c in enumerate(hist)]
    else:
        sizes = hist.sum(axis=1)
        top = hist.max(axis=1) / np.maximum(sizes, 1)
        header = (f"{len(hist)} clients", "size", "top-label share", *(f"{x} rows" for x in labels))
        points = (("min", 0), ("25%", 25), ("median", 50), ("75%", 75), ("max", 100))
        rows = [(name, f"{np.percentile(sizes, q):.0f}", f"{np.percentile(top, q):.2f}",
                 *(f"{np.percentile(hist[:, c], q):.0f}" for c in range(hist.shape[1])))
                for name, q in points]
    widths = [max(len(r[c]) for r in (header, *rows)) for c in range(len(header))]
    return "\n".join(
        "  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)) for r in (header, *rows)
    )
