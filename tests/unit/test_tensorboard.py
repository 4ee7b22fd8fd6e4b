"""TensorBoard event files hold the numbers of rounds.jsonl, across a resume too."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from flwr.app import Message
from flwr.supercore.task_identity import TaskIdentity

from client.train_round import reply_record
from common.config import RunConfig
from common.run_folder import RunFolder
from common.session import Session
from common.train import TrainResult
from server.app import play_round
from server.round_log import RoundLog
from server.strategy import FedPafiStrategy
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


class Grid:
    """A grid of two clients that reply at once, as a partition's ClientApp would."""

    def __init__(self, strategy: FedPafiStrategy) -> None:
        self.strategy = strategy
        self.partitions = {11: 0, 22: 1}

    def get_node_ids(self) -> list[int]:
        return sorted(self.partitions)

    def send_and_receive(self, messages: list[Message], timeout: float) -> list[Message]:
        number = int(messages[0].content["config"]["server-round"])
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            message.metadata.__dict__["_message_id"] = f"id-{node}"  # as the Grid sets it
            partition = self.partitions[node]
            update = {k: torch.full_like(v, 0.01 * number)
                      for k, v in self.strategy.state.items()}
            result = TrainResult(num_examples=10 + partition, steps=1, loss=1.0 / number,
                                 seconds=0)
            record = reply_record(self.strategy.session, update, result, partition)
            replies.append(Message(content=record, reply_to=message))
        return replies


def play_rounds(session: Session, rounds: int) -> tuple[RunFolder, FedPafiStrategy]:
    """A new run's first `rounds` rounds, as server.app.serve plays them."""
    folder, strategy = RunFolder.create(session.cfg), FedPafiStrategy(session)
    log = RoundLog(session, strategy, folder)
    log.start(*strategy.evaluate())
    for loop_round in range(1, rounds + 1):
        play_round(Grid(strategy), strategy, folder, log, loop_round)
    return folder, strategy


def resume_and_play(session: Session, run: Path) -> tuple[RunFolder, FedPafiStrategy, dict]:
    """A new process resumes the run in `run` as server.app.serve does and plays one round;
    returns the closed folder, the strategy and the checkpoint's info."""
    folder, _ = RunFolder.existing(run)
    done, state, info = folder.load_checkpoint()
    strategy = FedPafiStrategy(session)
    strategy.resume(done, state)
    log = RoundLog(session, strategy, folder, folder.keep_rounds(done), info["initial_metrics"])
    log.start(*strategy.evaluate())  # the resumed model: printed, not logged
    play_round(Grid(strategy), strategy, folder, log, 1)
    folder.close()
    return folder, strategy, info


@pytest.fixture
def task_identity(monkeypatch):
    for name in ("_run_id", "_task_id", "_node_id"):  # what a ServerApp process has set
        monkeypatch.setattr(TaskIdentity, name, 1)


def test_the_server_log_writes_rounds_and_round_0_across_a_resume(tiny_model_dir, tmp_path,
                                                                 task_identity):
    session = _session(tiny_model_dir, tmp_path)
    folder, _ = play_rounds(session, 2)  # killed here: no close
    resumed_folder, _, info = resume_and_play(session, folder.path)

    rounds = resumed_folder.rounds()
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(r["clients"] == [11, 22] and not r["rejected"] for r in rounds)
    logged = read_scalars(folder.path)
    assert set(logged) == TAGS
    assert logged == expected_scalars(rounds, info["initial_metrics"])
    assert sorted(logged["dev/f1"]) == [0, 1, 2, 3]
    assert logged["bytes/total_cumulative"][3] == pytest.approx(
        sum(r["bytes_up"] + r["bytes_down"] for r in rounds))
