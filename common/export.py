"""The end of a run: a compact update file and a plain Hugging Face checkpoint.

Both come from one path: the compact update (PaFi values in mask order, the HiWi change,
the head) is merged into a freshly loaded pre-trained backbone. So the saved checkpoint
is exactly what anyone rebuilds from the public backbone plus `update.safetensors`.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from common.config import RunConfig
from common.errors import MaskMismatchError
from common.files import read_safetensors
from common.model import load_backbone
from common.session import Session
from common.updates import State

FORMAT = "fedpafi-update/1"


def save_update(session: Session, compact: State, path: Path) -> None:
    metadata = {
        "format": FORMAT,
        "method": session.cfg.method,
        "task": session.cfg.task,
        "model": session.cfg.model,
        "model_identity": session.method.identity,
        "fingerprint": session.fingerprint,
        "run_config": session.cfg.to_json(),
    }
    save_file({k: v.contiguous() for k, v in compact.items()}, str(path), metadata)


def load_update(path: Path) -> tuple[State, dict[str, str]]:
    return read_safetensors(path, FORMAT, "update")


def merged_model(session: Session, compact: State):
    """A plain pre-trained backbone with the compact update folded in."""
    cfg = session.cfg
    plain = load_backbone(cfg.model, session.task, cfg.seed, cfg.untrained_pooler).model
    plain.to(next(session.method.model.parameters()).device)
    return session.method.merge_into(plain, compact).eval()


def save_checkpoint(session: Session, compact: State, folder: Path):
    """Write a checkpoint that `AutoModelForSequenceClassification` loads as is."""
    model = merged_model(session, compact)
    model.save_pretrained(folder)
    session.tokenizer.save_pretrained(folder)
    return model


def session_for_update(path: Path, model: str = "") -> tuple[Session, State]:
    """Rebuild the run's method on the backbone, refusing a different backbone or mask."""
    compact, metadata = load_update(path)
    cfg = RunConfig.from_json(metadata["run_config"])
    cfg = cfg.replace(model=model or cfg.model)
    session = Session.build(cfg)
    if session.method.identity != metadata["model_identity"]:
        raise MaskMismatchError(
            f"Backbone '{cfg.model}' is not the one this update was trained on "
            f"(weights digest {session.method.identity[:12]} vs "
            f"{metadata['model_identity'][:12]}). Pass --model with the original backbone."
        )
    if session.fingerprint != metadata["fingerprint"]:
        raise MaskMismatchError(
            f"Mask fingerprint mismatch: the update holds {metadata['fingerprint']}, this "
            f"backbone and settings give {session.fingerprint}."
        )
    return session, compact
