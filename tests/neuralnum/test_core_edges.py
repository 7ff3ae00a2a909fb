"""Edges of the numerical core that the main tests do not pin: the per-problem MSE's
value and shape, and the argument messages of the softmax product construction.
(Added for the mutation check, ``python3 -m mutmut run``: each test kills mutants that
survived the main tests.)"""

import pytest
import torch

from neuralnum.arch.construct import SoftmaxProduct
from neuralnum.reference import mse


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mse_is_per_problem_mean_of_squares(dtype):
    x = torch.tensor([[1.0, -2.0, 0.0], [0.5, 0.5, 0.5]], dtype=dtype)
    x_ref = torch.tensor([[0.0, 0.0, 0.0], [0.5, 1.5, -0.5]], dtype=dtype)
    got = mse(x, x_ref)
    assert got.dtype == torch.float64 and got.shape == (2,)
    torch.testing.assert_close(got, torch.tensor([5 / 3, 2 / 3], dtype=torch.float64),
                               rtol=0, atol=1e-15)     # negative differences square
    assert mse(x_ref, x).equal(got)


def test_softmax_product_messages_name_the_argument():
    with pytest.raises(TypeError, match=r"^m must be an int"):
        SoftmaxProduct(2.0, 0.1)
    with pytest.raises(ValueError, match=r"^m must be >= 1"):
        SoftmaxProduct(0, 0.1)
    with pytest.raises(ValueError, match=r"^eps must be finite and > 0"):
        SoftmaxProduct(2, 0.0)
    with pytest.raises(ValueError, match=r"^u must be \(B, L, 4\) torch.float64, got \(2, 3, 5\)"):
        SoftmaxProduct(2, 0.1, dtype=torch.float64)(torch.zeros(2, 3, 5, dtype=torch.float64))
