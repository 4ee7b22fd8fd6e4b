"""The gradient of a masked Linear weight at its k entries only, never the dense matrix.

For entry (i, j) of a Linear weight the gradient is the sum over tokens of
grad_out[:, i] * x[:, j]: k dot products instead of the out x in x tokens of the dense
product. torch's sampled dense-dense product (`torch.sparse.sampled_addmm`, CSR pattern)
computes exactly these; on the CPU its kernel wants both operands token-contiguous, so
grad_out and x are transposed once each, and only over the tokens whose output gradient
is not zero (in a padded batch of a classifier that is about a third of them, and in the
last block only the token the head reads).

Measured with `python -m benchmarks.kgrad` (2-core CPU, 592 tokens, dense product + gather
against this path on one thread, ms): with a third of the tokens live, 384 x 384 at 0.5%
density 0.52 against 0.36, 1536 x 384 2.0 against 1.0; with every token live the small
matrix is slower (0.56 against 0.69) and the large ones break even at about 2%, where
`MAX_DENSITY` puts the limit.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

MAX_DENSITY = 0.02  # share of masked entries above which a matrix keeps the dense path


class Entries:
    """The masked entries of one weight matrix as a CSR pattern (row-major = mask order)."""

    def __init__(self, shape: tuple[int, int], flat: torch.Tensor) -> None:
        if flat.numel() > 1 and not bool((flat[1:] > flat[:-1]).all()):
            raise ValueError("mask indices must be ascending (the mask's canonical order)")
        rows, cols = flat // shape[1], flat % shape[1]
        crow = torch.zeros(shape[0] + 1, dtype=torch.int64, device=flat.device)
        crow[1:] = torch.bincount(rows, minlength=shape[0]).cumsum(0)
        with warnings.catch_warnings():  # "CSR support is in beta": the pattern only
            warnings.simplefilter("ignore", UserWarning)
            self.pattern = torch.sparse_csr_tensor(
                crow, cols, torch.zeros(flat.numel(), device=flat.device), shape,
                check_invariants=True)

    def gradient(self, grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """dL/dW at the entries, in mask order, from the layer's input and output gradient.

        Tokens whose output gradient is zero add exactly nothing, so they are left out:
        padding, and in the last block every token but the one the head reads."""
        grad_out = grad_out.reshape(-1, grad_out.shape[-1])
        x = x.reshape(-1, x.shape[-1])
        live = ((grad_out.amax(dim=1) != 0) | (grad_out.amin(dim=1) != 0)).nonzero().flatten()
        if live.numel() < grad_out.shape[0]:
            grad_out, x = grad_out.index_select(0, live), x.index_select(0, live)
        # token-contiguous operands, which the CPU kernel wants
        grad_t, x_t = grad_out.t().contiguous(), x.t().contiguous()
        pattern = self.pattern.to(grad_t.dtype)
        return torch.sparse.sampled_addmm(pattern, grad_t, x_t.t(), beta=0.0).values()


class KEntryGrad(torch.autograd.Function):
    """Identity on a Linear's output; its backward computes the k-entry weight gradient.

    The Linear runs as a frozen one (autograd computes only its input gradient); this node
    hands the output gradient on unchanged and passes the k values to `accumulate`, which
    adds them to the delta's gradient as the dense path's hook does. `delta` is an input
    only so that the node is in the graph even where nothing else before it needs a
    gradient (the first layer); autograd itself gives it none."""

    @staticmethod
    def forward(ctx, output: torch.Tensor, x: torch.Tensor, delta: torch.Tensor,
                entries: Entries, accumulate: Callable[[torch.Tensor], None]) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.entries, ctx.accumulate = entries, accumulate
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        with one_thread():
            ctx.accumulate(ctx.entries.gradient(grad, x))
        return grad, None, None, None, None


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the k-entry ops on one thread. They are small and memory-bound: on an idle
    machine one thread makes them 20-50% slower, but on a busy one each parallel op
    waited for a descheduled second thread, about one scheduler slice (3 ms) per op, and
    pafi's step took 1.5 times the dense path's (benchmarks/README.md). torch's thread
    count is per process, so this assumes no other thread runs torch ops at the same
    moment (training here is one thread per process)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
