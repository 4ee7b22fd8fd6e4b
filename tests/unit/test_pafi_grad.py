"""The k-entry gradient of masked Linear weights: equal to the dense one at the entries,
the same training, and the dense path wherever the k-entry one does not apply."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from common.config import RunConfig
from common.glue import get_task
from common.methods import build_method
from common.methods.pafi.sampled import Entries
from common.model import load_backbone
from tests.unit.test_methods import _train

TASK = get_task("sst2")


def _method(model_dir, name="pafi", **extra):
    """At PaFi's default density (0.5%), where the k-entry path applies."""
    cfg = RunConfig(method=name, model=str(model_dir), sparsity=0.005, **extra)
    return build_method(load_backbone(str(model_dir), TASK, seed=0), cfg)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_entries_gradient_is_the_dense_linear_gradient_at_the_entries(dtype, tol):
    generator = torch.Generator().manual_seed(0)
    linear = nn.Linear(24, 40).to(dtype)
    x = torch.randn(3, 7, 24, dtype=dtype, generator=generator)
    grad_out = torch.randn(3, 7, 40, dtype=dtype, generator=generator)
    flat = torch.randperm(40 * 24, generator=generator)[:50].sort().values
    linear(x).backward(grad_out)
    expected = linear.weight.grad.reshape(-1)[flat]
    got = Entries((40, 24), flat).gradient(grad_out, x)
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)


def test_entries_refuse_indices_out_of_mask_order():
    with pytest.raises(ValueError, match="ascending"):
        Entries((4, 4), torch.tensor([3, 1]))


def _relative(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).norm() / expected.norm())


def _backward(method, batch, dense):
    part = method.parts[0]
    part.delta.grad = None
    method.model.eval()  # no dropout: both passes see the same function
    if dense:
        with part.dense_gradients():
            method.model(**batch).loss.backward()
    else:
        method.model(**batch).loss.backward()
    return part.delta.grad.clone()


def test_masked_linears_get_the_dense_gradient_without_forming_it(tiny_model_dir, batch):
    method = _method(tiny_model_dir)
    part = method.parts[0]
    sampled = [w for w, e in zip(part.weights, part.entries) if e is not None]
    assert len(sampled) >= len(part.weights) - 2  # almost every matrix is below MAX_DENSITY
    threads = torch.get_num_threads()
    fast = _backward(method, batch, dense=False)
    assert torch.get_num_threads() == threads  # the k-entry ops' one thread is given back
    assert all(not w.requires_grad and w.grad is None for w in sampled)
    dense = _backward(method, batch, dense=True)
    assert all(w.requires_grad for w in sampled)  # the dense path really ran
    assert dense.abs().max() > 0 and _relative(fast, dense) < 1e-6


@pytest.mark.parametrize("name, extra", [("pafi", {}),
                                         ("pafi", {"mask_include": "bias,layernorm"}),
                                         ("pafi-hiwi", {"hiwi_target": "weight"})])
def test_training_gives_the_dense_paths_delta(tiny_model_dir, batch, name, extra):
    """Biases, LayerNorms and HiWi-parametrized weights keep the dense path beside it."""
    deltas = []
    for dense in (False, True):
        method = _method(tiny_model_dir, name, **extra)
        part = method.parts[0]
        torch.manual_seed(0)  # the same dropout in both runs
        if dense:
            with part.dense_gradients():
                _train(method, batch)
        else:
            _train(method, batch)
        deltas.append(part.delta.detach().clone())
    fast, dense = deltas
    assert dense.abs().max() > 0 and _relative(fast, dense) < 1e-6


def test_a_weight_hiwi_parametrizes_takes_the_dense_path(tiny_model_dir, batch):
    method = _method(tiny_model_dir, "pafi-hiwi", hiwi_target="weight")
    part = method.parts[0]
    hiwi = {n for n, _ in method.model.named_parameters() if "parametrizations.weight" in n}
    assert hiwi  # the FFN input weights, which PaFi also masks
    _backward(method, batch, dense=False)
    by_name = {id(p): n for n, p in method.model.named_parameters()}
    for weight, entries in zip(part.weights, part.entries):
        if by_name[id(weight)] in hiwi and entries is not None:
            assert weight.requires_grad  # the hook gathers its entries from the dense gradient


def test_a_new_selection_moves_the_k_entry_gradient(tiny_model_dir, batch):
    """sparse-local selects again each round: the gradient follows the new entries."""
    method = _method(tiny_model_dir, "sparse-local")
    method.prepare([batch])
    dense = _backward(method, batch, dense=True)
    assert dense.abs().max() > 0 and _relative(_backward(method, batch, dense=False), dense) < 1e-6
