"""lora-ts: TS-PEFT's token-selective gate on LoRA (peft's factors, as `lora`).

Each LoRA layer gets one learnable threshold tau. For token i the layer outputs
W0 x_i + g_i M(x_i), with M LoRA's change and g_i = 1 if |M(x_i)| / |W0 x_i| >= tau, else 0
(L2 norms over the features; W0 x_i is the frozen layer's output, bias included). The
gate is hard in every forward pass; in training its gradient is a straight-through
estimate, the gradient of sigmoid((r_i - tau) / TEMPERATURE). The task loss alone tends
to open the gate (LoRA's change helps on most tokens), so `lora-ts-penalty` lambda adds
lambda x the mean of that sigmoid over the real tokens of every gated layer (the share
of tokens gated on, relaxed) to the loss, as TS-PEFT controls its sparsity; 0 turns it
off. tau starts at 0: every ratio is >= 0, so training starts as plain LoRA, and at
tau = -inf the gate is plain LoRA exactly.

The gate depends on the token, so it cannot be folded into the weights: export refuses,
and the model keeps the adapter at inference (extra latency, unlike PaFi and HiWi).
The thresholds travel with the factors; the share of tokens gated on is reported as a
metric (`gate-on`: in a client's reply over its training tokens, in the round log over the
dev tokens with the global model).
"""

from __future__ import annotations

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from torch import nn

from common.errors import MergeError
from common.methods.base import State
from common.methods.lora import ADAPTER, LoRAPart

PREFIX = "lora-ts.threshold."
TEMPERATURE = 0.05  # width of the sigmoid whose gradient stands in for the hard gate's
METRIC = "gate-on"


class GatedLoRAPart(LoRAPart):
    def __init__(self, model: nn.Module, config: LoraConfig, seed: int,
                 penalty_weight: float = 0.0) -> None:
        super().__init__(model, config, seed)
        self.penalty_weight = penalty_weight
        self._soft: list[torch.Tensor] = []  # per gated layer: the relaxed share gated on
        layers = {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}
        device = next(iter(self.params.values())).device
        self.thresholds = {n: nn.Parameter(torch.zeros(1, device=device)) for n in layers}
        self._base: dict[str, torch.Tensor] = {}
        self._tokens: torch.Tensor | None = None  # the batch's attention mask
        self._on = torch.zeros((), device=device)
        self._seen = torch.zeros((), device=device)
        model.register_forward_pre_hook(self._remember_tokens, with_kwargs=True)
        for name, layer in layers.items():
            layer.base_layer.register_forward_hook(self._remember_base(name))
            layer.lora_B[ADAPTER].register_forward_hook(self._gate(name, layer.scaling[ADAPTER]))

    def _remember_tokens(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._tokens = kwargs.get("attention_mask")
        self._soft = []  # a forward whose penalty nobody asked for leaves nothing behind

    def _remember_base(self, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            self._base[name] = output

        return hook

    def _gate(self, name: str, scaling: float):
        """Scale lora_B's output per token by the gate (peft then scales and adds it)."""

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            tau = self.thresholds[name]
            ratio = (output * scaling).norm(dim=-1) / self._base.pop(name).norm(dim=-1)
            hard = (ratio >= tau).to(output.dtype)
            gate = hard
            if torch.is_grad_enabled() and tau.requires_grad:
                soft = torch.sigmoid((ratio - tau) / TEMPERATURE)
                gate = hard + (soft - soft.detach())  # forward: hard; backward: sigmoid's
                self._soft.append(self._mean_over_tokens(soft))
            self._count(hard.detach())
            return output * gate.unsqueeze(-1)

        return hook

    def _real_tokens(self, gate: torch.Tensor) -> torch.Tensor:
        """1 for a token of the input, 0 for padding (all 1 without an attention mask)."""
        tokens = self._tokens if self._tokens is not None else torch.ones_like(gate)
        return tokens.to(gate.dtype).reshape(gate.shape)

    def _mean_over_tokens(self, gate: torch.Tensor) -> torch.Tensor:
        tokens = self._real_tokens(gate)
        return (gate * tokens).sum() / tokens.sum()

    def _count(self, hard: torch.Tensor) -> None:
        tokens = self._real_tokens(hard)
        self._on += (hard * tokens).sum()
        self._seen += tokens.sum()

    def penalty(self) -> torch.Tensor | None:
        """lambda x the relaxed share of tokens gated on, over the last forward's layers."""
        soft, self._soft = self._soft, []
        if not self.penalty_weight or not soft:
            return None
        return self.penalty_weight * torch.stack(soft).mean()

    def metrics(self) -> dict[str, float]:
        """Share of (non-padding) tokens gated on, over all gated layers since the last load."""
        seen = float(self._seen)
        return {METRIC: float(self._on) / seen} if seen else {}

    def state(self) -> State:
        return {**super().state(),
                **{PREFIX + n: t.detach().clone() for n, t in self.thresholds.items()}}

    def reset(self) -> None:
        super().reset()
        with torch.no_grad():
            for threshold in self.thresholds.values():
                threshold.zero_()
        self._on.zero_()
        self._seen.zero_()

    def apply(self, state: State) -> None:
        super().apply(state)
        with torch.no_grad():
            for name, threshold in self.thresholds.items():
                threshold.copy_(state[PREFIX + name])

    def parameters(self) -> list[nn.Parameter]:
        return [*super().parameters(), *self.thresholds.values()]

    def merge_into(self, model: nn.Module, compact: State) -> None:
        raise MergeError(
            "lora-ts cannot be merged into plain weights: its gate decides per token whether "
            "LoRA's change applies, so no single weight matrix equals it; keep the adapter "
            "and serve the model with it (the update file holds factors and thresholds)."
        )
