"""The README's Architecture section stays true: every file and folder it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# a backticked path: a name with a slash in it, or a Python file
PATH = re.compile(r"`([\w.-]+/[\w./<>-]*|[\w-]+\.py)`")


def _section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def _named_paths(section: str) -> set[str]:
    """A name with a slash is a path from the project's root; a bare `x.py` lies in the
    folder named last before it (as in "`common/methods/pafi/` holds `mask.py`")."""
    paths, folder = set(), ""
    for name in PATH.findall(section):
        if "<" in name:  # a pattern such as common/methods/<name>.py
            continue
        if "/" in name:
            folder = name if name.endswith("/") else name.rsplit("/", 1)[0] + "/"
            paths.add(name)
        else:
            paths.add(folder + name)
    return paths


def test_every_module_the_architecture_section_names_exists():
    paths = _named_paths(_section("Architecture"))
    assert {"server/app.py", "common/methods/pafi/mask.py", "client/faults.py"} <= paths
    missing = sorted(path for path in paths if not (ROOT / path).exists())
    assert missing == []
