"""The CLI: bad input is one clear line and exit 2; `mask` writes the mask the server uses."""

from __future__ import annotations

import pytest

from common.config import RunConfig
from common.methods.pafi import Mask
from common.session import Session
from simulations.cli import main


@pytest.mark.parametrize("args, message", [
    (["simulate", "--method", "lorax"],
     "Unknown method 'lorax'. Allowed: full, bitfit, lora, lora-ts, pafi"),
    (["simulate", "--task", "imdb"], "Unknown task 'imdb'"),
    (["simulate", "--codec", "zip"], "Unknown codec 'zip'"),
    (["simulate", "--rounds", "two"], "'rounds' expects int"),
    (["simulate", "--model", "/no/such/model"], "Unknown model '/no/such/model'"),
    (["simulate", "--data-dir", "/no/such/glue"], "/no/such/glue"),
    (["simulate", "--method", "lora-ts", "--token-merge", "4"], "--token-merge 0 with lora-ts"),
    (["evaluate", "--task", "sst2", "--token-merge", "-1"], "token-merge is the token pairs"),
])
def test_bad_input_is_one_clear_line(args, message, capsys, tiny_model_dir):
    if "--model" not in args:
        args = [*args, "--model", str(tiny_model_dir)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedpafi: error: ") and message in err
    assert "Traceback" not in err


def test_missing_split_names_the_file(capsys, glue_dir, tiny_model_dir):
    assert main(["simulate", "--task", "qnli", "--data-dir", str(glue_dir),
                 "--model", str(tiny_model_dir)]) == 2
    assert "QNLI/train.tsv" in capsys.readouterr().err


def test_mask_command_saves_the_mask_the_server_holds(tmp_path, capsys, tiny_model_dir):
    out = tmp_path / "mask.safetensors"
    assert main(["mask", "--model", str(tiny_model_dir), "--sparsity", "0.02",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    saved = Mask.load(out)
    server = Session.build(RunConfig(model=str(tiny_model_dir), sparsity=0.02, method="pafi"))
    assert saved.fingerprint == server.fingerprint
    assert f"fingerprint {saved.fingerprint}" in printed and f"k = {saved.k:,}" in printed
    assert printed.count(".weight") == len(saved.indices)  # one table row per tensor


@pytest.mark.parametrize("command, meaning", [
    ("simulate", "parent folder of the run folder: the run writes OUT/RUN-NAME/"),
    ("compare", "parent folder of the comparison folder: it writes OUT/RUN-NAME/"),
    ("deploy-local", "parent folder of the run folder (OUT/RUN-NAME/)"),
    ("mask", "the mask file to write"),
    ("export", "the checkpoint folder itself"),
])
def test_every_out_says_what_it_names(command, meaning, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert meaning in " ".join(capsys.readouterr().out.split())
