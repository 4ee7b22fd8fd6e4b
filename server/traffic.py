"""Bytes on the wire: what Flower carries for a message's records, measured from its objects.

Flower 1.41 sends a message as a tree of deflated objects (message, records, arrays and
5 MB array chunks), each once. The records and everything below them are counted. The
message object itself, an envelope of ids and timestamps (130-200 B), is not: its size
depends on the runtime (the simulation engine writes UUIDs, a SuperLink content hashes and
random task ids), so leaving it out makes a round's bytes the same in simulation and in a
deployment.
"""

from __future__ import annotations

import time

from flwr.app import ArrayRecord, Error, Message, Metadata, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects


def message_bytes(message: Message) -> int:
    """Bytes Flower carries for a message's records: every deflated object, once (0 for an
    error reply, which has none)."""
    return record_bytes(message.content) if message.has_content() else 0


def record_bytes(record: RecordDict | ArrayRecord) -> int:
    """Bytes Flower carries for a record and everything below it (arrays, chunks)."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(record).values())


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
