"""The method registry: adding a method is one unit of parts plus one entry here.

A unit is a module or folder of `common/methods` that holds every part of one method
(`pafi/`: the mask and its part; `hiwi/`: the adapter and its part; `lora.py`, ...). An
entry lists a method's parts in `Stage` order (`base.py` says why the order matters);
building a method refuses any other order. The units built on `peft` (LoRA, TS-PEFT,
SHiRA) are imported when one of their methods is built: importing peft takes about 2 s,
which every Ray worker and server would pay for methods that never use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from common.errors import ConfigError
from common.methods.base import Method, MethodSpec, Part, Stage
from common.methods.head import DensePart
from common.methods.hiwi import HiWiPart
from common.methods.pafi import (
    Mask,
    MaskedDeltaPart,
    backbone_mask,
    eligible_parameters,
    mask_settings,
)
from common.methods.sparse_local import SparseLocalPart

if TYPE_CHECKING:
    from common.config import RunConfig
    from common.model import Backbone


def _head(backbone: Backbone) -> Part:
    return DensePart(backbone.model, backbone.head_names, prefix="head.", lr_group="head",
                     stage=Stage.HEAD)


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
    from common.methods.lora import LoRAPart, lora_config

    config = lora_config(cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
    return [LoRAPart(backbone.model, config, cfg.seed), _head(backbone)]


def _lora_ts(backbone: Backbone, cfg: RunConfig, mask: Mask | None) -> list[Part]:
    from common.methods.lora import lora_config
    from common.methods.lora_ts import GatedLoRAPart

    config = lora_config(cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
    return [GatedLoRAPart(backbone.model, config, cfg.seed, cfg.lora_ts_penalty),
            _head(backbone)]


def _shira(backbone: Backbone, cfg: RunConfig, mask: Mask | None) -> list[Part]:
    from common.methods.shira import ShiraPart, magnitude_config, random_config

    if mask is None:  # peft's random mask on LoRA's targets, at its own rate
        part = ShiraPart(backbone.model, random_config(cfg.shira_r, cfg.lora_targets, cfg.seed),
                         "shira")
    else:  # PaFi's entries, so PaFi's rate
        part = ShiraPart(backbone.model, magnitude_config(mask), "pafi", mask)
    return [part, _head(backbone)]


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
        MethodSpec("lora-ts", "LoRA factors with a learned per-token gate (TS-PEFT) + head; "
                   "cannot merge", False, _lora_ts),
        MethodSpec("pafi", "masked deltas + head", True, _pafi),
        MethodSpec("hiwi", "HiWi adapter + head", False, _hiwi_only),
        MethodSpec("pafi-hiwi", "masked deltas + HiWi + head", True, _pafi_hiwi),
        MethodSpec("shira", "SHiRA sparse weight entries (peft), random or PaFi's mask + head",
                   lambda cfg: cfg.shira_mask == "magnitude", _shira),
        MethodSpec("sparse-local", "each client's own top-k by gradient salience + head, "
                   "values + indices", False, _sparse_local),
    )
}


def build_method(backbone: Backbone, cfg: RunConfig) -> Method:
    """Bind the configured method to a freshly loaded backbone."""
    if cfg.method not in METHODS:
        raise ConfigError(f"Unknown method '{cfg.method}'. Allowed: {', '.join(METHODS)}.")
    spec = METHODS[cfg.method]
    mask = backbone_mask(backbone, cfg) if spec.needs_mask(cfg) else None
    return Method(spec, backbone, cfg, mask)
