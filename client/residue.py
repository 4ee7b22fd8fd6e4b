"""Error feedback's client state: what a lossy codec dropped, carried into the next update.

A client adds its residue to its next update before encoding it, and keeps what that
encoding drops in turn, so over the rounds the server receives the sum of its true
updates up to the last residue. A client that is not sampled keeps its residue unchanged
until its next turn (nothing is dropped, nothing decays); a reply the server refuses or
never receives is not sent again.

Where the residue lives:
- in `context.state`, the RecordDict Flower keeps per node between the rounds of a run
  (in simulation and in deployment), as the ArrayRecord `RESIDUE`;
- and, when the server names a client state folder (a simulation, whose clients share
  its disk: `clients/` in the run folder), in a file per partition and round,
  `<folder>/<partition>/residue-<round>.safetensors`. A resumed simulation is a new Flower
  run with empty contexts: each client reads its file of the latest round before the one
  it is asked to train. That round is at most the server's checkpoint's, so a round cut
  short is redone from the same residue and the run stays bit-identical. A client keeps
  that file and the one it writes; older ones are deleted.
"""

from __future__ import annotations

import re
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context

from common import protocol as p
from common.files import read_safetensors, write_safetensors
from common.updates import State

RESIDUE = "fedpafi.residue"
RESIDUE_FORMAT = "fedpafi-residue/1"
_FILE = re.compile(r"residue-(\d+)\.safetensors")


def residue_folder(config: ConfigRecord, partition_id: int) -> Path | None:
    """This partition's state folder, when the server named one."""
    folder = config.get(p.CLIENT_STATE)
    return Path(str(folder)) / str(partition_id) if folder else None


def carried(context: Context, folder: Path | None, server_round: int) -> State | None:
    """The residue to add to this round's update: the run's own, else the file of the
    latest round before `server_round` (a resumed run), else none (a first turn)."""
    if RESIDUE in context.state:
        return context.state[RESIDUE].to_torch_state_dict()
    earlier = [r for r in _rounds(folder) if r < server_round]
    if not earlier:
        return None
    residue, _ = read_safetensors(_path(folder, max(earlier)), RESIDUE_FORMAT, "residue")
    return residue


def keep(context: Context, folder: Path | None, server_round: int, residue: State) -> None:
    """Store what this round's encoding dropped, for the client's next turn."""
    context.state[RESIDUE] = ArrayRecord(residue)
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(_path(folder, server_round), residue,
                      {"format": RESIDUE_FORMAT, "round": str(server_round)})
    earlier = sorted(r for r in _rounds(folder) if r < server_round)
    for old in earlier[:-1]:  # the latest earlier one is where a redone round starts
        _path(folder, old).unlink()


def _rounds(folder: Path | None) -> list[int]:
    if folder is None or not folder.is_dir():
        return []
    return [int(m.group(1)) for f in folder.iterdir() if (m := _FILE.fullmatch(f.name))]


def _path(folder: Path, server_round: int) -> Path:
    return folder / f"residue-{server_round}.safetensors"
