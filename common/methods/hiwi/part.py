"""HiWi part: the weight-space adapter on each FFN input projection.

Two ways to federate it. `merged` sends P' - P (one vector per target, linear, averaged
exactly) and restarts the adapter from its zero-output init every round; the global state
is the accumulated change, held in the stored parameter, and the adapter's change is added
after it (its input stays P0). `adapter` sends the adapter parameters and averages them.
"""

from __future__ import annotations

import torch
from torch import nn

from common.methods.base import Part, Stage, State
from common.methods.hiwi import adapter as hiwi

CHANGE_KEY = "hiwi.change"
ADAPTER_KEY = "hiwi.adapter"


class HiWiPart(Part):
    stage = Stage.INJECTED
    lr_group = "hiwi"

    def __init__(self, model: nn.Module, target: str, rank: int, sync: str, seed: int) -> None:
        self.modules = hiwi.ffn_input_modules(model)
        self.target = target
        self.sync = sync
        self.pretrained = {n: getattr(m, target).detach().clone() for n, m in self.modules.items()}
        self.adapters = hiwi.attach(self.modules, target, rank, seed)
        self.adapter_init = self._adapter_vector().clone()
        self._change = torch.zeros_like(self._adapter_change())

    def _adapter_params(self) -> list[nn.Parameter]:
        return [p for adapter in self.adapters.values() for p in adapter.parameters()]

    def _adapter_vector(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self._adapter_params()])

    def _adapter_change(self) -> torch.Tensor:
        """P' - P for every target, concatenated in module-name order."""
        with torch.no_grad():
            return torch.cat([a.change().reshape(-1) for a in self.adapters.values()])

    def state(self) -> State:
        if self.sync == "adapter":
            return {ADAPTER_KEY: self._adapter_vector().clone()}
        return self.compact()

    def compact(self) -> State:
        """Always the merged form: the update file rebuilds a plain model from it."""
        return {CHANGE_KEY: self._change + self._adapter_change()}

    def reset(self) -> None:
        with torch.no_grad():
            for name, module in self.modules.items():
                hiwi.original(module, self.target).copy_(self.pretrained[name])
            self._load_adapters(self.adapter_init)
            self._change.zero_()

    def apply(self, state: State) -> None:
        if self.sync == "adapter":
            self._load_adapters(state[ADAPTER_KEY])
            return
        self._change.copy_(state[CHANGE_KEY])
        originals = [hiwi.original(m, self.target) for m in self.modules.values()]
        self._add_change(state[CHANGE_KEY], originals)

    def _load_adapters(self, vector: torch.Tensor) -> None:
        with torch.no_grad():
            start = 0
            for param in self._adapter_params():
                param.copy_(vector[start : start + param.numel()].view_as(param))
                start += param.numel()

    @staticmethod
    def _add_change(change: torch.Tensor, tensors: list[torch.Tensor]) -> None:
        with torch.no_grad():
            start = 0
            for tensor in tensors:
                tensor.add_(change[start : start + tensor.numel()].view_as(tensor))
                start += tensor.numel()

    def parameters(self) -> list[nn.Parameter]:
        return self._adapter_params()

    def merge_into(self, model: nn.Module, compact: State) -> None:
        modules = dict(model.named_modules())
        tensors = [getattr(modules[name], self.target) for name in self.modules]
        self._add_change(compact[CHANGE_KEY].to(tensors[0].device), tensors)
