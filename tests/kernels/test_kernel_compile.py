"""studies.kernel_compile: AOT compile for sm_90 without a GPU (in a non-interpreted process)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from studies import kernel_compile

SCRIPT = """
import json, triton.language as tl
from studies.kernel_compile import _conv_pointers, _pass_kernels, compile_variant
from kernels.long_conv_triton import Plan, _conv_kernel
const = dict(N1=32, N2=16, HAS_PRE=False, HAS_POST=True, STORE_C=True, COMPUTE=tl.float64,
             PRECISION="ieee", UPCAST=False)
rows = [compile_variant(_conv_kernel, _conv_pointers("*fp64", "*fp64"), const, 4, 1, 90)]
# the three-pass kernels, small plan, bf16 activations
for _, fn, const in _pass_kernels(Plan(64, 16, False, 16, 16, 16, 16), "tf32"):
    rows.append(compile_variant(fn, _conv_pointers("*bf16"), const, 4, 1, 90))
print(json.dumps(rows))
"""


def test_compiles_for_sm90_without_gpu():
    root = str(Path(__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, timeout=300, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(rows) == 4
    for row in rows:
        assert row["fits"] and row["shared_bytes"] > 0 and 0 < row["registers"] <= 255


def test_refuses_interpreted_kernels(tmp_path):
    with pytest.raises(SystemExit):
        kernel_compile.main(["--quick", "--out", str(tmp_path)])
