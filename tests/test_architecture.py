"""docs/architecture.md names only what exists: every file or folder path in its code
spans exists in the repository, and every dotted name of ours imports (a module, or an
attribute of one)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEXT = (ROOT / "docs" / "architecture.md").read_text()
SPANS = set(re.findall(r"`([^`\n]+)`", TEXT))
#: A path: no spaces or placeholders, and a folder separator or a file suffix.
PATHS = sorted(s for s in SPANS if re.fullmatch(r"[\w.\-/*]+", s)
               and ("/" in s or re.search(r"\.(py|md|toml|json|c)$", s)))
DOTTED = sorted(s for s in SPANS
                if re.fullmatch(r"(neuralnum|structured|kernels|studies)(\.\w+)+", s))


def test_the_page_names_paths_and_modules():
    assert len(PATHS) >= 30 and len(DOTTED) >= 5


@pytest.mark.parametrize("path", PATHS)
def test_path_exists(path: str):
    assert list(ROOT.glob(path)), f"docs/architecture.md names {path}, which does not exist"


@pytest.mark.parametrize("name", DOTTED)
def test_dotted_name_imports(name: str):
    parts = name.split(".")
    for split in range(len(parts), 0, -1):         # the longest prefix that is a module
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[split:]:
            assert hasattr(obj, attribute), f"{name}: no {attribute}"
            obj = getattr(obj, attribute)
        return
    pytest.fail(f"{name} names no module of ours")
