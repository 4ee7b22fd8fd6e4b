"""The compact update file rebuilds the merged model, and only on the right backbone."""

from __future__ import annotations

import pytest
import torch

from common.codecs import CODECS
from common.config import RunConfig
from common.errors import ConfigError, MaskMismatchError
from common.export import merged_model, save_checkpoint, save_update, session_for_update
from common.methods import METHODS
from common.model import load_backbone
from common.session import Session
from common.updates import add, decode_update, encode_update
from tests.tiny import save_tiny_backbone


@pytest.fixture(scope="module")
def trained(tiny_model_dir):
    session = Session.build(RunConfig(model=str(tiny_model_dir), sparsity=0.05))
    state = {k: torch.randn_like(v) * 0.01 for k, v in session.method.state().items()}
    session.method.load(state)
    return session


def assert_update_file_rebuilds(session: Session, folder) -> Session:
    """Save the session's update file, rebuild the model from it, compare the outputs."""
    path = folder / "update.safetensors"
    save_update(session, session.method.compact(), path)
    rebuilt_session, compact = session_for_update(path)
    inputs = {"input_ids": torch.tensor([[101, 2000, 2001, 102]])}
    session.method.model.eval()
    with torch.no_grad():
        expected = session.method.model(**inputs).logits
        got = merged_model(rebuilt_session, compact)(**inputs).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    return rebuilt_session


def test_update_file_rebuilds_the_merged_model(trained, tmp_path):
    assert assert_update_file_rebuilds(trained, tmp_path).fingerprint == trained.fingerprint


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


EXPORTED = [*((m, {}) for m in METHODS if m != "lora-ts"),  # refuses (test_lora_ts)
            ("shira", {"shira_mask": "magnitude"})]


@pytest.mark.parametrize("method, extra, codec", [
    (method, extra, codec) for method, extra in EXPORTED for codec in CODECS
    if (method, codec) != ("sparse-local", "ternary")])  # refused: it sends its own indices
def test_every_method_and_codec_exports_a_plain_checkpoint(tiny_model_dir, tmp_path, method,
                                                           extra, codec):
    """Update through the codec, merge, save: plain transformers loads it, same outputs."""
    from transformers import AutoModelForSequenceClassification

    session = Session.build(RunConfig(model=str(tiny_model_dir), method=method, codec=codec,
                                      sparsity=0.05, shira_r=4, **extra))
    gen = torch.Generator().manual_seed(0)
    update = {k: torch.randn(v.shape, generator=gen) * 0.05
              for k, v in session.method.state().items()}
    layout, sparse = session.method.layout, session.method.sparse_wire
    wire = decode_update(encode_update(update, session.codec, layout, sparse), session.codec,
                         layout, sparse)
    session.method.load(add(session.method.state(), wire))
    save_checkpoint(session, session.method.compact(), tmp_path / "model")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model").eval()
    reference = load_backbone(str(tiny_model_dir), session.task, seed=0).model
    assert set(loaded.state_dict()) == set(reference.state_dict())  # nothing extra left
    inputs = {"input_ids": torch.tensor([[101, 2000, 2001, 102], [101, 2054, 102, 0]]),
              "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])}
    session.method.model.eval()
    with torch.no_grad():
        expected = session.method.model(**inputs).logits
        assert not torch.allclose(reference.eval()(**inputs).logits, expected, atol=1e-4)
        torch.testing.assert_close(loaded(**inputs).logits, expected, atol=1e-5, rtol=0)
