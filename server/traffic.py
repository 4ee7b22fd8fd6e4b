"""Bytes on the wire: what Flower carries for a message's records, measured from its objects.

Flower 1.41 sends a message as a tree of deflated objects (message, records, arrays and
5 MB array chunks), each once. The records and everything below them are counted. The
message object itself, an envelope of ids and timestamps (130-200 B), is not: its size
depends on the runtime (the simulation engine writes UUIDs, a SuperLink content hashes and
random task ids), so leaving it out makes a round's bytes the same in simulation and in a
deployment.

An array chunk deflates to a fixed header and its bytes, so its size is counted from its
length: deflating it again would copy a `full` reply's 91 MB once more. Flower's ids
(`Array.slice_array`, hashed once and kept by the array) still decide which objects are
the same and travel once.
"""

from __future__ import annotations

import time

from flwr.app import Array, ArrayRecord, Error, Message, Metadata, RecordDict
from flwr.app.message.arraychunk import ArrayChunk
from flwr.supercore.constant import HEAD_BODY_DIVIDER, HEAD_VALUE_DIVIDER
from flwr.supercore.inflatable.inflatable_object import InflatableObject


def message_bytes(message: Message) -> int:
    """Bytes Flower carries for a message's records: every deflated object, once (0 for an
    error reply, which has none)."""
    return record_bytes(message.content) if message.has_content() else 0


def record_bytes(record: RecordDict | ArrayRecord) -> int:
    """Bytes Flower carries for a record and everything below it (arrays, chunks)."""
    sizes: dict[str, int] = {}
    _add_sizes(record, sizes)
    return sum(sizes.values())


def _add_sizes(obj: InflatableObject, sizes: dict[str, int]) -> None:
    """Each deflated object's size under its id, children first (Flower's
    `get_all_nested_objects`, without deflating chunks)."""
    if isinstance(obj, Array):
        sizes.update((chunk_id, _chunk_bytes(chunk)) for chunk_id, chunk in obj.slice_array())
    else:
        for child in (obj.children or {}).values():
            _add_sizes(child, sizes)
    sizes[obj.object_id] = len(obj.deflate())


def _chunk_bytes(chunk: ArrayChunk) -> int:
    """`ArrayChunk.deflate()`'s length: the head `ArrayChunk  <n>` (no children), the
    divider, the n bytes."""
    head = HEAD_VALUE_DIVIDER.join((type(chunk).__qualname__, "", str(len(chunk.data))))
    return len(head.encode()) + len(HEAD_BODY_DIVIDER) + chunk.data.nbytes


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
