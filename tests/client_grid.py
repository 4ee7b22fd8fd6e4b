"""An in-process stand-in for Flower's simulation engine, for tests of whole runs in seconds
(Ray's start alone takes longer): a grid that hands a copy of each message to the ClientApp,
mods included, with one partition and one lasting Context per node, as a SuperNode keeps
them, and turns what the ClientApp raises into an error reply, as Flower's engine does."""

from __future__ import annotations

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.common.serde import message_from_proto, message_to_proto

from client.app import app as client_app


class ClientGrid:
    """The part of Flower's Grid the ServerApp uses. `received` keeps every reply, as the
    server got it."""

    def __init__(self, num_partitions: int) -> None:
        self.partitions = {100 + p: p for p in range(num_partitions)}
        self.contexts = {
            node: Context(run_id=1, node_id=node, state=RecordDict(), run_config={},
                          node_config={"partition-id": p, "num-partitions": num_partitions})
            for node, p in self.partitions.items()
        }
        self.received: list[Message] = []
        self._sent = 0

    def get_node_ids(self) -> list[int]:
        return sorted(self.partitions)

    def send_and_receive(self, messages: list[Message], timeout: float) -> list[Message]:
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            self._sent += 1
            message.metadata.__dict__["_message_id"] = f"id-{self._sent}"  # as the Grid sets it
            # a copy, as the wire delivers: a mod may change what it received
            delivered = message_from_proto(message_to_proto(message))
            try:
                replies.append(client_app(delivered, self.contexts[node]))
            except Exception as exc:  # noqa: BLE001 - reported back, as Flower's engine does
                reason = f"{type(exc)}:<'{exc}'>"
                error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason)
                replies.append(Message(error, reply_to=delivered))
        self.received += replies
        return replies
