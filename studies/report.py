"""Render README.md's result tables from the studies' JSON results.

    python3 -m studies.report            # rewrite README.md in place
    python3 -m studies.report --check    # exit 1 and print a diff if README.md differs

README.md marks each study's block as::

    <!-- study:NAME -->
    ... generated: do not edit by hand ...
    <!-- /study:NAME -->

and the text between the markers is replaced by ``tables(result)`` of the study module
(``studies.<module>``, :data:`MODULES` maps the few names that differ), with ``result``
loaded from ``docs/results/NAME.json``. A block whose JSON is not there yet is left as it
is (with a message), so ``--check`` compares what exists. Prose outside the markers is
never touched.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from neuralnum.core.entry import add_debug_flag
from neuralnum.core.runtime import atomic_write_text
from studies.study_io import run_cli

__all__ = ["MODULES", "RESULTS", "render", "render_block"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
#: README block name → study module, where they differ (one study, several results).
MODULES = {"multiplication_float32": "multiplication", "recipe_30min": "recipe",
           "demo_baseconv": "demo"}

_BLOCK = re.compile(r"(<!-- study:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /study:(?P=name) -->)",
                    re.DOTALL)


def render_block(name: str, results: Path = RESULTS) -> str | None:
    """``tables(result)`` for README block ``name``; ``None`` if its JSON is missing."""
    path = results / f"{name}.json"
    if not path.is_file():
        return None
    module = importlib.import_module(f"studies.{MODULES.get(name, name)}")
    text = module.tables(json.loads(path.read_text()))
    return text.rstrip("\n") + "\n"


def render(text: str, results: Path = RESULTS) -> tuple[str, list[str]]:
    """``text`` with every study block re-rendered; also the names of blocks skipped for
    want of a JSON result. Raises ``ValueError`` on an unclosed or unknown marker."""
    opened = re.findall(r"<!-- study:([\w-]+) -->", text)
    closed = re.findall(r"<!-- /study:([\w-]+) -->", text)
    if sorted(opened) != sorted(closed) or len(set(opened)) != len(opened):
        raise ValueError(f"README study markers do not pair up: opened {opened}, "
                         f"closed {closed}")
    skipped: list[str] = []

    def replace(match: re.Match) -> str:
        body = render_block(match["name"], results)
        if body is None:
            skipped.append(match["name"])
            return match[0]
        return match[1] + body + match[4]

    rendered = _BLOCK.sub(replace, text)
    return rendered, skipped


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
                        help="do not write; exit 1 (printing a diff) if README.md differs")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--results", type=Path, default=RESULTS)
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    rendered, skipped = render(text, args.results)
    for name in skipped:
        print(f"skipped study:{name}: {args.results / (name + '.json')} not found")
    if args.check:
        if rendered == text:
            print(f"{args.readme.name} matches the JSON results")
            return 0
        sys.stdout.writelines(difflib.unified_diff(
            text.splitlines(keepends=True), rendered.splitlines(keepends=True),
            f"{args.readme.name} (as is)", f"{args.readme.name} (rendered from JSON)"))
        print(f"\n{args.readme.name} differs from the JSON results: run "
              f"`python3 -m studies.report`")
        return 1
    if rendered != text:
        atomic_write_text(args.readme, rendered)
        print(f"rewrote {args.readme}")
    else:
        print(f"{args.readme.name} already up to date")
    return 0


if __name__ == "__main__":
    run_cli(main)
