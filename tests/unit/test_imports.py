"""Import structure: the leaf modules stay light, and the methods never import the settings.

Each check runs in a fresh interpreter: this one has imported everything already.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# what the server's validation path and anything that only handles settings or states needs
LEAVES = ("common.errors", "common.protocol", "common.config", "common.codecs",
          "common.updates", "common.server_opt", "common.aggregators")
MODEL_LIBRARIES = ("peft", "transformers", "datasets", "flwr_datasets")
HEAVY = (*MODEL_LIBRARIES, "flwr")


def _loaded_after(imports: str, names: tuple[str, ...]) -> list[str]:
    """Which of `names` are in sys.modules after `imports` in a fresh interpreter."""
    code = f"import sys\n{imports}\nprint(','.join(n for n in {names!r} if n in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    return [name for name in done.stdout.strip().split(",") if name]


def test_leaf_modules_import_no_model_library_and_no_flower():
    assert _loaded_after("\n".join(f"import {m}" for m in LEAVES), HEAVY) == []


def test_the_methods_do_not_import_the_settings():
    """config checks method names against the registry; nothing under common.methods
    imports config back at run time (RunConfig appears in annotations only)."""
    assert _loaded_after("import common.methods", ("common.config",)) == []


def test_peft_is_imported_only_by_a_method_that_uses_it():
    """Every Ray worker imports the ClientApp; peft costs ~2 s there for pafi-hiwi."""
    assert _loaded_after("import client.train_round\nimport server.app", ("peft",)) == []


def test_the_client_app_loads_no_model_library_until_a_round_trains():
    """Under a SuperNode every message starts a ClientApp process: SecAgg+'s key stages
    (three of its four) never train, and transformers and datasets take seconds to load."""
    assert _loaded_after("import client.app", MODEL_LIBRARIES) == []
