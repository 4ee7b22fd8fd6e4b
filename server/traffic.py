"""Bytes on the wire: what Flower carries for a message, measured from its objects.

Flower 1.41 sends a message as a tree of deflated objects (message, records, arrays and
5 MB array chunks), each once. Their summed size is what crosses the network.
"""

from __future__ import annotations

import time

from flwr.app import Error, Message, Metadata, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects


def message_bytes(message: Message) -> int:
    """Bytes Flower carries for a message: every deflated object of its tree, once."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


def standalone_reply(record: RecordDict | Error) -> Message:
    """A client's reply built outside a running app, to measure or validate it offline.

    Flower needs the instruction a reply answers; without a SuperLink there is none, so one
    is made from explicit metadata, with its id set the way the SuperLink sets it.
    """

    def instruction(message_id: str) -> Message:
        metadata = Metadata(run_id=1, message_id=message_id, src_node_id=1, dst_node_id=7,
                            reply_to_message_id="", group_id="1", created_at=time.time(),
                            ttl=43200.0, message_type="train")
        return Message(content=RecordDict(), metadata=metadata)

    request = instruction(instruction("").object_id)
    if isinstance(record, Error):
        return Message(error=record, reply_to=request)
    return Message(content=record, reply_to=request)
