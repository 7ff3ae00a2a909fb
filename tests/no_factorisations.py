"""The no-factorisation guard: inside :func:`no_factorisations` every SVD / eig / QR /
solve / norm entry point of torch, NumPy and SciPy raises, so a solve path that touches
``A`` other than through its operator fails the test that runs it."""

import contextlib

import numpy as np
import scipy.linalg
import torch

_FORBIDDEN = {
    torch.linalg: ["svd", "svdvals", "eig", "eigh", "eigvals", "eigvalsh", "qr", "solve",
                   "solve_ex", "lstsq", "inv", "inv_ex", "pinv", "cholesky", "cholesky_ex",
                   "lu", "lu_factor", "lu_factor_ex", "lu_solve", "solve_triangular",
                   "matrix_rank", "matrix_norm", "cond", "det", "slogdet", "matrix_power",
                   "norm"],
    torch: ["svd", "pinverse", "cholesky_solve", "triangular_solve", "qr", "lu", "det",
            "inverse", "svd_lowrank", "pca_lowrank", "cholesky", "lobpcg"],
    np.linalg: ["svd", "eig", "eigh", "eigvals", "eigvalsh", "qr", "solve", "lstsq", "inv",
                "pinv", "cholesky", "matrix_rank", "norm", "cond", "det"],
    scipy.linalg: ["svd", "svdvals", "eig", "eigh", "eigvals", "eigvalsh", "qr", "solve",
                   "lstsq", "inv", "pinv", "cholesky", "lu", "lu_factor", "norm",
                   "solve_triangular", "eigh_tridiagonal", "eigvalsh_tridiagonal"],
}


@contextlib.contextmanager
def no_factorisations(monkeypatch):
    """Every SVD / eig / QR / solve / norm entry point of torch, NumPy and SciPy raises."""
    def forbid(name):
        def call(*args, **kwargs):
            raise AssertionError(f"a solve path called {name}")
        return call

    with monkeypatch.context() as m:
        for module, names in _FORBIDDEN.items():
            for name in names:
                if hasattr(module, name):
                    m.setattr(module, name, forbid(f"{module.__name__}.{name}"))
        m.setattr(torch.Tensor, "svd", forbid("Tensor.svd"), raising=False)
        yield


