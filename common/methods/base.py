"""The one interface every method implements, as a composition of trained parts.

A part owns one slice of the model (the masked deltas, a HiWi adapter, the head, ...):
its values in a canonical layout (named flat tensors), how they load, which tensors the
optimizer trains and at which learning rate (its `lr_group`, a setting `lr-<group>`), and
how its update merges into a plain model. A method is a list of parts. Loading resets
every part to the pre-trained values first and then applies each part's state
additively, so parts that touch the same tensor (PaFi entries of a HiWi-targeted weight)
compose exactly.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

import torch
from torch import nn

from common.errors import UpdateError
from common.updates import State

if TYPE_CHECKING:  # names for annotations: at run time the methods import neither
    from common.config import RunConfig
    from common.methods.pafi import Mask
    from common.model import Backbone

Batch = dict[str, torch.Tensor]  # one tokenized batch with its labels, as the model takes it


class Stage(IntEnum):
    """When a part is built on the shared model. A method lists its parts in this order,
    and `Method` refuses any other, because what one part does to the model breaks another:

    - PRETRAINED parts (PaFi, sparse-local, BitFit, full) find pre-trained tensors by name
      and train them in place. They come first: a HiWi adapter moves the tensor it targets
      to `<module>.parametrizations.<name>.original`, and peft wraps a LoRA target as
      `<module>.base_layer`, so after those the names no longer resolve.
    - INJECTED parts (HiWi, LoRA) add modules to the model. peft's injection also freezes
      every parameter but its own factors, so no method puts a PRETRAINED part beside LoRA.
    - HEAD, the task head, comes last, so that nothing built after it freezes it.
    """

    PRETRAINED = 1
    INJECTED = 2
    HEAD = 3


class Part(ABC):
    """One trained slice of the model."""

    stage: Stage  # when it is built, relative to the method's other parts
    lr_group: str  # which learning-rate setting trains it: lr-pafi, lr-hiwi, lr-head, ...
    # 0: an update of this part is its whole layout. k > 0: the part trains its own choice
    # of k entries (sparse-local), and they travel with their indices.
    sparse_k: int = 0

    @abstractmethod
    def state(self) -> State:
        """Current values, in the layout the server keeps and averages."""

    @abstractmethod
    def reset(self) -> None:
        """Put every value this part touches back to its pre-trained value."""

    @abstractmethod
    def apply(self, state: State) -> None:
        """Bring a global state in (after all parts were reset)."""

    @abstractmethod
    def parameters(self) -> list[nn.Parameter]:
        """What the optimizer trains (and keeps state for)."""

    def prepare(self, batches: Iterable[Batch]) -> None:
        """Called after load and before local training, with the client's first batches;
        only a part that picks what it trains from local data (sparse-local) reads them."""

    def post_step(self) -> None:
        """Called after each optimizer step (PaFi writes its deltas into the weights)."""

    def penalty(self) -> torch.Tensor | None:
        """A term this part adds to the training loss (lora-ts: its sparsity pressure),
        from the forward pass just run; None for none."""
        return None

    def metrics(self) -> dict[str, float]:
        """What the part measured since the last load (lora-ts: the share of tokens gated
        on); reported in a client's reply and, for the dev set, in the round log."""
        return {}

    def compact(self) -> State:
        """The state in merge-ready form (for the update file); by default the state."""
        return self.state()

    @abstractmethod
    def merge_into(self, model: nn.Module, compact: State) -> None:
        """Add this part's compact update to a plain pre-trained model."""


@dataclass(frozen=True)
class MethodSpec:
    """A registry entry: what a method trains and sends."""

    name: str
    summary: str
    uses_mask: bool | Callable[[RunConfig], bool]  # a rule where a setting decides (shira)
    build_parts: Callable[[Backbone, RunConfig, Mask | None], list[Part]]

    def needs_mask(self, cfg: RunConfig) -> bool:
        """Whether this run builds the shared PaFi mask (and checks its fingerprint)."""
        return self.uses_mask(cfg) if callable(self.uses_mask) else self.uses_mask


