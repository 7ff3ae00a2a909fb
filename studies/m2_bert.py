"""M2-BERT vs a BERT baseline at the same parameter budget: masked-LM loss and throughput.

    python -m studies.m2_bert [--quick|--full] [--out DIR] [--threads T]

Both models train with BERT masking (15% of bytes; 80% [MASK], 10% random, 10% kept) on
the byte-level English corpus for the same number of tokens; M2-BERT (block-diagonal GLU,
as the public M2-BERT) and M2-BERT-dense (dense GLU) each get the MLP width that makes
their parameter count nearest BERT's. Reported: held-out masked-LM loss and accuracy
on the masked bytes, then inference throughput of the bidirectional models (M2-BERT: one
``2L``-tap FFT long convolution per layer) and the speed-up at L = 4096.

The paper (Fu et al. 2023) reports M2-BERT matching BERT-base/large GLUE with up to 27%
fewer parameters, and up to 9.1× HuggingFace BERT's throughput at 4K tokens (≈2× over
FlashAttention at 4K; A100 GPU).
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

NAME = "m2_bert"
PAPER = ("Fu et al. 2023: M2-BERT matches BERT GLUE with up to 27% fewer params; up to 9.1x "
         "HF-BERT throughput at 4K tokens (A100)")

#: Target verdicts from a result (see :func:`studies.m2_common.lm_verdicts`).
verdicts = lm_verdicts
#: Results block from a result (see :func:`studies.m2_common.lm_tables`).
tables = lm_tables
#: Results-index line from a result (see :func:`studies.m2_common.lm_headline`).
headline = lm_headline


def main(argv: Sequence[str] | None = None) -> dict:
    args = study_args(NAME, __doc__.split("\n\n")[0], argv)
    base = lm_base_config("lm-masked", args.full)
    lengths = (256, 1024, 4096, 8192) if args.full else (256, 1024, 4096)
    return compare_language_models(args, NAME, base, ("BERT", "M2-BERT"), lengths, PAPER)


if __name__ == "__main__":
    run_cli(main)
