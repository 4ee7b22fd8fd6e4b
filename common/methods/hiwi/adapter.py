"""HiWi: a bottleneck adapter fed with a pre-trained parameter instead of a hidden state.

P' = P + s * (f(x W_down + b_down) W_up + b_up), where x is a row of the *pre-trained*
parameter P0 scaled to unit L1 norm and s is the RMS of P0. W_up and b_up start at zero,
so P' = P at the start.

- The input is P0, always: the adapter keeps it as a buffer, so neither a global change
  accumulated over rounds nor PaFi deltas written into the same tensor feed back into it.
  P (the stored parameter) may carry those; the adapter's output is added after them.
- Unit-L1 input rows: one Adam step of lr moves a bottleneck pre-activation by at most
  2 * lr (lr from W_down, lr from b_down) on any backbone and at any width. Fed raw, a
  MiniLM FFN bias (L1 norm 165) moved it by 165 * lr, and with unit L2 rows by about
  31 * lr (the square root of the width), which let the product W_up * f(.) grow with the
  square of the steps under a consistent gradient.
- Output in units of s: one Adam step of lr on b_up moves P' by lr * s, the same relative
  change for a bias or a weight, on any backbone.

It is a torch parametrization: the model computes P' on every forward while training. The
export adds P' - P to the plain model's parameter once and keeps no adapter, so inference
costs what the plain model costs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from common.errors import ConfigError

# Names of the FFN input projection in common encoder families.
FFN_INPUT_SUFFIXES = ("intermediate.dense", "ffn.lin1", "mlp.fc1")
_TINY = 1e-12


class HiWiAdapter(nn.Module):
    """Maps P to P' = P + s * adapter(P0 rows); a bias is one row."""

    def __init__(self, pretrained: torch.Tensor, rank: int) -> None:
        super().__init__()
        rows = pretrained.detach().reshape(-1, pretrained.shape[-1]).float()
        l1 = rows.abs().sum(dim=1, keepdim=True).clamp_min(_TINY)
        self.register_buffer("source", rows / l1)
        self.scale = float(rows.pow(2).mean().sqrt()) or 1.0
        self.down = nn.Linear(rows.shape[1], rank)
        self.up = nn.Linear(rank, rows.shape[1])
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def change(self) -> torch.Tensor:
        """P' - P, a function of the adapter and P0 only."""
        return self.scale * self.up(nn.functional.gelu(self.down(self.source)))

    def forward(self, param: torch.Tensor) -> torch.Tensor:
        return param + self.change().reshape(param.shape).to(param.dtype)


def ffn_input_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The FFN input projection of every encoder block, sorted by name."""
    found = {n: m for n, m in model.named_modules() if n.endswith(FFN_INPUT_SUFFIXES)}
    if not found:
        raise ConfigError(
            "HiWi found no FFN input projection (looked for modules ending in "
            f"{', '.join(FFN_INPUT_SUFFIXES)}); this backbone is not supported by HiWi."
        )
    return dict(sorted(found.items()))


def attach(
    modules: dict[str, nn.Module], param_name: str, rank: int, seed: int
) -> dict[str, HiWiAdapter]:
    """Put a fresh zero-output adapter on `param_name` of each module (seeded init)."""
    adapters = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, module in modules.items():
            param = getattr(module, param_name)
            adapter = HiWiAdapter(param, rank).to(param.device)
            parametrize.register_parametrization(module, param_name, adapter, unsafe=True)
            adapters[name] = adapter
    return adapters


def original(module: nn.Module, param_name: str) -> torch.Tensor:
    """The stored parameter P that the adapter's change is added to (not the computed P')."""
    return getattr(module.parametrizations, param_name).original