class Method:
    """A method bound to one model: load a global state, train, report the update, merge."""

    def __init__(self, spec: MethodSpec, backbone: Backbone, cfg: RunConfig, mask: Mask | None):
        self.spec = spec
        self.model = backbone.model
        self.identity = backbone.identity
        self.mask = mask
        # what full fine-tuning sends: every parameter of the plain model
        self.full_values = sum(param.numel() for param in self.model.parameters())
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.parts = spec.build_parts(backbone, cfg, mask)
        _check_stages(spec.name, self.parts)
        self.part_lrs = [cfg.part_lr(part.lr_group) for part in self.parts]
        self.part_keys = [tuple(part.state()) for part in self.parts]  # each part's entries
        self.layout = {k: (tuple(v.shape), v.dtype) for k, v in self.state().items()}
        self._loaded: State = self.state()

    def state(self) -> State:
        """The global-state view of the model, always on the CPU (the server's device)."""
        out: State = {}
        for part in self.parts:
            out.update({k: v.detach().cpu() for k, v in part.state().items()})
        return out

    def load(self, state: State) -> None:
        """Make the model equal to pre-trained + this global state, ready to train."""
        self.check_layout(state, "global state")
        for part in self.parts:
            part.reset()
        for part, keys in zip(self.parts, self.part_keys):
            part.apply({k: state[k].to(self._device) for k in keys})
        self._loaded = self.state()

    def prepare(self, batches: Iterable[Batch]) -> None:
        """Let the parts look at local data before training (a lazy iterable: nothing is
        tokenized unless a part reads it, and at most one part may)."""
        for part in self.parts:
            part.prepare(batches)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for part in self.parts for p in part.parameters()]

    def param_groups(self) -> list[dict]:
        """One optimizer group per part, at that part's learning rate."""
        return [{"params": part.parameters(), "lr": lr}
                for part, lr in zip(self.parts, self.part_lrs)]

    def lr_by_key(self) -> dict[str, float]:
        """The learning rate of the part each layout entry belongs to."""
        return {key: lr for keys, lr in zip(self.part_keys, self.part_lrs) for key in keys}

    def post_step(self) -> None:
        for part in self.parts:
            part.post_step()

    def penalty(self) -> torch.Tensor | None:
        """The parts' loss terms for the forward pass just run, summed (None: no part adds one)."""
        terms = [t for part in self.parts if (t := part.penalty()) is not None]
        return sum(terms) if terms else None

    def metrics(self) -> dict[str, float]:
        return {k: v for part in self.parts for k, v in part.metrics().items()}

    def update(self) -> State:
        """Local change since the last load, in the same layout as the state."""
        return {k: v - self._loaded[k] for k, v in self.state().items()}

    def compact(self) -> State:
        out: State = {}
        for part in self.parts:
            out.update({k: v.detach().cpu() for k, v in part.compact().items()})
        return out

    def merge_into(self, model: nn.Module, compact: State) -> nn.Module:
        """Fold a compact update into a plain pre-trained model (same architecture)."""
        with torch.no_grad():
            for part in self.parts:
                part.merge_into(model, compact)
        return model

    def check_layout(self, state: State, what: str) -> None:
        """Refuse anything whose keys, shapes or dtypes differ from this method's layout."""
        missing = sorted(set(self.layout) - set(state))
        extra = sorted(set(state) - set(self.layout))
        if missing or extra:
            raise UpdateError(
                f"{what} does not fit method '{self.spec.name}': missing {missing}, "
                f"unexpected {extra}."
            )
        for key, (shape, dtype) in self.layout.items():
            value = state[key]
            if tuple(value.shape) != shape or value.dtype != dtype:
                raise UpdateError(
                    f"{what} entry '{key}' has shape {tuple(value.shape)} and dtype "
                    f"{value.dtype}; method '{self.spec.name}' expects {shape} {dtype}."
                )

    def num_values(self) -> int:
        """Values in one update: the floor of what a client must send (k for a sparse part)."""
        return sum(part.sparse_k or sum(math.prod(self.layout[key][0]) for key in keys)
                   for part, keys in zip(self.parts, self.part_keys))

    def num_indices(self) -> int:
        """Indices one update needs at the least: one per value a sparse part chose."""
        return sum(part.sparse_k for part in self.parts)

    @property
    def sparse_wire(self) -> bool:
        """Updates and states travel as non-zero values plus indices (`common.updates`)."""
        return self.num_indices() > 0

    def union_values(self, state: State) -> int:
        """Entries of the sparse parts that some client has changed: non-zero in `state`."""
        return sum(int(torch.count_nonzero(state[key]))
                   for part, keys in zip(self.parts, self.part_keys) if part.sparse_k
                   for key in keys)

    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device


def _check_stages(method: str, parts: list[Part]) -> None:
    """Refuse parts listed out of `Stage` order (they were built in that order)."""
    for before, after in zip(parts, parts[1:]):
        if after.stage < before.stage:
            raise ValueError(
                f"method '{method}' builds {type(after).__name__} ({after.stage.name}) after "
                f"{type(before).__name__} ({before.stage.name}); list its parts in Stage "
                f"order: {', '.join(stage.name for stage in Stage)} (see Stage for why)."
            )
