"""PaFi's k-entry weight gradient against the dense one, per matrix, on random data.

For MiniLM's three matrix shapes at 592 tokens (16 SST-2 sentences padded to 37), each
density and each share of live tokens (tokens with a non-zero output gradient: all, or a
third as in the padded bench batches), the median time of the dense product plus the
gather of the k entries against `Entries.gradient` run as the autograd node runs it,
called in turn. It is how `MAX_DENSITY` was chosen; prints a table, no target.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from common.methods.pafi.sampled import Entries, one_thread

SHAPES = ((384, 384), (1536, 384), (384, 1536))
DENSITIES = (0.005, 0.02, 0.05, 0.1, 0.2)
LIVE_SHARES = (1.0, 0.35)


def median_ms(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median ms of each function, called in turn, so load from other work hits them alike."""
    times: list[list[float]] = [[] for _ in fns]
    for fn in fns:
        fn()  # first-call allocations
    for _ in range(repeats):
        for fn, spent in zip(fns, times):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    return [statistics.median(spent) * 1e3 for spent in times]


def cell(grad_out: torch.Tensor, x: torch.Tensor, flat: torch.Tensor, repeats: int) -> str:
    """'dense/k-entry' ms for one matrix, density and live share."""
    entries = Entries((grad_out.shape[1], x.shape[1]), flat)

    def sampled() -> torch.Tensor:
        with one_thread():  # as the autograd node runs it
            return entries.gradient(grad_out, x)

    dense, k_entry = median_ms([lambda: (grad_out.t() @ x).reshape(-1)[flat], sampled], repeats)
    return f"{dense:7.2f}/{k_entry:<7.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kgrad", description=__doc__)
    parser.add_argument("--tokens", type=int, default=592, help="tokens per batch (592)")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per cell (15)")
    args = parser.parse_args(argv)
    generator = torch.Generator().manual_seed(0)
    print(f"torch threads {torch.get_num_threads()}; ms as dense / k-entry")
    print(f"{'live':>5} {'shape':>11}" + "".join(f"{d:>15.1%}" for d in DENSITIES))
    for share in LIVE_SHARES:
        live = torch.rand(args.tokens, generator=generator) < share
        for out, inp in SHAPES:
            x = torch.randn(args.tokens, inp, generator=generator)
            grad_out = torch.randn(args.tokens, out, generator=generator) * live[:, None]
            cells = [
                cell(grad_out, x, torch.randperm(out * inp, generator=generator)
                     [:int(density * out * inp)].sort().values, args.repeats)
                for density in DENSITIES
            ]
            print(f"{share:>5.0%} {f'{out}x{inp}':>11}" + "".join(f"{c:>15}" for c in cells))


if __name__ == "__main__":
    main()
