"""SHiRA part, through peft's `shira` tuner: chosen entries of pre-trained linear weights,
trained directly (a sparse, high-rank change) and merged away with peft's `merge_and_unload`.

Two masks (`shira-mask`):

- `random`, peft's own: `random_mask` draws r(m+n) entries of each targeted m x n layer
  (`shira-r`, peft's default 32) from `random_seed`, the run seed. Every client and the
  server draw the same positions, so only the values travel: one vector per layer, no
  index. (peft seeds every layer's draw with that one seed, so same-shaped layers share
  their positions.)
- `magnitude`, PaFi's shared mask: the k smallest pre-trained weights, a global budget
  across tensors, with the mask's fingerprint checked by every client. peft's mask
  function must return exactly r(m+n) entries per layer (it checks), which a global
  budget does not give, so the layers are injected without a mask and PaFi's positions
  are set as each layer's `shira_indices`, the field peft's own adapter loading fills,
  with a value vector of the same length.
"""

from __future__ import annotations

import torch
from peft import ShiraConfig
from peft.tuners.shira import ShiraLayer, ShiraModel
from torch import nn

from common.errors import ConfigError
from common.methods.base import Part, Stage, State
from common.methods.pafi import Mask

PREFIX = "shira."
ADAPTER = "default"


def random_config(rank: int, targets: str, seed: int) -> ShiraConfig:
    """peft's random mask on the named linear modules (LoRA's targets)."""
    modules = [t.strip() for t in targets.split(",") if t.strip()]
    return ShiraConfig(r=rank, target_modules=modules, random_seed=seed)


def magnitude_config(mask: Mask) -> ShiraConfig:
    """Every linear layer the PaFi mask selects entries of; the positions come from `place`."""
    modules = [name.removesuffix(".weight") for name, idx in mask.indices.items() if idx.numel()]
    config = ShiraConfig(r=1, target_modules=modules)
    config.mask_fn = None  # peft then leaves the indices to be set, as when it loads an adapter
    return config


def inject(model: nn.Module, config: ShiraConfig, mask: Mask | None) -> ShiraModel:
    """Add SHiRA values to `model` in place (zeros: the model is unchanged)."""
    try:
        tuner = ShiraModel(model, config, ADAPTER)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"SHiRA cannot target {sorted(config.target_modules)} at shira-r {config.r} on "
            f"this backbone ({exc}). Set lora-targets to linear module names and shira-r "
            "so that r x (in + out) fits in each layer."
        ) from None
    if mask is not None:
        place(model, mask)
    return tuner


def place(model: nn.Module, mask: Mask) -> None:
    """Set each SHiRA layer's positions to the mask's (row, column) and size its values."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, ShiraLayer)}
    for name, flat in mask.indices.items():
        if not flat.numel():
            continue
        layer = layers[name.removesuffix(".weight")]
        weight = layer.get_base_layer().weight
        rows, cols = flat // layer.in_features, flat % layer.in_features
        layer.shira_indices[ADAPTER] = torch.stack([rows, cols]).to(torch.int).to(weight.device)
        layer.shira_weight[ADAPTER] = nn.Parameter(weight.new_zeros(flat.numel()))


class ShiraPart(Part):
    stage = Stage.INJECTED

    def __init__(self, model: nn.Module, config: ShiraConfig, lr_group: str,
                 mask: Mask | None = None) -> None:
        """`mask`: PaFi's, for the magnitude variant (then `config` from magnitude_config)."""
        self.config, self.mask, self.lr_group = config, mask, lr_group
        inject(model, config, mask)
        self.params = _values(model)
        for param in self.params.values():
            param.requires_grad_(True)

    def state(self) -> State:
        return {PREFIX + n: p.detach().clone() for n, p in self.params.items()}

    def reset(self) -> None:
        with torch.no_grad():
            for param in self.params.values():
                param.zero_()

    def apply(self, state: State) -> None:
        _copy(self.params, state)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.params.values())

    def merge_into(self, model: nn.Module, compact: State) -> None:
        """Inject the same positions into the plain model, load the values, let peft merge."""
        tuner = inject(model, self.config, self.mask)
        _copy(_values(model), compact)
        tuner.merge_and_unload()


def _copy(params: dict[str, nn.Parameter], state: State) -> None:
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[PREFIX + name])


def _values(model: nn.Module) -> dict[str, nn.Parameter]:
    """The SHiRA value vectors peft added, by parameter name."""
    return {n: p for n, p in model.named_parameters() if "shira_weight" in n}
