"""PaFi's shared magnitude mask: the k smallest pre-trained weights, the same for every task.

The mask depends only on the pre-trained weights and the settings, so every client can
recompute it and no index ever travels. Canonical order (names sorted, indices ascending)
defines the k-dimensional space every PaFi update lives in; the fingerprint (sha256 over
the backbone's weights digest, the settings and the indices) proves two parties agree.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file

from common.errors import ConfigError, MaskMismatchError
from common.files import read_safetensors

if TYPE_CHECKING:
    from common.config import RunConfig
    from common.model import Backbone

FORMAT = "fedpafi-mask/1"
# A parameter inside a repeated encoder block: BERT/RoBERTa `encoder.layer.3.`,
# DistilBERT `transformer.layer.3.`, others `layers.3.`.
_BLOCK = re.compile(r"\.layers?\.\d+\.")
_LAYERNORM = re.compile(r"layer_?norm|\.ln_?\d*\.", re.IGNORECASE)


@dataclass(frozen=True)
class MaskSettings:
    sparsity: float = 0.005
    k: int = 0  # > 0 replaces sparsity
    scope: str = "global"
    criterion: str = "smallest"
    include: tuple[str, ...] = ()
    seed: int = 0  # only the random criterion uses it

    def describe(self) -> dict:
        """The settings that shape the mask (the seed only where it matters)."""
        info = asdict(self)
        info["include"] = list(self.include)
        if self.criterion != "random":
            info.pop("seed")
        return info


@dataclass
class Mask:
    """Sorted flat indices per eligible tensor, in canonical (name-sorted) order."""

    indices: dict[str, torch.Tensor]
    shapes: dict[str, tuple[int, ...]]
    settings: MaskSettings
    model_identity: str
    fingerprint: str

    @property
    def k(self) -> int:
        return sum(int(i.numel()) for i in self.indices.values())

    @property
    def num_eligible(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())

    def counts(self) -> dict[str, tuple[int, int]]:
        """Per tensor: (selected entries, tensor size)."""
        return {n: (int(i.numel()), math.prod(self.shapes[n])) for n, i in self.indices.items()}

    def slices(self) -> dict[str, slice]:
        """Where each tensor's values sit in the k-vector."""
        out, start = {}, 0
        for name, idx in self.indices.items():
            out[name] = slice(start, start + idx.numel())
            start += idx.numel()
        return out

    def check(self, expected: str) -> None:
        """Refuse to work against a server whose mask is not this one."""
        if expected != self.fingerprint:
            raise MaskMismatchError(
                f"Mask fingerprint mismatch: the server holds {expected}, this client "
                f"computed {self.fingerprint}. Both sides must use the same backbone "
                "weights and mask settings (model, sparsity/mask-k, mask-scope, "
                "mask-criterion, mask-include)."
            )

    def save(self, path: str | Path) -> None:
        metadata = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "k": str(self.k),
            "model_identity": self.model_identity,
            "settings": json.dumps(self.settings.describe(), sort_keys=True),
            "shapes": json.dumps({n: list(s) for n, s in self.shapes.items()}),
        }
        save_file({n: i.contiguous() for n, i in self.indices.items()}, str(path), metadata)

    @classmethod
    def load(cls, path: str | Path) -> Mask:
        tensors, metadata = read_safetensors(path, FORMAT, "mask")
        raw = json.loads(metadata["settings"])
        raw["include"] = tuple(raw.get("include", ()))
        shapes = {n: tuple(s) for n, s in json.loads(metadata["shapes"]).items()}
        mask = cls(
            indices={n: tensors[n] for n in sorted(tensors)},
            shapes=shapes,
            settings=MaskSettings(**raw),
            model_identity=metadata["model_identity"],
            fingerprint=metadata["fingerprint"],
        )
        if _fingerprint(mask.indices, mask.shapes, mask.settings, mask.model_identity) != (
            mask.fingerprint
        ):
            raise MaskMismatchError(f"Mask file {path} is corrupt: its fingerprint does not match.")
        return mask


