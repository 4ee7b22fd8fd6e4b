"""PaFi part: train only the masked entries of the pre-trained weights.

The optimizer sees one k-vector of deltas (so its state is k values, not whole matrices).
A masked Linear weight on the CPU gets its gradient at the k entries only (`sampled.py`):
the weight stays frozen in the forward and a node after the layer computes the k dot
products. Elsewhere (other devices, biases and LayerNorms, a weight HiWi parametrizes, a
matrix denser than `MAX_DENSITY`) the weight requires grad, autograd forms its dense
gradient, and a hook gathers the k entries into the delta's gradient and frees the dense
one at once. After each step the change of the deltas is written into the weights in
place, so the forward pass runs on plain weights with no extra work.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize

from common.methods.base import Part, Stage, State
from common.methods.pafi.mask import Mask
from common.methods.pafi.sampled import MAX_DENSITY, Entries, KEntryGrad

KEY = "pafi.delta"


class MaskedDeltaPart(Part):
    stage = Stage.PRETRAINED
    lr_group = "pafi"

    def __init__(self, model: nn.Module, mask: Mask) -> None:
        params = dict(model.named_parameters())
        self.names = list(mask.indices)
        self.weights = [params[n] for n in self.names]
        self.delta = nn.Parameter(self.weights[0].new_zeros(mask.k))
        self.dense = False  # True: every masked weight takes the dense path (dense_gradients)
        # the Linear that owns each weight, None where the weight is not a Linear's weight
        self.linears = [_linear_of(model, n) for n in self.names]
        self.select(mask)
        for position, weight in enumerate(self.weights):
            weight.requires_grad_(True)
            weight.register_post_accumulate_grad_hook(self._grad_hook(position))
            if self.linears[position] is not None:
                self.linears[position].register_forward_pre_hook(self._pre_hook(position))
                self.linears[position].register_forward_hook(self._sampled_hook(position))

    def select(self, mask: Mask) -> None:
        """Train these entries (same tensors, same k) from their current values on.

        PaFi selects once, on the pre-trained weights; sparse-local again each round."""
        if list(mask.indices) != self.names or mask.k != self.delta.numel():
            raise ValueError("a new selection must cover the same tensors with the same k")
        device = self.delta.device
        self.indices = [mask.indices[n].to(device) for n in self.names]
        self.slices = list(mask.slices().values())
        self.entries = [
            Entries(mask.shapes[n], i)
            if linear is not None and i.numel() <= MAX_DENSITY * linear.weight.numel() else None
            for n, i, linear in zip(self.names, self.indices, self.linears)
        ]
        self.start = self._gather()  # what reset() restores: for PaFi, pre-trained values
        self._written = torch.zeros_like(self.start)
        with torch.no_grad():
            self.delta.zero_()

    def _gather(self) -> torch.Tensor:
        return torch.cat([w.detach().reshape(-1)[i] for w, i in zip(self.weights, self.indices)])

    @contextmanager
    def dense_gradients(self) -> Iterator[None]:
        """Every masked weight in the graph with its dense gradient (sparse-local's
        salience differentiates the loss with respect to the weights themselves)."""
        self.dense = True
        try:
            yield
        finally:
            self.dense = False

    def _sampled(self, position: int, module: nn.Module, args: tuple) -> bool:
        """Whether this forward of a masked Linear takes the k-entry gradient path (its
        input passed by position, as transformers does)."""
        return (self.entries[position] is not None and not self.dense
                and torch.is_grad_enabled() and bool(args) and args[0].device.type == "cpu"
                and not parametrize.is_parametrized(module, "weight"))

    def _pre_hook(self, position: int):
        """Freeze the weight for this forward where the k-entry node will give its gradient."""

        def hook(module: nn.Module, args: tuple) -> None:
            sampled = self._sampled(position, module, args)
            self.weights[position].requires_grad_(not sampled)

        return hook

    def _sampled_hook(self, position: int):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor):
            if self._sampled(position, module, args):
                return KEntryGrad.apply(output, args[0], self.delta, self.entries[position],
                                        lambda values: self._accumulate(position, values))
            return None

        return hook

    def _grad_hook(self, position: int):
        """Reads the selection when it runs, so a new selection needs no new hooks."""

        def hook(weight: torch.Tensor) -> None:
            self._accumulate(position, weight.grad.reshape(-1)[self.indices[position]])
            weight.grad = None

        return hook

    def _accumulate(self, position: int, values: torch.Tensor) -> None:
        """Add one weight's k-entry gradient into its slice of the delta's gradient."""
        if self.delta.grad is None:
            self.delta.grad = torch.zeros_like(self.delta)
        self.delta.grad[self.slices[position]] += values

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


def _linear_of(model: nn.Module, name: str) -> nn.Linear | None:
    """The nn.Linear whose `weight` this parameter is, else None."""
    owner, _, attribute = name.rpartition(".")
    module = model.get_submodule(owner)
    return module if type(module) is nn.Linear and attribute == "weight" else None
