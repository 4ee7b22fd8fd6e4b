"""The method registry: adding a method is one module of parts plus one entry here."""

from __future__ import annotations

from common.config import RunConfig
from common.errors import ConfigError
from common.mask import Mask, MaskSettings, compute_mask, eligible_parameters
from common.methods.base import Method, MethodSpec, Part
from common.methods.head import DensePart
from common.methods.hiwi import HiWiPart
from common.methods.lora import LoRAPart, lora_config
from common.methods.pafi import MaskedDeltaPart
from common.methods.sparse_local import SparseLocalPart
from common.model import Backbone


def _head(backbone: Backbone) -> Part:
    return DensePart(backbone.model, backbone.head_names, prefix="head.", lr_group="head")


def _hiwi(backbone: Backbone, cfg: RunConfig) -> Part:
    return HiWiPart(backbone.model, cfg.hiwi_target, cfg.hiwi_rank, cfg.hiwi_sync, cfg.seed)


def _full(backbone: Backbone, cfg: RunConfig, mask: Mask | None) -> list[Part]:
    names = tuple(n for n, _ in backbone.model.named_parameters())
    return [DensePart(backbone.model, names, prefix="full.", lr_group="full")]


def _bitfit(backbone: Backbone, cfg: RunConfig, mask: Mask | None) -> list[Part]:
    biases = tuple(n for n, _ in backbone.model.named_parameters()
                   if n.endswith(".bias") and n not in backbone.head_names)
    return [DensePart(backbone.model, biases, prefix="bitfit.", lr_group="bitfit"), _head(backbone)]


def _lora(backbone: Backbone, cfg: RunConfig, mask: Mask | None) -> list[Part]:
    config = lora_config(cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
    return [LoRAPart(backbone.model, config, cfg.seed), _head(backbone)]


def _pafi(backbone: Backbone, cfg: RunConfig, mask: Mask | None) -> list[Part]:
    return [MaskedDeltaPart(backbone.model, mask), _head(backbone)]


def _hiwi_only(backbone: Backbone, cfg: RunConfig, mask: Mask | None) -> list[Part]:
    return [_hiwi(backbone, cfg), _head(backbone)]


def _pafi_hiwi(backbone: Backbone, cfg: RunConfig, mask: Mask | None) -> list[Part]:
    return [MaskedDeltaPart(backbone.model, mask), _hiwi(backbone, cfg), _head(backbone)]


def _sparse_local(backbone: Backbone, cfg: RunConfig, mask: Mask | None) -> list[Part]:
    params = eligible_parameters(backbone.model, cfg.mask_include_parts, backbone.head_names)
    part = SparseLocalPart(backbone.model, params, mask_settings(cfg), backbone.identity)
    return [part, _head(backbone)]


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("full", "all weights, dense", False, _full),
        MethodSpec("bitfit", "every bias + head", False, _bitfit),
        MethodSpec("lora", "LoRA factors (peft) + head", False, _lora),
        MethodSpec("pafi", "masked deltas + head", True, _pafi),
        MethodSpec("hiwi", "HiWi adapter + head", False, _hiwi_only),
        MethodSpec("pafi-hiwi", "masked deltas + HiWi + head", True, _pafi_hiwi),
        MethodSpec("sparse-local", "each client's own top-k by gradient salience + head, "
                   "values + indices", False, _sparse_local),
    )
}


def mask_settings(cfg: RunConfig) -> MaskSettings:
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


def build_method(backbone: Backbone, cfg: RunConfig) -> Method:
    """Bind the configured method to a freshly loaded backbone."""
    if cfg.method not in METHODS:
        raise ConfigError(f"Unknown method '{cfg.method}'. Allowed: {', '.join(METHODS)}.")
    spec = METHODS[cfg.method]
    mask = backbone_mask(backbone, cfg) if spec.uses_mask else None
    return Method(spec, backbone, cfg, mask)
