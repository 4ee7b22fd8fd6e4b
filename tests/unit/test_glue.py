"""Readers on tiny TSV files that copy each quirk of the classic GLUE files."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest

from common import glue
from common.errors import ConfigError, DataError
from common.glue import TASKS, get_task, load_split


def write(root: Path, folder: str, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = root / folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


def test_all_nine_tasks_with_hub_label_ids() -> None:
    assert set(TASKS) == {"sst2", "mrpc", "rte", "cola", "stsb", "qnli", "qqp", "mnli", "wnli"}
    assert TASKS["rte"].label_names.index("entailment") == 0
    assert TASKS["qnli"].label_names.index("not_entailment") == 1
    assert TASKS["mnli"].label_names == ("entailment", "neutral", "contradiction")
    assert TASKS["stsb"].is_regression and TASKS["stsb"].label_names == ()
    assert not TASKS["sst2"].is_regression
    assert TASKS["cola"].main_metric == "matthews_correlation"
    assert TASKS["mrpc"].main_metric == TASKS["qqp"].main_metric == "f1"
    assert set(TASKS["stsb"].metrics) == {"pearson", "spearmanr"}
    for spec in TASKS.values():
        assert spec.main_metric in spec.metrics
        assert len(spec.hub_columns) in (1, 2)


def test_unknown_task_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="Allowed: sst2, mrpc"):
        get_task("sst-2")
    with pytest.raises(ConfigError, match="qnli"):
        load_split("imdb", "train", "/nowhere")


def test_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="validation"):
        load_split("rte", "test", str(tmp_path))


def test_mrpc_bom_and_bare_quotes(tmp_path: Path) -> None:
    write(
        tmp_path,
        "MRPC",
        "train.tsv",
        "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        '1\t11\t12\tHe said " yes .\t" Yes , he said .\n'
        "0\t13\t14\tA cat .\tA dog .\n",
        encoding="utf-8-sig",
    )
    data = load_split("mrpc", "train", str(tmp_path))
    assert data.column_names == ["text_a", "text_b", "label"]
    assert data["text_a"] == ['He said " yes .', "A cat ."]
    assert data["text_b"] == ['" Yes , he said .', "A dog ."]
    assert data["label"] == [1, 0]
    assert data.features["label"].dtype == "int64"


def test_cola_has_no_header(tmp_path: Path) -> None:
    # The real dev file also ends without a newline.
    write(tmp_path, "CoLA", "dev.tsv", "gj04\t1\t\tThe dog barked.\ngj04\t0\t*\tBarked dog the.")
    data = load_split("cola", "validation", str(tmp_path))
    assert data["text_a"] == ["The dog barked.", "Barked dog the."]
    assert data["text_b"] == ["", ""]
    assert data["label"] == [1, 0]


def test_stsb_float_scores(tmp_path: Path) -> None:
    header = "\t".join(
        ["index", "genre", "filename", "year", "old_index", "source1", "source2"]
        + ["sentence1", "sentence2", "score"]
    )
    rows = [
        "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane.\tAn air plane.\t5.000",
        '1\tmain-news\theadlines\t2013\t0002\tnone\tnone\tHe " said.\tShe ran.\t0.400',
    ]
    write(tmp_path, "STS-B", "train.tsv", "\n".join([header, *rows]) + "\n")
    data = load_split("stsb", "train", str(tmp_path))
    assert data.features["label"].dtype == "float32"
    assert data["label"] == pytest.approx([5.0, 0.4])
    assert data["text_a"] == ["A plane.", 'He " said.']
    assert data["text_b"] == ["An air plane.", "She ran."]


def test_rte_string_labels(tmp_path: Path) -> None:
    write(
        tmp_path,
        "RTE",
        "dev.tsv",
        "index\tsentence1\tsentence2\tlabel\n"
        "0\tP one.\tH one.\tnot_entailment\n"
        "1\tP two.\tH two.\tentailment\n",
    )
    data = load_split("rte", "validation", str(tmp_path))
    assert data["label"] == [1, 0]
    assert data["text_b"] == ["H one.", "H two."]


def test_sst2_single_sentence(tmp_path: Path) -> None:
    write(tmp_path, "SST-2", "train.tsv", "sentence\tlabel\ngood film \t1\nbad film \t0\n")
    data = load_split("sst2", "train", str(tmp_path))
    assert data["text_a"] == ["good film ", "bad film "]
    assert data["text_b"] == ["", ""]
    assert data["label"] == [1, 0]


def test_mnli_dev_is_dev_matched(tmp_path: Path) -> None:
    write(
        tmp_path,
        "MNLI",
        "dev_matched.tsv",
        "index\tgenre\tsentence1\tsentence2\tlabel1\tgold_label\n"
        "0\tfiction\tP.\tH.\tneutral\tcontradiction\n",
    )
    data = load_split("mnli", "validation", str(tmp_path))
    assert data["label"] == [2]
    assert data["text_a"] == ["P."]


def test_missing_data_dir_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-glue-here"
    with pytest.raises(DataError) as err:
        load_split("sst2", "train", str(missing))
    assert str(missing) in str(err.value)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    write(tmp_path, "QNLI", "dev.tsv", "index\tquestion\tsentence\tlabel\n")
    with pytest.raises(DataError) as err:
        load_split("qnli", "train", str(tmp_path))
    assert str(tmp_path / "QNLI" / "train.tsv") in str(err.value)
    assert "GLUE_DIR" in str(err.value)


def test_missing_folder_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_split("qqp", "validation", str(tmp_path))
    assert str(tmp_path / "QQP" / "dev.tsv") in str(err.value)


def test_wrong_field_count_names_file_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "RTE",
        "train.tsv",
        "index\tsentence1\tsentence2\tlabel\n0\tP.\tH.\tentailment\n1\tP only.\tentailment\n",
    )
    with pytest.raises(DataError, match="line 3") as err:
        load_split("rte", "train", str(tmp_path))
    assert str(path) in str(err.value)


def test_unknown_label_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "WNLI", "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\tP.\tH.\t2\n")
    with pytest.raises(DataError, match="line 2") as err:
        load_split("wnli", "validation", str(tmp_path))
    assert str(path) in str(err.value) and "'2'" in str(err.value)


def test_missing_column_in_header(tmp_path: Path) -> None:
    write(tmp_path, "SST-2", "dev.tsv", "text\tlabel\nfine\t1\n")
    with pytest.raises(DataError, match="sentence"):
        load_split("sst2", "validation", str(tmp_path))


def test_hub_columns_are_renamed(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = datasets.Dataset.from_dict(
        {"premise": ["P."], "hypothesis": ["H."], "label": [1], "idx": [0]},
        features=datasets.Features(
            {
                "premise": datasets.Value("string"),
                "hypothesis": datasets.Value("string"),
                "label": datasets.ClassLabel(names=list(TASKS["mnli"].label_names)),
                "idx": datasets.Value("int32"),
            }
        ),
    )
    calls = []

    def fake_load(path: str, name: str, split: str) -> datasets.Dataset:
        calls.append((path, name, split))
        return hub

    monkeypatch.setattr(glue.datasets, "load_dataset", fake_load)
    data = load_split("mnli", "validation", "")
    assert calls == [("nyu-mll/glue", "mnli", "validation_matched")]
    assert data.column_names == ["text_a", "text_b", "label"]
    assert data[0] == {"text_a": "P.", "text_b": "H.", "label": 1}
    assert data.features["label"].dtype == "int64"


def test_hub_single_sentence_gets_empty_text_b(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = datasets.Dataset.from_dict({"sentence": ["ok"], "label": [1], "idx": [0]})
    monkeypatch.setattr(glue.datasets, "load_dataset", lambda *a, **k: hub)
    assert load_split("cola", "train", "")[0] == {"text_a": "ok", "text_b": "", "label": 1}


def test_hub_unreachable_says_how_to_go_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub")

    monkeypatch.setattr(glue.datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="GLUE_DIR or --data-dir"):
        load_split("sst2", "train", "")
