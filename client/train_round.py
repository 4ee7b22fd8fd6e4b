"""One client round: rebuild (or reuse) the model, load the global state, train, reply.

The ClientApp's train handler (`client/app.py`) runs `train_round`. It lives in a module of
its own so that the model libraries load with the first message that trains, not with the
app: under a SuperNode each message starts a ClientApp process, and SecAgg+'s key stages
never train.
"""

from __future__ import annotations

from functools import lru_cache

from datasets import Dataset
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from client.residue import carried, keep, residue_folder
from client.view import received_state
from common import protocol as p
from common.config import RunConfig
from common.errors import ConfigError
from common.glue import load_split, partition
from common.laps import Laps
from common.privacy import client_private
from common.session import Session
from common.train import TrainResult, train_locally
from common.updates import State, add, dropped, encode_update


@lru_cache(maxsize=2)
def _session(config_json: str) -> Session:
    """One model and mask per process and config: Ray actors serve many rounds."""
    return Session.build(RunConfig.from_json(config_json))


@lru_cache(maxsize=4)
def _shards(task: str, data_dir: str, num: int, alpha: float, iid: bool, seed: int,
            scheme: str) -> list[Dataset]:
    return partition(load_split(task, "train", data_dir), num, alpha, iid, seed, task, scheme)


def train_round(msg: Message, context: Context) -> Message:
    """The reply to a train instruction: this node's shard trained from the global state."""
    clock = Laps()
    config = msg.content[p.CONFIG]
    cfg = RunConfig.from_json(str(config[p.RUN_CONFIG]))
    if context.node_config.get("data-dir"):
        cfg = cfg.replace(data_dir=str(context.node_config["data-dir"]))
    session = _session(cfg.to_json())
    if session.method.mask is not None:
        session.method.mask.check(str(config[p.FINGERPRINT]))
    clock.lap("build")
    partition_id, shard = _own_shard(cfg, context)
    clock.lap("data")
    session.method.load(received_state(msg.content, context, session))
    clock.lap("load")
    result = train_locally(session.method, shard, session.tokenizer, session.task, cfg,
                           int(config[p.ROUND]), partition_id, _progress(cfg, partition_id))
    clock.lap("train")
    if cfg.verbose:
        print(f"  client {partition_id}: {result.steps} steps, loss {result.loss:.4f}, "
              f"{result.seconds:.1f}s", flush=True)
    update, private = session.method.update(), {}
    if cfg.dp_side == "client" and not cfg.secagg:  # clip and noise here (secagg: its bridge)
        update, unclipped = client_private(cfg, update, float(config[p.DP_CLIPPING_NORM]))
        private = {p.DP_UNCLIPPED: int(unclipped)}
    reply = _reply(session, update, result, partition_id, context, config)
    reply[p.METRICS].update(private)
    if cfg.download_codec != "fp32":  # the view this client now holds (`client/view.py`)
        reply[p.REPLY_INFO][p.VIEW_ROUND] = int(config[p.ROUND])
    clock.lap("encode")
    reply[p.METRICS].update({f"{phase}-seconds": s for phase, s in clock.seconds.items()})
    return Message(content=reply, reply_to=msg)


def _reply(session: Session, update: State, result: TrainResult, partition_id: int,
           context: Context, config: ConfigRecord) -> RecordDict:
    """The reply to this round; with a codec that drops values, the update carries this
    client's residue in and keeps what its encoding drops (`client/residue.py`)."""
    if not session.codec.error_feedback:
        return reply_record(session, update, result, partition_id)
    folder, server_round = residue_folder(config, partition_id), int(config[p.ROUND])
    if (residue := carried(context, folder, server_round)) is not None:
        session.method.check_layout(residue, "the carried residue")
        update = add(update, residue)
    reply = reply_record(session, update, result, partition_id)
    arrays = {k: a.numpy() for k, a in reply[p.UPDATE].items()}
    keep(context, folder, server_round,
         dropped(update, arrays, session.codec, session.method.layout))
    return reply


def _own_shard(cfg: RunConfig, context: Context) -> tuple[int, Dataset]:
    """This SuperNode's partition id and shard (every node cuts the same seeded split)."""
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    if num_partitions != cfg.num_clients:
        raise ConfigError(
            f"This SuperNode splits the data {num_partitions} ways (num-partitions) but the "
            f"run has num-clients={cfg.num_clients}; they must match. With flwr run, use "
            f"--federation-config 'num-supernodes={cfg.num_clients}'."
        )
    shards = _shards(cfg.task, cfg.resolved_data_dir, num_partitions, cfg.alpha, cfg.iid,
                     cfg.seed, cfg.partitioner)
    return partition_id, shards[partition_id]


def reply_record(session: Session, update: State, result: TrainResult,
                 partition_id: int) -> RecordDict:
    """What a client sends back: the encoded update, its weight and metrics, its codec."""
    method = session.method
    arrays = encode_update(update, session.codec, method.layout, method.sparse_wire)
    return RecordDict({
        p.UPDATE: ArrayRecord({k: Array(v) for k, v in arrays.items()}),
        p.METRICS: MetricRecord({
            p.NUM_EXAMPLES: result.num_examples,
            "train-loss": result.loss,
            "train-steps": result.steps,
            p.PARTITION: partition_id,
            **method.metrics(),  # what a part measured in training (lora-ts: gate-on)
        }),
        p.REPLY_INFO: ConfigRecord({
            p.CODEC: session.codec.name,
            p.FINGERPRINT: session.fingerprint,
        }),
    })


def _progress(cfg: RunConfig, partition_id: int):
    if not cfg.verbose:
        return None
    every = max(1, cfg.local_steps // 4)

    def report(step: int, total: int, loss: float) -> None:
        if step % every == 0 or step == total:
            print(f"  client {partition_id}: step {step}/{total} loss {loss:.4f}", flush=True)

    return report
