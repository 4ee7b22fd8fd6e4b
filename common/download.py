"""The download as a coded change (`--download-codec ternary`), in the update's codec.

The server keeps the *client view*: the state its clients hold, which is what they train
from. Each round it codes the difference between the global state and that view, sends it
to the clients that hold the view, and advances the view by what it sent, decoded. It codes
state - view, not state - previous state, so whatever the codec dropped stays in the next
round's difference and goes out later: error feedback on the server's side, for free, and
the view never trails the global state by more than one round's coding error.

A client that does not hold the previous view (not sampled last round, new, or in a resumed
run) receives the new view whole, in fp32, and ends on the same view as the others, bit for
bit: both sides build a view with `advance`. Clients therefore start their local training
from a slightly lossy copy of the global state; the server evaluates and exports the global
state itself.

A leaf module like `common.updates`: torch and numpy only.
"""

from __future__ import annotations

import numpy as np

from common.codecs import Codec
from common.updates import Layout, State, add, decode_update, encode_update


def coded_change(state: State, view: State, codec: Codec,
                 layout: Layout) -> tuple[dict[str, np.ndarray], State]:
    """The coded change from `view` to `state`, and the view it builds (the next one)."""
    change = {key: state[key].float() - view[key] for key in layout}
    arrays = encode_update(change, codec, layout)
    return arrays, advance(view, arrays, codec, layout)


def advance(view: State, arrays: dict[str, np.ndarray], codec: Codec, layout: Layout) -> State:
    """The view a coded change builds from `view`, the same on the server and a client; a
    malformed change is an UpdateError that says why."""
    return add(view, decode_update(arrays, codec, layout))
