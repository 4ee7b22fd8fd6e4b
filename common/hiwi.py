"""HiWi: a bottleneck adapter fed with a pre-trained parameter instead of a hidden state.

P' = P + f(P W_down + b_down) W_up + b_up, with W_up and b_up zero so that P' = P at the
start. It is a torch parametrization: the model computes P' on every forward while
training, and merging is torch's own `remove_parametrizations(leave_parametrized=True)`,
which writes P' into the parameter once and drops the adapter (no inference cost).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from common.errors import ConfigError

# Names of the FFN input projection in common encoder families.
FFN_INPUT_SUFFIXES = ("intermediate.dense", "ffn.lin1", "mlp.fc1")


class HiWiAdapter(nn.Module):
    """Maps P to P': each row of P (a bias is one row) goes through the bottleneck."""

    def __init__(self, in_features: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(in_features, rank)
        self.up = nn.Linear(rank, in_features)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, param: torch.Tensor) -> torch.Tensor:
        rows = param.reshape(-1, param.shape[-1])
        return param + self.up(nn.functional.gelu(self.down(rows))).reshape(param.shape)


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
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    adapters = {}
    for name, module in modules.items():
        param = getattr(module, param_name)
        adapter = HiWiAdapter(param.shape[-1], rank).to(param.device)
        parametrize.register_parametrization(module, param_name, adapter, unsafe=True)
        adapters[name] = adapter
    torch.random.set_rng_state(generator_state)
    return adapters


def original(module: nn.Module, param_name: str) -> torch.Tensor:
    """The adapter's input P (the stored parameter), as opposed to the computed P'."""
    return getattr(module.parametrizations, param_name).original


def merge(modules: dict[str, nn.Module], param_name: str) -> None:
    """Write P' into each parameter and throw the adapters away."""
    for module in modules.values():
        if parametrize.is_parametrized(module, param_name):
            parametrize.remove_parametrizations(module, param_name, leave_parametrized=True)
