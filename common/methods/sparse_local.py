"""sparse-local: every client trains its own top-k entries, chosen by gradient salience.

The contrast to PaFi's shared mask. Each round, right after loading the global state, a
client sums |dL/dW| over its first `salience-batches` local batches (in eval mode, so the
choice depends on data and model only) and keeps the k eligible entries with the largest
sum, as the salience-based sparse fine-tuning of FISH and SPEFT does. k and the eligible
weights are PaFi's under the same settings (sparsity or mask-k, mask-scope, mask-include),
so the two compare at equal k per client. The k entries train with PaFi's machinery (one
k-vector, gathered gradients) at a rate of their own, `lr-sparse` (1e-3): the most salient
entries are not PaFi's smallest ones, and at PaFi's 1e-2 they wreck the model (centrally,
200 steps: 0.530 on SST-2 dev against 0.776 at 1e-3 and 0.779 at 1e-4; sweep stage
`sparse-local`).

The layout is one dense delta over every eligible entry, zero where no client changed
anything, so the server's mean, its optimizers and `load` work as for any method. A
client's update is non-zero on its k entries only and travels as values plus int32
indices (`common.updates`, sparse wire). The mean is zero-filled on the union of the
client masks: a client that did not choose an entry adds a change of 0 to it, the rule of
top-k sparsified FedAvg. The global state goes down the same way, so the download carries
the union, which grows round by round.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable

import torch
from torch import nn

from common.methods.base import Batch, State
from common.methods.pafi import Mask, MaskedDeltaPart, MaskSettings, compute_mask

KEY = "sparse-local.delta"
# the compact update (export): the global delta's non-zero entries and their flat positions
VALUES, POSITIONS = "sparse-local.values", "sparse-local.positions"


class SparseLocalPart(MaskedDeltaPart):
    lr_group = "sparse"

    def __init__(self, model: nn.Module, params: dict[str, nn.Parameter],
                 settings: MaskSettings, identity: str) -> None:
        """`params`: the eligible weights, sorted by name; `settings`: the run's mask
        settings (their criterion is replaced: the largest salience is chosen)."""
        self.model = model
        self.settings = dataclasses.replace(settings, criterion="largest")
        self.identity = identity
        self.sizes = [p.numel() for p in params.values()]
        self.offsets = list(itertools.accumulate(self.sizes, initial=0))[:-1]
        # Until a client has measured its salience every entry scores 0: a placeholder
        # selection that fixes k; training on it is refused (post_step).
        super().__init__(model, self._top_k({n: torch.zeros_like(p) for n, p in params.items()}))
        self.selected = False
        self.sparse_k = self.delta.numel()
        self.pretrained = [w.detach().clone() for w in self.weights]
        self.global_delta = self.weights[0].new_zeros(sum(self.sizes))

    def _top_k(self, salience: dict[str, torch.Tensor]) -> Mask:
        """The k largest scores, ties to the earlier (name, flat index): PaFi's selection
        with salience in place of weight magnitude."""
        return compute_mask(salience, self.settings, self.identity)

    def select(self, mask: Mask) -> None:
        super().select(mask)
        self.positions = torch.cat([i + o for i, o in zip(self.indices, self.offsets)])

    def prepare(self, batches: Iterable[Batch]) -> None:
        """Choose this round's k entries: the largest |gradient| summed over `batches`.

        The weights stay as they are and no gradient is left behind (autograd.grad fills
        no .grad and fires no hook)."""
        if self.selected:
            raise RuntimeError("sparse-local selects once per round, right after load.")
        salience = [torch.zeros_like(w) for w in self.weights]
        training = self.model.training
        self.model.eval()  # no dropout: the choice depends on data and model only
        try:
            with torch.enable_grad(), self.dense_gradients():
                for batch in batches:
                    grads = torch.autograd.grad(self.model(**batch).loss, self.weights)
                    for total, grad in zip(salience, grads):
                        total.add_(grad.abs())
        finally:
            self.model.train(training)
        self.select(self._top_k(dict(zip(self.names, salience))))
        self.selected = True

    def state(self) -> State:
        """The global delta plus this client's change on its k entries."""
        return {KEY: self.global_delta.index_add(0, self.positions, self.delta.detach())}

    def reset(self) -> None:
        with torch.no_grad():
            for weight, pretrained in zip(self.weights, self.pretrained):
                weight.copy_(pretrained)
            self.global_delta.zero_()
            self.delta.zero_()
            self._written.zero_()
        self.selected = False

    def apply(self, state: State) -> None:
        with torch.no_grad():
            self.global_delta.copy_(state[KEY])
            for weight, begin, size in zip(self.weights, self.offsets, self.sizes):
                weight.reshape(-1).add_(self.global_delta[begin:begin + size])

    def post_step(self) -> None:
        if not self.selected:
            raise RuntimeError("sparse-local trains the entries it picks from local data: "
                               "call Method.prepare(batches) after load, before training "
                               "(train_locally does).")
        super().post_step()

    def compact(self) -> State:
        """Only the non-zero entries of the delta, with their flat positions."""
        delta = self.state()[KEY]
        positions = torch.nonzero(delta).flatten()
        return {POSITIONS: positions, VALUES: delta[positions]}

    def merge_into(self, model: nn.Module, compact: State) -> None:
        params = dict(model.named_parameters())
        positions, values = compact[POSITIONS], compact[VALUES]
        for name, begin, size in zip(self.names, self.offsets, self.sizes):
            lo, hi = torch.searchsorted(positions, torch.tensor([begin, begin + size])).tolist()
            weight = params[name].data.reshape(-1)
            weight.index_add_(0, (positions[lo:hi] - begin).to(weight.device),
                              values[lo:hi].to(weight))
