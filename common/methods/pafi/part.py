"""PaFi part: train only the masked entries of the pre-trained weights.

The optimizer sees one k-vector of deltas (so its state is k values, not whole matrices).
Dense gradients of the masked weights exist only transiently: a hook gathers the k masked
entries into the delta's gradient and frees the dense one as soon as it is accumulated.
After each step the change of the deltas is written into the weights in place, so the
forward pass runs on plain weights with no extra work.
"""

from __future__ import annotations

import torch
from torch import nn

from common.methods.base import Part, Stage, State
from common.methods.pafi.mask import Mask

KEY = "pafi.delta"


class MaskedDeltaPart(Part):
    stage = Stage.PRETRAINED
    lr_group = "pafi"

    def __init__(self, model: nn.Module, mask: Mask) -> None:
        params = dict(model.named_parameters())
        self.names = list(mask.indices)
        self.weights = [params[n] for n in self.names]
        self.delta = nn.Parameter(self.weights[0].new_zeros(mask.k))
        self.select(mask)
        for position, weight in enumerate(self.weights):
            weight.requires_grad_(True)
            weight.register_post_accumulate_grad_hook(self._grad_hook(position))

    def select(self, mask: Mask) -> None:
        """Train these entries (same tensors, same k) from their current values on.

        PaFi selects once, on the pre-trained weights; sparse-local again each round."""
        if list(mask.indices) != self.names or mask.k != self.delta.numel():
            raise ValueError("a new selection must cover the same tensors with the same k")
        device = self.delta.device
        self.indices = [mask.indices[n].to(device) for n in self.names]
        self.slices = list(mask.slices().values())
        self.start = self._gather()  # what reset() restores: for PaFi, pre-trained values
        self._written = torch.zeros_like(self.start)
        with torch.no_grad():
            self.delta.zero_()

    def _gather(self) -> torch.Tensor:
        return torch.cat([w.detach().reshape(-1)[i] for w, i in zip(self.weights, self.indices)])

    def _grad_hook(self, position: int):
        """Reads the selection when it runs, so a new selection needs no new hooks."""

        def hook(weight: torch.Tensor) -> None:
            if self.delta.grad is None:
                self.delta.grad = torch.zeros_like(self.delta)
            idx, where = self.indices[position], self.slices[position]
            self.delta.grad[where] += weight.grad.reshape(-1)[idx]
            weight.grad = None

        return hook

    def state(self) -> State:
        return {KEY: self.delta.detach().clone()}

    def reset(self) -> None:
        with torch.no_grad():
            for weight, idx, where in zip(self.weights, self.indices, self.slices):
                weight.reshape(-1).index_copy_(0, idx, self.start[where])
            self.delta.zero_()
            self._written.zero_()

    def apply(self, state: State) -> None:
        with torch.no_grad():
            self.delta.copy_(state[KEY])
        self.post_step()

    def post_step(self) -> None:
        """Add the deltas' change since the last write to the weights."""
        with torch.no_grad():
            change = self.delta - self._written
            for weight, idx, where in zip(self.weights, self.indices, self.slices):
                weight.reshape(-1).index_add_(0, idx, change[where])
            self._written.copy_(self.delta)

    def parameters(self) -> list[nn.Parameter]:
        return [self.delta]

    def merge_into(self, model: nn.Module, compact: State) -> None:
        params = dict(model.named_parameters())
        delta = compact[KEY].to(self.start.device)
        for name, idx, where in zip(self.names, self.indices, self.slices):
            params[name].data.reshape(-1).index_add_(0, idx, delta[where])
