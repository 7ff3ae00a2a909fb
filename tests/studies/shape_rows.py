"""Synthetic results of the shape-general part of vs_scipy (studies.lsq_shapes), for the
studies' tests."""

from studies import lsq_shapes


def shape_row(family: str, n: int, d: int, dtype: str = "float64", kappa: float = 2.0,
              **values: float) -> dict:
    """A synthetic row of :func:`studies.lsq_shapes.run_grid`: 15 digits everywhere, 10
    iterations, 21 calls; ``values`` override any field."""
    row = {"family": family, "n": n, "d": d, "dtype": dtype, "problems": 4,
           "judge": "mpmath" if n * d <= 400 else "gelsd + 2 dd refinements",
           "judge_correction": None if n * d <= 400 else 1e-17, "kappa": kappa}
    for m in lsq_shapes.METHODS:
        iterative = m != "scipy_lstsq"
        row |= {f"{m}_digits": 15.0, f"{m}_worst": 14.0,
                f"{m}_iterations": 10.0 if iterative else None,
                f"{m}_calls": 21.0 if iterative else None,
                f"{m}_converged": 1.0 if iterative else None, f"{m}_seconds": 0.01}
    return row | values


def shapes_part() -> dict:
    rows = [shape_row("ill_conditioned", 20, 5, kappa=1e4, learned_lsqr_digits=13.0),
            shape_row("gaussian", 20, 5, dtype="float32")]
    rows += [shape_row(f, n, d, kappa=1e4 if f == "ill_conditioned" else 2.0)
             for f in ("gaussian", "ill_conditioned") for n, d in lsq_shapes.BIG_SHAPES]
    return {"weights": "neuralnum/pretrained/axial.pt", "blas_threads": 1,
            "problems": {"small": 64, "1000 × 100": 8}, "rows": rows}
