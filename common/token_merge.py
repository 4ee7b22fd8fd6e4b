"""`token-merge R`: FPET-style token merging in the middle encoder layers, during training.

In each merging layer, between self-attention and the feed-forward block (where ToMe,
Bolya et al. 2023, merges), the R most similar token pairs become one token each, so the
feed-forward block and every later layer run on R fewer tokens per merging layer:
- bipartite soft matching on the layer's attention keys (averaged over heads): tokens go
  alternately to sets A (even positions) and B (odd), each A token finds its B token of
  highest cosine similarity, and the R A tokens with the best matches are folded into them
  by a size-weighted mean; sizes (tokens merged into each) are kept, and attention adds
  log(size) to each key's logits (ToMe's proportional attention);
- [CLS] (A's first token) is never merged away and stays first, so the pooler still reads
  it; padding is never merged with a real token: a row first gives up padding (A padding
  into B padding), then real pairs, so short sentences in a padded batch lose nothing
  until the padding is spent. R is capped where a row has fewer candidates (at most half
  the tokens, as in ToMe);
- straight-through, as in FPET (Kim et al. 2025): the choice of each merged A token's
  partner is a one-hot row in the forward pass; in the backward pass it has the gradient
  of softmax(cosine similarities / TEMPERATURE) over that row, so the loss also trains
  the keys that decide the matching. Which A tokens merge (the top R) has no gradient.

Middle layers: 0-based indices from L // 6 up to, not including, L - ceil(L / 3): layers
1, 2 and 3 of all-MiniLM-L6-v2's 6, layer 0 of the tiny test BERT's 2 (`merging_layers`).

Hooks around transformers' own `BertLayer`s do it (no copy of its code): the attention
mask BertModel builds once (bool for sdpa, additive for eager, None without padding) is
replaced, from the first merge on, by an additive mask of the merged tokens. The hooks
live only inside `merging(...)`: export and evaluation see the plain model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import ModelError

TEMPERATURE = 0.1  # softmax width over cosine similarities in [-1, 1]: the backward's
PAD_SCORE = 2.0  # padding with padding: above any cosine, so padding goes first


def merging_layers(num_layers: int) -> range:
    """The middle layers: skip the first sixth, stop before the last third."""
    return range(num_layers // 6, num_layers - math.ceil(num_layers / 3))


def bipartite_merge(x: torch.Tensor, keys: torch.Tensor, size: torch.Tensor,
                    valid: torch.Tensor, r: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge up to `r` token pairs of each row of `x` (batch, tokens, features).

    `keys` (batch, tokens, d) give the similarity, `size` (batch, tokens, 1) the tokens
    each one stands for, `valid` (batch, tokens) False for padding. Returns the merged
    tokens, their sizes and validity: kept A tokens in their order, then all B tokens."""
    metric = F.normalize(keys, dim=-1)
    scores = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)  # (batch, |A|, |B|)
    valid_a, valid_b = valid[:, ::2, None], valid[:, None, 1::2]
    never = torch.tensor(-math.inf, dtype=scores.dtype, device=scores.device)
    scores = torch.where(valid_a & valid_b, scores,
                         torch.where(~valid_a & ~valid_b, PAD_SCORE, never))
    scores[:, 0] = never  # [CLS] stays
    best, partner = scores.detach().max(dim=-1)
    r = min(r, int(best.isfinite().sum(dim=-1).min()))
    if r <= 0:
        return x, size, valid
    order = best.argsort(dim=-1, descending=True)
    src, keep = order[:, :r], order[:, r:].sort(dim=-1).values
    rows = scores.gather(1, src[..., None].expand(-1, -1, scores.shape[-1]))
    soft = torch.softmax(rows / TEMPERATURE, dim=-1)
    hard = F.one_hot(partner.gather(1, src), scores.shape[-1]).to(soft.dtype)
    choice = hard + (soft - soft.detach())  # forward: exactly one-hot; backward: softmax's

    def pick(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return t.gather(1, index[..., None].expand(-1, -1, t.shape[-1]))

    weighted = x * size
    a, b, size_a, size_b = weighted[:, ::2], weighted[:, 1::2], size[:, ::2], size[:, 1::2]
    b = b + choice.transpose(1, 2) @ pick(a, src)
    size_b = size_b + choice.transpose(1, 2) @ pick(size_a, src)
    size = torch.cat([pick(size_a, keep), size_b], dim=1)
    merged = torch.cat([pick(a, keep), b], dim=1) / size
    valid = torch.cat([valid[:, ::2].gather(1, keep), valid[:, 1::2]], dim=1)
    return merged, size, valid


@dataclass
class _Forward:
    """What one forward pass carries between the hooks of successive layers."""

    size: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    mask: torch.Tensor | None = None  # the merged tokens' additive mask, once merged
    keys: torch.Tensor | None = None  # the current merging layer's key projection


def _valid_from(mask: torch.Tensor | None, hidden: torch.Tensor) -> torch.Tensor:
    """Key padding of the mask BertModel hands its layers: (batch, 1, query, key) bool
    (sdpa) or additive (eager), or None without padding."""
    if mask is None:
        return torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
    row = mask[:, 0, 0, :]
    return row if row.dtype == torch.bool else row > torch.finfo(row.dtype).min / 2


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The encoder's layer list (BERT and RoBERTa: `encoder.layer`), peft-wrapped or not."""
    for name, module in model.named_modules():
        if name.endswith("encoder.layer") and isinstance(module, nn.ModuleList):
            if all(hasattr(layer, "attention") and hasattr(layer.attention, "self")
                   for layer in module):
                return module
    raise ModelError("token-merge needs a BERT-style encoder (encoder.layer[i].attention."
                     "self.key), and this model has none; use --token-merge 0.")


@contextmanager
def merging(model: nn.Module, r: int) -> Iterator[None]:
    """Merge `r` token pairs in each middle layer of `model` while inside; 0: no hooks."""
    if r <= 0:
        yield
        return
    handles = install(model, r)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def install(model: nn.Module, r: int) -> list[torch.utils.hooks.RemovableHandle]:
    """Register the hooks; `merging` removes them again (benchmarks keep them)."""
    layers = encoder_layers(model)
    implementation = model.config._attn_implementation
    if implementation not in ("eager", "sdpa"):
        raise ModelError(f"token-merge passes an additive attention mask, which attention "
                         f"'{implementation}' does not take; load the model with sdpa or eager.")
    chosen = merging_layers(len(layers))
    if not chosen:
        raise ModelError(f"token-merge needs an encoder of at least 2 layers (it merges in the "
                         f"middle ones), this one has {len(layers)}; use --token-merge 0.")
    state = _Forward()
    heads = layers[0].attention.self.num_attention_heads

    def start(module: nn.Module, args: tuple) -> None:
        state.size = state.valid = state.mask = state.keys = None

    def use_merged_mask(module: nn.Module, args: tuple, kwargs: dict):
        if state.valid is None:  # before the first merge: the model's own mask
            state.valid = _valid_from(kwargs.get("attention_mask", args[1]), args[0])
            state.size = torch.ones((*args[0].shape[:2], 1), dtype=args[0].dtype,
                                    device=args[0].device)
        if state.mask is None:
            return None
        if "attention_mask" in kwargs:
            return args, {**kwargs, "attention_mask": state.mask}
        return (args[0], state.mask, *args[2:]), kwargs

    def remember_keys(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        state.keys = output.unflatten(-1, (heads, -1)).mean(dim=-2)

    def merge(module: nn.Module, args: tuple, output: tuple) -> tuple:
        hidden, state.size, state.valid = bipartite_merge(
            output[0], state.keys, state.size, state.valid, r)
        low = torch.finfo(hidden.dtype).min
        state.mask = torch.where(state.valid, state.size[..., 0].log(), low)[:, None, None, :]
        state.keys = None
        return (hidden, *output[1:])

    parent = next(m for m in model.modules() if any(c is layers for c in m.children()))
    handles = [parent.register_forward_pre_hook(start)]
    for index in range(chosen.start, len(layers)):
        layer = layers[index]
        handles.append(layer.register_forward_pre_hook(use_merged_mask, with_kwargs=True))
        if index in chosen:
            handles.append(layer.attention.self.key.register_forward_hook(remember_keys))
            handles.append(layer.attention.register_forward_hook(merge))
    return handles
