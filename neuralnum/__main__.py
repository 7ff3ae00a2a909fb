"""``python -m neuralnum``: the command line of :mod:`neuralnum.cli`."""

from neuralnum.cli import run

run()
