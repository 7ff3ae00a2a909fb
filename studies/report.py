"""Render the studies' results from their JSON into docs/results.md and README.md.

    python3 -m studies.report            # rewrite both files in place
    python3 -m studies.report --check    # exit 1 and print a diff if either file differs

``docs/results.md`` holds every result table. It has one section per study, opened by
an anchor and a heading::

    <a id="demo"></a>
    ## Learning a GD step and solving with it

and marks each of the section's results as::

    <!-- study:NAME -->
    ... generated: do not edit by hand ...
    <!-- /study:NAME -->

The text between the markers is replaced by ``tables(result)`` of the study module
(``studies.<module>``, :data:`MODULES` maps the few names that differ), with ``result``
loaded from ``docs/results/NAME.json``. A block whose JSON is not there yet is left as it
is (with a message), so ``--check`` compares what exists.

``README.md`` holds the results index, one generated block::

    <!-- results-index -->
    ... generated ...
    <!-- /results-index -->

whose text is one line per section of docs/results.md that has results: the section's
heading, linked to its anchor, and the ``headline(result)`` of each of its results (a
study module without a ``headline`` gets the count of its targets met). Prose outside
the markers of either file is never touched.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from neuralnum.core.entry import add_debug_flag
from neuralnum.core.runtime import atomic_write_text
from studies.markdown import targets_met
from studies.study_io import run_cli

__all__ = ["INDEX_LINK", "MODULES", "RESULTS", "Section", "headline", "render",
           "render_block", "render_index", "render_readme", "sections"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
#: Result name → study module, where they differ (one study, several results).
MODULES = {"multiplication_float32": "multiplication", "recipe_30min": "recipe",
           "demo_baseconv": "demo"}
#: Where the README's index links to (relative to README.md).
INDEX_LINK = "docs/results.md"

_BLOCK = re.compile(r"(<!-- study:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /study:(?P=name) -->)",
                    re.DOTALL)
_INDEX = re.compile(r"(<!-- results-index -->\n)(?P<body>.*?)(<!-- /results-index -->)",
                    re.DOTALL)
_SECTION = re.compile(r'^<a id="(?P<anchor>[\w-]+)"></a>\n#+ (?P<title>.+)$', re.MULTILINE)


@dataclass
class Section:
    """A section of docs/results.md: its anchor, its heading and its results, in order."""

    anchor: str
    title: str
    results: list[str] = field(default_factory=list)


def _load(name: str, results: Path) -> tuple[ModuleType, dict[str, Any]] | None:
    """The study module of result ``name`` and the result; ``None`` if its JSON is missing."""
    path = results / f"{name}.json"
    if not path.is_file():
        return None
    module = importlib.import_module(f"studies.{MODULES.get(name, name)}")
    return module, json.loads(path.read_text())


def render_block(name: str, results: Path = RESULTS) -> str | None:
    """``tables(result)`` for block ``name``; ``None`` if its JSON is missing."""
    loaded = _load(name, results)
    if loaded is None:
        return None
    module, result = loaded
    return module.tables(result).rstrip("\n") + "\n"


def headline(name: str, results: Path = RESULTS) -> str | None:
    """``headline(result)`` of result ``name``; where its module has no ``headline``, the
    count of its targets met (after the result's command, if it names one). ``None`` if
    its JSON is missing."""
    loaded = _load(name, results)
    if loaded is None:
        return None
    module, result = loaded
    if hasattr(module, "headline"):
        return module.headline(result)
    met = targets_met(module.verdicts(result))
    return f"`{result['command']}`: {met}" if "command" in result else met


def render(text: str, results: Path = RESULTS) -> tuple[str, list[str]]:
    """``text`` with every study block re-rendered; also the names of blocks skipped for
    want of a JSON result. Raises ``ValueError`` on an unclosed or unknown marker."""
    opened = re.findall(r"<!-- study:([\w-]+) -->", text)
    closed = re.findall(r"<!-- /study:([\w-]+) -->", text)
    if sorted(opened) != sorted(closed) or len(set(opened)) != len(opened):
        raise ValueError(f"study markers do not pair up: opened {opened}, closed {closed}")
    skipped: list[str] = []

    def replace(match: re.Match) -> str:
        body = render_block(match["name"], results)
        if body is None:
            skipped.append(match["name"])
            return match[0]
        return match[1] + body + match[4]

    rendered = _BLOCK.sub(replace, text)
    return rendered, skipped


def sections(text: str) -> list[Section]:
    """The sections of docs/results.md (``text``) and the study blocks in each; a block
    before the first section raises ``ValueError``."""
    found: list[Section] = []
    marks = [(m.start(), "section", m) for m in _SECTION.finditer(text)]
    marks += [(m.start(), "block", m) for m in _BLOCK.finditer(text)]
    for _, kind, match in sorted(marks, key=lambda mark: mark[0]):
        if kind == "section":
            found.append(Section(match["anchor"], match["title"].strip()))
        elif not found:
            raise ValueError(f"study block {match['name']!r} comes before the first section "
                             f"(<a id=\"...\"></a> and a heading)")
        else:
            found[-1].results.append(match["name"])
    return found


def render_index(results_text: str, results: Path = RESULTS) -> str:
    """The README's results index: per section of ``results_text`` (docs/results.md) that
    has results, its linked heading and the headlines of the results whose JSON exists."""
    lines = []
    for section in sections(results_text):
        if not section.results:
            continue
        found = [headline(name, results) for name in section.results]
        text = "; ".join(h for h in found if h is not None) or "no result yet"
        lines.append(f"- [{section.title}]({INDEX_LINK}#{section.anchor}): {text}")
    return "\n".join(lines) + "\n"


def render_readme(text: str, results_text: str, results: Path = RESULTS) -> str:
    """``text`` (README.md) with its results index re-rendered from ``results_text``
    (docs/results.md) and the JSON; ``ValueError`` unless it has exactly one index."""
    if len(_INDEX.findall(text)) != 1:
        raise ValueError("README needs exactly one <!-- results-index --> … "
                         "<!-- /results-index --> block")
    body = render_index(results_text, results)
    return _INDEX.sub(lambda match: match[1] + body + match[3], text)


def _report(path: Path, text: str, rendered: str, check: bool) -> bool:
    """Compare (``check``) or write ``path``'s rendering; ``False`` on a failed check."""
    if check:
        if rendered == text:
            print(f"{path.name} matches the JSON results")
            return True
        sys.stdout.writelines(difflib.unified_diff(
            text.splitlines(keepends=True), rendered.splitlines(keepends=True),
            f"{path.name} (as is)", f"{path.name} (rendered from JSON)"))
        print(f"\n{path.name} differs from the JSON results: run `python3 -m studies.report`")
        return False
    if rendered != text:
        atomic_write_text(path, rendered)
        print(f"rewrote {path}")
    else:
        print(f"{path.name} already up to date")
    return True


_EXAMPLES = """examples:
  python -m studies.report --check
  python -m studies.report
  python -m studies.report --check --results docs/results --readme README.md
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.report", description=__doc__,
                                     epilog=_EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 (printing a diff) if either file differs")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--results-md", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--results", type=Path, default=RESULTS)
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    tables_text, readme_text = args.results_md.read_text(), args.readme.read_text()
    tables_rendered, skipped = render(tables_text, args.results)
    readme_rendered = render_readme(readme_text, tables_rendered, args.results)
    for name in skipped:
        print(f"skipped study:{name}: {args.results / (name + '.json')} not found")
    ok = [_report(args.results_md, tables_text, tables_rendered, args.check),
          _report(args.readme, readme_text, readme_rendered, args.check)]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    run_cli(main)
