"""TensorBoard event files hold the numbers of rounds.jsonl, across a resume too."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from client.app import reply_record
from common.config import RunConfig
from common.run_folder import RunFolder
from common.session import Session
from common.train import TrainResult
from server.rounds import RoundReporter
from server.strategy import FedPafiStrategy, RoundTraffic
from server.traffic import standalone_reply
from tests.events import expected_scalars, read_scalars

TAGS = {"dev/f1", "dev/accuracy", "dev/loss", "train/loss", "bytes/up_per_client",
        "bytes/down_per_client", "bytes/up_per_client_cumulative",
        "bytes/down_per_client_cumulative", "bytes/total_cumulative", "time/round_s",
        "time/elapsed_s"}


def fake_round(number: int, skipped: bool = False) -> dict:
    """A round record as the server logs it, with values that differ in every round."""
    clients = 0 if skipped else 2
    return {
        "round": number, "metrics": {"f1": 0.5 + number / 100, "accuracy": 0.6 - number / 100},
        "loss": 0.7 - number / 50, "train_loss": None if skipped else 0.9 - number / 40,
        "clients": list(range(clients)), "rejected": [], "skipped": skipped,
        "bytes_up": 1000.5 * number * clients, "bytes_down": 3000.25 * clients,
        "bytes_up_per_client": 1000.5 * number if clients else 0.0,
        "bytes_down_per_client": 3000.25 if clients else 0.0,
        "floor_bytes_up_per_client": 900.0, "codec": "fp32", "wall_s": 1.25 + number,
    }


def test_event_files_hold_every_value_of_rounds_jsonl(tmp_path):
    folder = RunFolder.create(RunConfig(out=str(tmp_path), run_name="run"))
    initial = {"f1": 0.1, "accuracy": 0.2}
    folder.log_initial(initial, 0.75)
    for record in (fake_round(1), fake_round(2, skipped=True), fake_round(3)):
        folder.append_round(record)
    logged = read_scalars(folder.path)  # before close: each round is flushed as it is logged
    rounds = folder.rounds()
    assert set(logged) == TAGS
    assert logged == expected_scalars(rounds, {**initial, "loss": 0.75})
    assert 2 not in logged["train/loss"]  # a skipped round has no train loss
    assert logged["bytes/total_cumulative"][3] == pytest.approx(
        sum(r["bytes_up"] + r["bytes_down"] for r in rounds))
    folder.close()


def test_a_resumed_folder_continues_the_running_sums(tmp_path):
    folder = RunFolder.create(RunConfig(out=str(tmp_path), run_name="run"))
    folder.log_initial({"f1": 0.1, "accuracy": 0.2}, 0.75)
    for number in (1, 2):
        folder.append_round(fake_round(number))
    folder.close()
    resumed, _ = RunFolder.existing(folder.path)
    resumed.keep_rounds(2)
    for number in (3, 4):
        resumed.append_round(fake_round(number))
    resumed.close()
    logged = read_scalars(folder.path)
    assert len(list((folder.path / "tensorboard").iterdir())) == 2  # one event file a process
    assert sorted(logged["bytes/up_per_client_cumulative"]) == [1, 2, 3, 4]
    assert logged["bytes/up_per_client_cumulative"][4] == pytest.approx(1000.5 * (1 + 2 + 3 + 4))
    assert logged["time/elapsed_s"][3] == pytest.approx(2.25 + 3.25 + 4.25)
    assert logged == expected_scalars(folder.rounds(), {"f1": 0.1, "accuracy": 0.2, "loss": 0.75})


def _session(tiny_model_dir, out) -> Session:
    cfg = RunConfig(model=str(tiny_model_dir), task="mrpc", sparsity=0.05, num_clients=2,
                    rounds=3, out=str(out), run_name="run")
    session = Session.build(cfg)
    session.dev_set = Dataset.from_dict({  # instead of GLUE's dev set: 8 pairs
        "text_a": [f"the cat sat on mat number {i}" for i in range(8)],
        "text_b": [f"a cat sat on the mat {i % 3}" for i in range(8)],
        "label": [i % 2 for i in range(8)],
    })
    return session


def _play(reporter: RoundReporter, strategy: FedPafiStrategy, loop_round: int) -> None:
    """One loop round as Flower drives it: replies aggregated, then the evaluate_fn."""
    number = loop_round + strategy.round_offset
    strategy.traffic[number] = RoundTraffic(bytes_down=[5000 + number] * 2)
    replies = []
    for partition in (0, 1):
        update = {k: torch.full_like(v, 0.01 * number) for k, v in strategy.state.items()}
        result = TrainResult(num_examples=10 + partition, steps=1, loss=1.0 / number, seconds=0)
        replies.append(standalone_reply(reply_record(strategy.session, update, result,
                                                     partition)))
    arrays, _ = strategy.aggregate_train(loop_round, replies)
    reporter(loop_round, arrays)


def test_the_server_reporter_writes_rounds_and_round_0_across_a_resume(tiny_model_dir,
                                                                       tmp_path):
    session = _session(tiny_model_dir, tmp_path)
    folder = RunFolder.create(session.cfg)
    strategy = FedPafiStrategy(session)
    reporter = RoundReporter(session, strategy, folder)
    reporter(0, strategy.initial_arrays())
    for loop_round in (1, 2):
        _play(reporter, strategy, loop_round)
    # killed here: no close; a new process resumes after round 2 as server.app.serve does
    resumed_folder, _ = RunFolder.existing(folder.path)
    done, state, info = resumed_folder.load_checkpoint()
    resumed = FedPafiStrategy(session)
    resumed.resume(done, state)
    reporter = RoundReporter(session, resumed, resumed_folder, resumed_folder.keep_rounds(done),
                             info["initial_metrics"])
    reporter(0, resumed.initial_arrays())  # evaluates the resumed model, logs nothing
    _play(reporter, resumed, 1)
    resumed_folder.close()

    rounds = resumed_folder.rounds()
    assert [r["round"] for r in rounds] == [1, 2, 3]
    logged = read_scalars(folder.path)
    assert set(logged) == TAGS
    assert logged == expected_scalars(rounds, info["initial_metrics"])
    assert sorted(logged["dev/f1"]) == [0, 1, 2, 3]
    assert logged["bytes/total_cumulative"][3] == pytest.approx(
        sum(r["bytes_up"] + r["bytes_down"] for r in rounds))
