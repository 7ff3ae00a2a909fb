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
from studies.kernel_compile import compile_variant
from kernels.long_conv_triton import _conv_kernel
ptrs = {n: "*fp64" for n in _conv_kernel.arg_names if n.endswith("_ptr")}
const = dict(N1=32, N2=16, HAS_PRE=False, HAS_POST=True, STORE_C=True, COMPUTE=tl.float64,
             PRECISION="ieee", UPCAST=False)
print(json.dumps(compile_variant(_conv_kernel, ptrs, const, 4, 1, 90)))
"""


def test_compiles_for_sm90_without_gpu():
    root = str(Path(__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, timeout=300, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["fits"] and row["shared_bytes"] > 0 and 0 < row["registers"] <= 255


def test_refuses_interpreted_kernels(tmp_path):
    with pytest.raises(SystemExit):
        kernel_compile.main(["--quick", "--out", str(tmp_path)])
