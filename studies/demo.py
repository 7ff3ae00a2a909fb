"""Results of the main job, ``python3 -m neuralnum demo``.

The demo lives in :mod:`neuralnum.cli`: it learns a GD step from a random init, then
solves held-out problems with CG on the learned operator and with scipy, both judged by
mpmath, and writes ``demo.json`` beside its checkpoint (``runs/demo/demo.json``);
``docs/results/demo.json`` keeps the copy docs/results.md renders. Run the demo to
reproduce it; this module only renders it (:func:`tables`, :func:`headline`) and judges
it (:func:`verdicts`).
"""

from __future__ import annotations

from typing import Any

from studies.markdown import command, fixed, sci, table

__all__ = ["NAME", "headline", "tables", "verdicts"]

NAME = "demo"


def verdicts(result: dict[str, Any]) -> dict[str, bool]:
    """``learned solver as accurate as scipy``: the learned solver's median digits vs
    mpmath are within 0.5 of scipy's on the same problems."""
    return {"learned solver as accurate as scipy (within 0.5 digit)":
            result["learned"]["digits"] >= result["scipy"]["digits"] - 0.5}


def headline(result: dict[str, Any]) -> str:
    """The results-index line: the learned solver's median digits beside scipy's."""
    return (f"learned {result['method'].upper()} {fixed(result['learned']['digits'])} "
            f"digits vs scipy {fixed(result['scipy']['digits'])} "
            f"({result['arch'].replace('_', ' ')}, {result['dtype']})")


def tables(result: dict[str, Any]) -> str:
    """The learned-vs-scipy table of a demo result, and its verdict."""
    learned, scipy = result["learned"], result["scipy"]
    what = (f"{result['arch']} ({result['dtype']}) learns the GD update from a random init "
            f"({result['steps']} steps, {result['train_seconds']:.0f} s; one-step MSE "
            f"{sci(result['one_step_mse'])}), then solves {result['problems']} held-out "
            f"`{result['family']}` problems by {result['method'].upper()} on the learned "
            f"operator; MSE is the mean, relative error, digits, iterations and model calls "
            f"the median")
    rows = [[f"learned operator, {result['method'].upper()}", sci(learned["mse"]),
             sci(learned["rel_error"]), fixed(learned["digits"]),
             fixed(learned["iterations"], 0), fixed(learned["model_calls"], 0)],
            ["`scipy.linalg.lstsq`", sci(scipy["mse"]), sci(scipy["rel_error"]),
             fixed(scipy["digits"]), "—", "—"]]
    lines = [command(result, what), "",
             table(["solver", "MSE vs mpmath", "relative error", "digits", "iterations",
                    "model calls"], rows), ""]
    lines += [f"- {name}: **{'met' if met else 'not met'}**"
              for name, met in verdicts(result).items()]
    return "\n".join(lines) + "\n"
