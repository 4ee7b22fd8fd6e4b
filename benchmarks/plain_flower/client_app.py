"""The plain ClientApp: load the global weights, train on the local shard, send them back."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from benchmarks.plain_flower.task import SETTINGS, get_model, load_data, train

app = ClientApp()


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    partition_id = int(context.node_config["partition-id"])
    trainloader = load_data(partition_id, int(context.node_config["num-partitions"]))
    net = get_model()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    loss = train(net, trainloader, SETTINGS["local-steps"])
    content = RecordDict({
        "arrays": ArrayRecord(net.state_dict()),
        "metrics": MetricRecord({"train_loss": loss, "num-examples": len(trainloader.dataset)}),
    })
    return Message(content=content, reply_to=msg)
