"""The coded download (`--download-codec`, `common.download`, `client/view.py`): the
server's error feedback, the client's view and its checks, and the fp32 default unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, RecordDict

from client.view import VIEW, received_state
from common import protocol as p
from common.codecs import CHUNK, TernaryCodec
from common.config import RunConfig
from common.download import advance, coded_change
from common.errors import ConfigError, UpdateError
from common.session import Session
from common.updates import VALUES, encode_update
from server.strategy import VIEW_PREFIX, FedPafiStrategy

LAYOUT = {"pafi.delta": ((2 * CHUNK,), torch.float32), "head.w": ((2, 5), torch.float32)}


class Grid:
    """The part of Flower's Grid that sampling reads."""

    def get_node_ids(self) -> list[int]:
        return [11, 22]


def _context() -> Context:
    return Context(run_id=1, node_id=11, node_config={}, state=RecordDict(), run_config={})


def _strategy(tiny_model_dir, download: str) -> FedPafiStrategy:
    cfg = RunConfig(model=str(tiny_model_dir), sparsity=0.05, num_clients=2,
                    download_codec=download)
    return FedPafiStrategy(Session.build(cfg))


def _send(strategy: FedPafiStrategy, server_round: int) -> list:
    return strategy.configure_train(server_round, strategy.global_arrays(),
                                    strategy.base_config(), Grid())


def test_what_the_codec_drops_goes_out_in_later_rounds():
    """The state stays put; the view gets closer each round, and what is left is exactly
    what the last coding dropped."""
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=gen) for k, (shape, _) in LAYOUT.items()}
    view = {k: torch.zeros(shape) for k, (shape, _) in LAYOUT.items()}
    codec, gaps = TernaryCodec(0.3), []
    for _ in range(4):
        change = {k: state[k] - view[k] for k in LAYOUT}
        arrays, new_view = coded_change(state, view, codec, LAYOUT)
        sent = {k: new_view[k] - view[k] for k in LAYOUT}
        for key in LAYOUT:  # the client builds the same view from the same bytes
            assert torch.equal(advance(view, arrays, codec, LAYOUT)[key], new_view[key])
            torch.testing.assert_close(state[key] - new_view[key], change[key] - sent[key])
        view = new_view
        gaps.append(float(sum((state[k] - view[k]).norm() ** 2 for k in LAYOUT) ** 0.5))
    assert all(later < 0.9 * earlier for earlier, later in zip(gaps, gaps[1:])), gaps


def test_a_client_follows_the_servers_view(tiny_model_dir, server_process):
    strategy, context = _strategy(tiny_model_dir, "ternary"), _context()
    session = strategy.session
    for server_round in (1, 2):
        (message, _) = _send(strategy, server_round)
        assert (p.VIEW_BASE in message.content[p.CONFIG]) == (server_round == 2)
        view = received_state(message.content, context, session)
        assert all(torch.equal(view[k], strategy.view[k]) for k in strategy.view)
        strategy.holds[11] = strategy.holds[22] = server_round  # as their replies say
        strategy.state = {k: v + 0.01 * torch.randn_like(v) for k, v in strategy.state.items()}
    kept = context.state[VIEW].to_torch_state_dict()
    assert all(torch.equal(kept[k], strategy.view[k]) for k in strategy.view)


def test_a_change_the_client_cannot_apply_is_refused(tiny_model_dir, server_process):
    strategy = _strategy(tiny_model_dir, "ternary")
    session, behind, new = strategy.session, _context(), _context()
    received_state(_send(strategy, 1)[0].content, behind, session)
    strategy.holds = {11: 1, 22: 1}
    (change, _) = _send(strategy, 2)  # a change of round 1's view; `behind` misses it
    with pytest.raises(UpdateError, match="change of round 1's view, but this client holds no"):
        received_state(change.content, new, session)
    assert VIEW not in new.state
    strategy.holds = {11: 2, 22: 2}
    (change, _) = _send(strategy, 3)
    with pytest.raises(UpdateError, match="change of round 2's view, but this client holds "
                                          "the view of round 1"):
        received_state(change.content, behind, session)


def test_a_malformed_change_is_refused(tiny_model_dir, server_process):
    strategy, context = _strategy(tiny_model_dir, "ternary"), _context()
    received_state(_send(strategy, 1)[0].content, context, strategy.session)
    strategy.holds = {11: 1, 22: 1}
    (message, _) = _send(strategy, 2)
    values = message.content[p.ARRAYS][VALUES].numpy()
    message.content[p.ARRAYS][VALUES] = Array(values[:-3])  # the positions cut short
    with pytest.raises(UpdateError):
        received_state(message.content, context, strategy.session)
    message.content[p.ARRAYS] = ArrayRecord({VALUES: Array(np.ones(4, np.float32))})
    with pytest.raises(UpdateError, match="ternary update is one flat uint8 array"):
        received_state(message.content, context, strategy.session)


def test_the_fp32_default_sends_the_whole_state_as_before(tiny_model_dir, server_process):
    strategy, context = _strategy(tiny_model_dir, "fp32"), _context()
    assert RunConfig().download_codec == "fp32" and strategy.download is None
    for server_round in (1, 2):
        messages = _send(strategy, server_round)
        assert messages[0].content is messages[1].content  # one record for every client
        assert p.VIEW_BASE not in messages[0].content[p.CONFIG]
        arrays = messages[0].content[p.ARRAYS]
        assert np.array_equal(arrays[VALUES].numpy(), strategy.global_arrays()[VALUES].numpy())
        state = received_state(messages[0].content, context, strategy.session)
        assert all(torch.equal(state[k], strategy.state[k]) for k in strategy.state)
        assert strategy.traffic[server_round].whole_downloads is None
    assert len(context.state) == 0 and strategy.view is None
    assert not any(k.startswith(VIEW_PREFIX) for k in strategy.checkpoint())


def test_the_checkpoint_keeps_the_view(tiny_model_dir, server_process):
    strategy = _strategy(tiny_model_dir, "ternary")
    _send(strategy, 1)
    resumed = _strategy(tiny_model_dir, "ternary")
    resumed.resume(1, strategy.checkpoint())
    assert all(torch.equal(resumed.view[k], strategy.view[k]) for k in strategy.view)
    assert resumed.holds == {} and resumed.view_round == 1


@pytest.mark.parametrize("settings, reason", [
    ({"secagg": True, "num_clients": 3}, "secagg's workflow sends every client the same"),
    ({"method": "sparse-local"}, "sparse-local sends its state as the union"),
])
def test_settings_a_coded_download_cannot_serve_are_refused(settings, reason):
    with pytest.raises(ConfigError, match=reason):
        RunConfig(download_codec="ternary", **settings).validate()


def test_encoded_change_of_a_wrong_layout_is_refused():
    arrays = encode_update({"head.w": torch.ones(2, 5)}, TernaryCodec(),
                           {"head.w": ((2, 5), torch.float32)})
    view = {k: torch.zeros(shape) for k, (shape, _) in LAYOUT.items()}
    with pytest.raises(UpdateError, match="holds 10 values"):
        advance(view, arrays, TernaryCodec(), LAYOUT)
