"""The client's side of the coded download (`--download-codec`, `common.download`): the
view it holds, and the state each instruction brings.

With `fp32` an instruction carries the whole global state, as always. Otherwise it carries
either the new view whole (fp32, no `VIEW_BASE` in its config) or the coded change from
the view of round `VIEW_BASE`, which the client must hold. The view lives in
`context.state`, the RecordDict Flower keeps per node between the rounds of a run, with
its round; the reply says which round's view the client now holds (`VIEW_ROUND`), so the
server sends a change only to a node that told it so.

The view is not written to the run folder as the residue is (`client/residue.py`): a
resumed run is a new Flower run whose nodes have new ids, so its server cannot tell which
node holds which partition's view, and sends every client of its first round the whole
view. That view equals what the change would have built, so a resumed run stays
bit-identical; only that round's download bytes are higher.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

from common import protocol as p
from common.codecs import download_codec
from common.download import advance
from common.errors import UpdateError
from common.updates import State, unpack_state

if TYPE_CHECKING:  # the model libraries load with the round, not with the app
    from common.session import Session

VIEW = "fedpafi.view"
VIEW_AT = "fedpafi.view-round"  # ConfigRecord {ROUND: the round the view was received}


def received_state(content: RecordDict, context: Context, session: Session) -> State:
    """The state to train from: the global state (fp32 download), or the new view, which
    the client keeps for the next change."""
    method, config = session.method, content[p.CONFIG]
    arrays = {k: a.numpy() for k, a in content[p.ARRAYS].items()}
    codec = download_codec(session.cfg)
    if codec is None:
        return unpack_state(arrays, method.layout, method.sparse_wire)
    if p.VIEW_BASE not in config:
        view = unpack_state(arrays, method.layout)
    else:
        view = advance(_held(context, int(config[p.VIEW_BASE])), arrays, codec, method.layout)
    context.state[VIEW] = ArrayRecord(view)
    context.state[VIEW_AT] = ConfigRecord({p.ROUND: int(config[p.ROUND])})
    return view


def _held(context: Context, base: int) -> State:
    """The view of round `base` this client holds, or an UpdateError."""
    held = int(context.state[VIEW_AT][p.ROUND]) if VIEW_AT in context.state else None
    if held != base:
        have = f"the view of round {held}" if held is not None else "no view"
        raise UpdateError(f"the download is a coded change of round {base}'s view, but this "
                          f"client holds {have}; the server must send it the whole state.")
    return context.state[VIEW].to_torch_state_dict()
