"""``studies.report``: README.md's result blocks equal the tables rendered from
``docs/results/*.json``, and a hand edit inside a block is caught."""

import json
import re

import pytest

from studies import report

README = report.ROOT / "README.md"


def _blocks(text: str) -> dict[str, str]:
    return {m["name"]: m["body"] for m in report._BLOCK.finditer(text)}


def test_readme_matches_json_results(capsys):
    """The committed README is what ``python3 -m studies.report`` renders."""
    assert report.main(["--check"]) == 0, capsys.readouterr().out
    _, skipped = report.render(README.read_text())
    present = {p.stem for p in report.RESULTS.glob("*.json")}
    assert present, "no study results committed in docs/results/"
    assert set(_blocks(README.read_text())) >= present     # every result has a README block
    assert present.isdisjoint(skipped)


def test_hand_edit_inside_a_block_fails_the_check(tmp_path, capsys):
    text = README.read_text()
    present = {p.stem for p in report.RESULTS.glob("*.json")}
    name = sorted(present)[0]
    body = _blocks(text)[name]
    digit = re.search(r"\d", body.split("\n", 1)[1])          # a digit of a table, not the command
    assert digit is not None
    start = text.index(body) + len(body.split("\n", 1)[0]) + 1 + digit.start()
    edited = text[:start] + str((int(text[start]) + 1) % 10) + text[start + 1:]
    readme = tmp_path / "README.md"
    readme.write_text(edited)
    assert report.main(["--check", "--readme", str(readme)]) == 1
    out = capsys.readouterr().out
    assert "differs from the JSON results" in out and f"-{edited.splitlines()[0]}" not in out
    assert report.main(["--readme", str(readme)]) == 0       # re-rendering repairs it
    assert readme.read_text() == text


def test_prose_outside_blocks_is_kept_and_missing_results_are_skipped(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    row = {"test_acc_min": 0.5, "test_acc_max": 0.7, "test_loss_mean": 1.0, "seeds": 2}
    (results / "m2_vision.json").write_text(json.dumps({
        "command": "python3 -m studies.m2_vision --quick", "steps": 10, "rows": [
            {**row, "model": "ViT", "params": 10, "test_acc_mean": 0.6},
            {**row, "model": "M2-ViT", "params": 9, "test_acc_mean": 0.65}]}))
    text = ("intro 1.5\n<!-- study:m2_vision -->\nold table\n<!-- /study:m2_vision -->\n"
            "between\n<!-- study:not_yet -->\nkept as is\n<!-- /study:not_yet -->\nend\n")
    rendered, skipped = report.render(text, results)
    assert skipped == ["not_yet"]
    assert rendered.startswith("intro 1.5\n<!-- study:m2_vision -->\n`python3 -m studies.m2_vision")
    assert "old table" not in rendered and "| M2-ViT | 9 | 65.0% |" in rendered
    assert rendered.endswith("between\n<!-- study:not_yet -->\nkept as is\n"
                             "<!-- /study:not_yet -->\nend\n")
    readme = tmp_path / "README.md"
    readme.write_text(rendered)
    assert report.main(["--check", "--readme", str(readme), "--results", str(results)]) == 0
    assert "skipped study:not_yet" in capsys.readouterr().out


@pytest.mark.parametrize("text", [
    "<!-- study:a -->\nx\n",                                       # never closed
    "<!-- study:a -->\nx\n<!-- /study:b -->\n",                    # closed by another name
    "<!-- study:a -->\n<!-- /study:a -->\n<!-- study:a -->\n<!-- /study:a -->\n",  # twice
])
def test_unpaired_markers_raise(text, tmp_path):
    with pytest.raises(ValueError, match="markers"):
        report.render(text, tmp_path)


def test_multiplication_float32_uses_the_multiplication_module():
    assert report.MODULES["multiplication_float32"] == "multiplication"
