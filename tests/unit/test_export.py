"""The compact update file rebuilds the merged model, and only on the right backbone."""

from __future__ import annotations

import pytest
import torch

from common.config import RunConfig
from common.errors import ConfigError, MaskMismatchError
from common.export import merged_model, save_update, session_for_update
from common.session import Session
from tests.tiny import save_tiny_backbone


@pytest.fixture(scope="module")
def trained(tiny_model_dir):
    session = Session.build(RunConfig(model=str(tiny_model_dir), sparsity=0.05))
    state = {k: torch.randn_like(v) * 0.01 for k, v in session.method.state().items()}
    session.method.load(state)
    return session


def test_update_file_rebuilds_the_merged_model(trained, tmp_path):
    path = tmp_path / "update.safetensors"
    save_update(trained, trained.method.compact(), path)
    rebuilt_session, compact = session_for_update(path)
    assert rebuilt_session.fingerprint == trained.fingerprint
    inputs = {"input_ids": torch.tensor([[101, 2000, 2001, 102]])}
    trained.method.model.eval()
    with torch.no_grad():
        expected = trained.method.model(**inputs).logits
        got = merged_model(rebuilt_session, compact)(**inputs).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_update_on_another_backbone_is_refused(trained, tmp_path):
    path = tmp_path / "update.safetensors"
    save_update(trained, trained.method.compact(), path)
    other = save_tiny_backbone(tmp_path / "other", seed=1)
    with pytest.raises(MaskMismatchError, match="not the one this update was trained on"):
        session_for_update(path, model=str(other))


def test_unreadable_update_is_a_clear_error(tmp_path):
    path = tmp_path / "update.safetensors"
    path.write_text("oops")
    with pytest.raises(ConfigError, match="Cannot read update file"):
        session_for_update(path)
