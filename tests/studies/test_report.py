"""``studies.report``: docs/results.md's result blocks and README.md's results index equal
what is rendered from ``docs/results/*.json``, and a hand edit inside either is caught."""

import json
import re
import shutil
import sys
import types
from pathlib import Path

import pytest

from studies import report

README = report.ROOT / "README.md"
RESULTS_MD = report.ROOT / "docs" / "results.md"


def _blocks(text: str) -> dict[str, str]:
    return {m["name"]: m["body"] for m in report._BLOCK.finditer(text)}


def _index(text: str) -> str:
    return report._INDEX.search(text)["body"]


def _copies(tmp_path: Path) -> tuple[Path, Path]:
    readme, results_md = tmp_path / "README.md", tmp_path / "results.md"
    shutil.copy(README, readme)
    shutil.copy(RESULTS_MD, results_md)
    return readme, results_md


def _bump_digit(text: str, start: int) -> str:
    """``text`` with the first digit at or after ``start`` changed."""
    at = start + re.search(r"\d", text[start:]).start()
    return text[:at] + str((int(text[at]) + 1) % 10) + text[at + 1:]


def test_both_files_match_json_results(capsys):
    """The committed files are what ``python3 -m studies.report`` renders; every result
    has a block in docs/results.md and a line in the README's index."""
    assert report.main(["--check"]) == 0, capsys.readouterr().out
    tables = RESULTS_MD.read_text()
    _, skipped = report.render(tables)
    present = {p.stem for p in report.RESULTS.glob("*.json")}
    assert present, "no study results committed in docs/results/"
    assert set(_blocks(tables)) >= present
    assert present.isdisjoint(skipped)
    index = _index(README.read_text())
    for section in report.sections(tables):
        if section.results:
            assert f"(docs/results.md#{section.anchor})" in index
    assert not _blocks(README.read_text())            # the README holds no tables


def test_hand_edit_inside_a_results_block_fails_the_check(tmp_path, capsys):
    readme, results_md = _copies(tmp_path)
    text = results_md.read_text()
    name = sorted(p.stem for p in report.RESULTS.glob("*.json"))[0]
    body = _blocks(text)[name]
    table_start = text.index(body) + body.index("\n") + 1     # past the command line
    edited = _bump_digit(text, table_start)
    results_md.write_text(edited)
    args = ["--readme", str(readme), "--results-md", str(results_md)]
    assert report.main(["--check", *args]) == 1
    out = capsys.readouterr().out
    assert "results.md differs from the JSON results" in out
    assert "README.md matches" in out
    assert report.main(args) == 0                              # re-rendering repairs it
    assert results_md.read_text() == text


def test_hand_edit_inside_the_readme_index_fails_the_check(tmp_path, capsys):
    readme, results_md = _copies(tmp_path)
    text = readme.read_text()
    edited = _bump_digit(text, text.index(_index(text)))
    readme.write_text(edited)
    args = ["--readme", str(readme), "--results-md", str(results_md)]
    assert report.main(["--check", *args]) == 1
    out = capsys.readouterr().out
    assert "README.md differs from the JSON results" in out
    assert "results.md matches" in out
    assert report.main(args) == 0
    assert readme.read_text() == text


def _vision_result(results: Path) -> None:
    row = {"test_acc_min": 0.5, "test_acc_max": 0.7, "test_loss_mean": 1.0, "seeds": 2}
    (results / "m2_vision.json").write_text(json.dumps({
        "command": "python3 -m studies.m2_vision --quick", "steps": 10, "rows": [
            {**row, "model": "ViT", "params": 10, "test_acc_mean": 0.6},
            {**row, "model": "M2-ViT", "params": 9, "test_acc_mean": 0.65}]}))


def test_prose_is_kept_and_missing_results_are_skipped(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    _vision_result(results)
    tables = ('intro 1.5\n<a id="vision"></a>\n## Vision\n\n<!-- study:m2_vision -->\n'
              'old table\n<!-- /study:m2_vision -->\nbetween\n<a id="later"></a>\n## Later\n'
              '<!-- study:not_yet -->\nkept as is\n<!-- /study:not_yet -->\n'
              '<a id="prose"></a>\n## Prose only\nend\n')
    rendered, skipped = report.render(tables, results)
    assert skipped == ["not_yet"]
    assert rendered.startswith('intro 1.5\n<a id="vision"></a>\n## Vision\n\n'
                               "<!-- study:m2_vision -->\n`python3 -m studies.m2_vision")
    assert "old table" not in rendered and "| M2-ViT | 9 | 65.0% |" in rendered
    assert rendered.endswith("between\n" + tables.split("between\n")[1])
    readme = "# x\n<!-- results-index -->\nold\n<!-- /results-index -->\nafter\n"
    assert report.render_readme(readme, rendered, results) == (
        "# x\n<!-- results-index -->\n"
        "- [Vision](docs/results.md#vision): M2-ViT 65.0% vs ViT 60.0% test accuracy with "
        "9 vs 10 parameters (8×8 digits)\n"
        "- [Later](docs/results.md#later): no result yet\n"
        "<!-- /results-index -->\nafter\n")
    (tmp_path / "results.md").write_text(rendered)
    (tmp_path / "README.md").write_text(report.render_readme(readme, rendered, results))
    assert report.main(["--check", "--readme", str(tmp_path / "README.md"), "--results-md",
                        str(tmp_path / "results.md"), "--results", str(results)]) == 0
    assert "skipped study:not_yet" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(p.stem for p in report.RESULTS.glob("*.json")))
def test_every_committed_result_has_a_one_line_headline(name):
    line = report.headline(name)
    assert line and "\n" not in line


def test_a_study_without_headline_is_indexed_by_its_targets(tmp_path, monkeypatch):
    module = types.ModuleType("studies.plain_study")
    module.tables = lambda result: "a table\n"
    module.verdicts = lambda result: {"one": True, "two": False}
    monkeypatch.setitem(sys.modules, "studies.plain_study", module)
    (tmp_path / "plain_study.json").write_text(json.dumps({"command": "python3 -m x"}))
    assert report.headline("plain_study", tmp_path) == "`python3 -m x`: 1 of 2 targets met"
    (tmp_path / "plain_study.json").write_text("{}")
    assert report.headline("plain_study", tmp_path) == "1 of 2 targets met"
    assert report.headline("absent", tmp_path) is None


@pytest.mark.parametrize("text", [
    "<!-- study:a -->\nx\n",                                       # never closed
    "<!-- study:a -->\nx\n<!-- /study:b -->\n",                    # closed by another name
    "<!-- study:a -->\n<!-- /study:a -->\n<!-- study:a -->\n<!-- /study:a -->\n",  # twice
])
def test_unpaired_markers_raise(text, tmp_path):
    with pytest.raises(ValueError, match="markers"):
        report.render(text, tmp_path)


def test_a_block_outside_any_section_and_a_readme_without_index_raise(tmp_path):
    with pytest.raises(ValueError, match="before the first section"):
        report.sections("<!-- study:a -->\nx\n<!-- /study:a -->\n")
    with pytest.raises(ValueError, match="results-index"):
        report.render_readme("# no index\n", "", tmp_path)


def test_multiplication_float32_uses_the_multiplication_module():
    assert report.MODULES["multiplication_float32"] == "multiplication"
