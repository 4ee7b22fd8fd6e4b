"""fedpafi ClientApp: rebuild the model from the shared state, train locally, reply.

The run config and the global state arrive in the message; the node config gives this
SuperNode its partition (and optionally its own `data-dir`). Two Flower mods wrap the
handler: SecAgg+ (--secagg, `client/secagg.py`) outside, so that a fault staged on purpose
(--fault-rate, `client/faults.py`) strikes after the client has shared its keys. The round
itself is `client/train_round.py`.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.faults import inject_faults
from client.secagg import secure_aggregation

app = ClientApp()


@app.train(mods=[secure_aggregation, inject_faults])
def train(msg: Message, context: Context) -> Message:
    # imported here: transformers and datasets take seconds to load, and a SecAgg+ key
    # stage, a ClientApp process of its own under a SuperNode, never reaches this line
    from client.train_round import train_round

    return train_round(msg, context)