def eligible_parameters(
    model: torch.nn.Module, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()
) -> dict[str, torch.nn.Parameter]:
    """Encoder-block weight matrices (plus biases / LayerNorm if asked), sorted by name.

    Embeddings, the pooler and the task head sit outside the blocks and are never masked.
    """
    chosen = {}
    for name, param in model.named_parameters():
        if name in exclude or not _BLOCK.search(name):
            continue
        is_norm = bool(_LAYERNORM.search(name))
        if is_norm:
            keep = "layernorm" in include
        elif param.ndim >= 2:
            keep = True
        else:
            keep = "bias" in include and name.endswith("bias")
        if keep:
            chosen[name] = param
    return dict(sorted(chosen.items()))


def compute_mask(
    params: dict[str, torch.Tensor], settings: MaskSettings, model_identity: str
) -> Mask:
    """Select exactly k entries; ties go to the earlier (tensor name, flat index)."""
    if not params:
        raise ConfigError("No parameter is eligible for the mask: is this a transformer encoder?")
    names = sorted(params)
    sizes = [params[n].numel() for n in names]
    total = sum(sizes)
    k = settings.k or max(1, round(settings.sparsity * total))
    if k > total:
        raise ConfigError(f"mask-k={k} exceeds the {total} eligible parameters.")
    scores = [_scores(params[n], settings, i) for i, n in enumerate(names)]
    if settings.scope == "global":
        chosen = _smallest_k(torch.cat(scores), k)
        offsets = torch.tensor([0, *sizes]).cumsum(0)
        indices = {
            n: chosen[(chosen >= offsets[i]) & (chosen < offsets[i + 1])] - offsets[i]
            for i, n in enumerate(names)
        }
    else:
        budgets = _proportional_budgets(sizes, k)
        indices = {n: _smallest_k(s, b) for n, s, b in zip(names, scores, budgets)}
    shapes = {n: tuple(params[n].shape) for n in names}
    indices = {n: i.to(torch.int64) for n, i in indices.items()}
    return Mask(
        indices=indices,
        shapes=shapes,
        settings=settings,
        model_identity=model_identity,
        fingerprint=_fingerprint(indices, shapes, settings, model_identity),
    )


def _scores(param: torch.Tensor, settings: MaskSettings, position: int) -> torch.Tensor:
    """Lower score = chosen first."""
    flat = param.detach().cpu().float().reshape(-1).abs()  # the same mask on any device
    if settings.criterion == "smallest":
        return flat
    if settings.criterion == "largest":
        return -flat
    generator = torch.Generator().manual_seed(settings.seed * 100_003 + position)
    return torch.rand(flat.numel(), generator=generator)


def _smallest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the k lowest scores, ties broken by position; sorted ascending."""
    if k == 0:
        return torch.empty(0, dtype=torch.int64)
    if k >= scores.numel():
        return torch.arange(scores.numel())
    threshold = torch.kthvalue(scores, k).values
    below = torch.nonzero(scores < threshold).flatten()
    ties = torch.nonzero(scores == threshold).flatten()[: k - below.numel()]
    return torch.cat([below, ties]).sort().values


def _proportional_budgets(sizes: list[int], k: int) -> list[int]:
    """Split k over tensors by size (largest remainder, ties to the earlier name)."""
    total = sum(sizes)
    base = [k * s // total for s in sizes]
    remainders = [k * s % total for s in sizes]
    order = sorted(range(len(sizes)), key=lambda i: (-remainders[i], i))
    for i in order[: k - sum(base)]:
        base[i] += 1
    return base


def _fingerprint(
    indices: dict[str, torch.Tensor],
    shapes: dict[str, tuple[int, ...]],
    settings: MaskSettings,
    model_identity: str,
) -> str:
    digest = hashlib.sha256()
    header = {"model": model_identity, "settings": settings.describe()}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for name in sorted(indices):
        digest.update(f"{name}:{list(shapes[name])}".encode())
        digest.update(indices[name].to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()


def mask_settings(cfg: RunConfig) -> MaskSettings:
    """The run's mask settings (sparse-local ranks its salience under the same ones)."""
    return MaskSettings(
        sparsity=cfg.sparsity,
        k=cfg.mask_k,
        scope=cfg.mask_scope,
        criterion=cfg.mask_criterion,
        include=cfg.mask_include_parts,
        seed=cfg.seed,
    )


def backbone_mask(backbone: Backbone, cfg: RunConfig) -> Mask:
    """The shared mask of this backbone under the run's mask settings."""
    params = eligible_parameters(backbone.model, cfg.mask_include_parts, backbone.head_names)
    return compute_mask(params, mask_settings(cfg), backbone.identity)
