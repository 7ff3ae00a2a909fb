"""M2-GPT vs a Transformer (GPT) at the same parameter budget: quality and throughput.

    python -m studies.m2_lm [--quick|--full] [--out DIR] [--threads T]

1. Quality: the models train on the byte-level English corpus (:mod:`structured.data`)
   for the same number of tokens (same steps, batch, schedule). M2-GPT runs with the
   block-diagonal GLU of the public M2-BERT and, as ``M2-GPT-dense``, with a dense GLU;
   each one's MLP width makes its parameter count nearest the GPT's. Reported: held-out
   loss (nats/byte), perplexity, bits per byte, and the loss relative to GPT's.
2. Throughput: inference tokens/s (same shapes as in 1, each rebuilt at every length;
   best of 10 forward passes after one warm-up, models alternated) for L = 256 … 8192,
   the crossover length where M2 becomes faster, and the ratio at L = 4096. At inference
   M2's implicit filters are computed once per length (the warm-up pass) and reused.

Targets: at L = 4096 M2 ≥ 3× the Transformer's throughput, and M2's
held-out loss within 5% of the Transformer's at equal tokens. The paper (Fu et al. 2023)
reports M2-GPT matching Transformers at 360M parameters on the PILE (GPU; no CPU numbers).
"""

from __future__ import annotations

from collections.abc import Sequence

from studies.m2_common import (
    compare_language_models,
    lm_base_config,
    lm_headline,
    lm_tables,
    lm_verdicts,
    study_args,
)
from studies.study_io import run_cli

NAME = "m2_lm"
PAPER = "Fu et al. 2023: M2-GPT matches Transformer perplexity at 360M params on the PILE"
LENGTHS = (256, 512, 1024, 2048, 4096, 8192)

#: Target verdicts from a result (see :func:`studies.m2_common.lm_verdicts`).
verdicts = lm_verdicts
#: Results block from a result (see :func:`studies.m2_common.lm_tables`).
tables = lm_tables
#: Results-index line from a result (see :func:`studies.m2_common.lm_headline`).
headline = lm_headline


def main(argv: Sequence[str] | None = None) -> dict:
    args = study_args(NAME, __doc__.split("\n\n")[0], argv)
    base = lm_base_config("lm-causal", args.full)
    return compare_language_models(args, NAME, base, ("GPT", "M2-GPT"), LENGTHS, PAPER)


if __name__ == "__main__":
    run_cli(main)
