"""LoRA part, through the `peft` library: low-rank factors on chosen linear layers.

peft injects the factors into the model in place, so the method's model stays the one
the other parts see. The factors travel as they are (each client's A and B), and the
export merges them with peft's own `merge_and_unload` into plain linear weights.
"""

from __future__ import annotations

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraModel
from torch import nn

from common.errors import ConfigError
from common.methods.base import Part, Stage, State

PREFIX = "lora."
ADAPTER = "default"


def lora_config(rank: int, alpha: float, targets: str) -> LoraConfig:
    modules = [t.strip() for t in targets.split(",") if t.strip()]
    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=modules, lora_dropout=0.0)


def inject(model: nn.Module, config: LoraConfig, seed: int) -> LoraModel:
    """Add LoRA factors to `model` in place, with a seeded init of A (B starts at zero)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return LoraModel(model, config, ADAPTER)
        except ValueError as exc:
            raise ConfigError(
                f"LoRA cannot target {sorted(config.target_modules)} on this backbone "
                f"({exc}). Set lora-targets to linear module names, e.g. 'query,value'."
            ) from None


class LoRAPart(Part):
    stage = Stage.INJECTED
    lr_group = "lora"

    def __init__(self, model: nn.Module, config: LoraConfig, seed: int) -> None:
        self.config, self.seed = config, seed
        inject(model, config, seed)
        self.params = _factors(model)
        self.initial = {n: p.detach().clone() for n, p in self.params.items()}
        for param in self.params.values():
            param.requires_grad_(True)

    def state(self) -> State:
        return {PREFIX + n: p.detach().clone() for n, p in self.params.items()}

    def reset(self) -> None:
        self._copy(self.params, self.initial)

    def apply(self, state: State) -> None:
        self._copy(self.params, {n: state[PREFIX + n] for n in self.params})

    @staticmethod
    def _copy(params: dict[str, nn.Parameter], values: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(values[name])

    def parameters(self) -> list[nn.Parameter]:
        return list(self.params.values())

    def merge_into(self, model: nn.Module, compact: State) -> None:
        """Inject the same factors into the plain model, load them, and let peft merge."""
        tuner = inject(model, self.config, self.seed)
        params = _factors(model)
        self._copy(params, {n: compact[PREFIX + n].to(p.device) for n, p in params.items()})
        tuner.merge_and_unload()


def _factors(model: nn.Module) -> dict[str, nn.Parameter]:
    """The LoRA A and B matrices peft added, by parameter name."""
    return {n: p for n, p in model.named_parameters() if "lora_" in n}
