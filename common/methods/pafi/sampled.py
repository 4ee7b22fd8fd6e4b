"""The gradient of a masked Linear weight at its k entries only, never the dense matrix.

For entry (i, j) of a Linear weight the gradient is the sum over tokens of
grad_out[:, i] * x[:, j]: k dot products instead of the out x in x tokens of the dense
product. torch's sampled dense-dense product (`torch.sparse.sampled_addmm`, CSR pattern)
computes exactly these; on the CPU its kernel wants both operands token-contiguous, so
grad_out and x are transposed once each. Measured on a 2-core CPU at 640 tokens (see
benchmarks/README.md): a 384 x 384 matrix at 0.6% density takes 0.3 ms against 0.5 ms
dense, a 1536 x 384 one at 0.4% 1.1 ms against 2.2 ms; at `MAX_DENSITY` the two meet.
"""

from __future__ import annotations

import warnings

import torch

MAX_DENSITY = 0.02  # above this share of masked entries the dense product is as fast


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
        """dL/dW at the entries, in mask order, from the layer's input and output gradient."""
        grad_t = grad_out.reshape(-1, grad_out.shape[-1]).t().contiguous()
        x_t = x.reshape(-1, x.shape[-1]).t().contiguous()
        pattern = self.pattern.to(grad_t.dtype)
        return torch.sparse.sampled_addmm(pattern, grad_t, x_t.t(), beta=0.0).values()


class KEntryGrad(torch.autograd.Function):
    """Identity on a Linear's output; its backward adds the k-entry weight gradient.

    The Linear runs as a frozen one (autograd computes only the input gradient), and this
    node hands the output gradient on unchanged and gives `piece`, the delta's slice of
    this weight, its gradient."""

    @staticmethod
    def forward(ctx, output: torch.Tensor, x: torch.Tensor, piece: torch.Tensor,
                entries: Entries) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.entries = entries
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad, None, ctx.entries.gradient(grad, x), None
