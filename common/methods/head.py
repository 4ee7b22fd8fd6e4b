"""Dense part: named parameters trained in full. The task head (the newly initialised
layers, always trained and always sent), BitFit's biases and full fine-tuning are each one."""

from __future__ import annotations

import torch
from torch import nn

from common.methods.base import Part, Stage, State


class DensePart(Part):
    """Named parameters trained in full; their values travel as they are."""

    def __init__(self, model: nn.Module, names: tuple[str, ...], prefix: str,
                 lr_group: str, stage: Stage = Stage.PRETRAINED) -> None:
        self.lr_group, self.stage = lr_group, stage
        params = dict(model.named_parameters())
        self.prefix = prefix
        self.params = {name: params[name] for name in names}
        self.initial = {name: p.detach().clone() for name, p in self.params.items()}
        for param in self.params.values():
            param.requires_grad_(True)

    def state(self) -> State:
        return {self.prefix + n: p.detach().clone() for n, p in self.params.items()}

    def reset(self) -> None:
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(self.initial[name])

    def apply(self, state: State) -> None:
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(state[self.prefix + name])

    def parameters(self) -> list[nn.Parameter]:
        return list(self.params.values())

    def merge_into(self, model: nn.Module, compact: State) -> None:
        params = dict(model.named_parameters())
        for name in self.params:
            params[name].data.copy_(compact[self.prefix + name])
