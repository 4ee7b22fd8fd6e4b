"""A run with client-side adaptive DP through the real ServerApp and ClientApp, in-process
on the tiny random BERT (`tests/client_grid.py`): every client clips to the norm the server
sent and reports whether it clipped, and the norm the server logs moves by Andrew et al.'s
step on the noised count of those bits."""

from __future__ import annotations

import json

import pytest

from common.config import RunConfig
from common.privacy import epsilon, next_clipping_norm
from server.app import serve
from tests.client_grid import ClientGrid

pytestmark = pytest.mark.integration
CLIENTS = 4


def test_the_adaptive_norm_is_logged_and_moves_by_the_clients_bits(tiny_model_dir, glue_dir,
                                                                   tmp_path, server_process):
    cfg = RunConfig(model=str(tiny_model_dir), method="pafi", sparsity=0.05, task="sst2",
                    num_clients=CLIENTS, rounds=3, local_steps=3, max_seq_length=32,
                    eval_max_examples=32, seed=1, device="cpu", dp_clipping_norm=1e-4,
                    dp_noise_multiplier=1.0, dp_clipping="adaptive", dp_clipped_count_stddev=1.0,
                    dp_side="client", data_dir=str(glue_dir), out=str(tmp_path)).validate()
    run = serve(ClientGrid(CLIENTS), cfg)
    rounds = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]
    assert [len(r["clients"]) for r in rounds] == [CLIENTS] * 3
    norms = [r["dp_clipping_norm"] for r in rounds]
    assert norms[0] == 1e-4
    for server_round, (norm, moved) in enumerate(zip(norms, norms[1:]), start=1):
        steps = [next_clipping_norm(cfg, norm, bits, CLIENTS, server_round)
                 for bits in range(CLIENTS + 1)]  # the count is not logged: one of these
        assert any(moved == pytest.approx(step, rel=1e-12) for step in steps)
    assert [r["epsilon"] for r in rounds] == [epsilon(cfg, n) for n in (1, 2, 3)]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["dp_clipping"] == "adaptive" and summary["dp_side"] == "client"
    assert summary["dp_last_clipping_norm"] == norms[-1]
