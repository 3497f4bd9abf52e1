"""The kernels compile for real GPUs (sm_80, sm_87 Jetson Orin, sm_90) on this CPU-only machine, without spills.

The Triton interpreter runs kernels as Python and accepts code that compiled Triton refuses (a plain module
global inside @triton.jit code, for one). This test runs ``python -m edge_unlearn.kernels.aot`` in a
subprocess without ``TRITON_INTERPRET`` (the kernel tests set it in this process): Triton's compiler builds
each variant the public API launches for each target, and ptxas -v reports registers and spills. The default
set covers every kernel x mode x k (x dtype for the matmul kernels) on every arch; ``-m slow`` compiles the
full product. The table of registers and spills is printed in the test session's summary.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton", reason="triton is not installed (it comes with torch's CUDA wheels on Linux)")
try:
    from triton.backends.compiler import GPUTarget  # noqa: F401
except ImportError:
    pytest.skip("this Triton has no GPUTarget (needs Triton >= 3.0)", allow_module_level=True)
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
if not PTXAS.exists():
    pytest.skip(f"Triton's bundled ptxas is missing ({PTXAS})", allow_module_level=True)

ARCHS = ("sm_80", "sm_87", "sm_90")
AOT_RESULTS: dict[str, list[dict]] = {}  # set name -> rows; printed by conftest's terminal summary


def _run_aot(tmp_dir: Path, full: bool) -> list[dict]:
    # Triton's on-disk cache is keyed on the kernel source, options and target: a re-run reuses it safely
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_dir / "aot.json"
    cmd = [sys.executable, "-m", "edge_unlearn.kernels.aot", "--json", str(out)] + (["--full"] if full else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600 if full else 900)
    assert proc.returncode in (0, 1) and out.exists(), (
        f"the AOT compile did not run (exit {proc.returncode}):\n{proc.stderr[-3000:]}\n{proc.stdout[-2000:]}"
    )
    return json.loads(out.read_text())["rows"]


@pytest.fixture(scope="session")
def aot_rows(tmp_path_factory) -> list[dict]:
    rows = _run_aot(tmp_path_factory.mktemp("aot"), full=False)
    AOT_RESULTS["default set"] = rows
    return rows


def _problems(rows: list[dict], arch: str) -> list[str]:
    out = []
    for r in rows:
        if r["arch"] != arch:
            continue
        if r.get("error"):
            out.append(f"{r['variant']}: {r['error']}")
        elif r["spill_store_bytes"] or r["spill_load_bytes"]:
            out.append(
                f"{r['variant']}: {r['registers']} registers, spills {r['spill_store_bytes']} B stored / "
                f"{r['spill_load_bytes']} B loaded"
            )
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_every_default_variant_compiles_without_spills(aot_rows, arch):
    problems = _problems(aot_rows, arch)
    assert not problems, f"{arch}: {len(problems)} variants fail or spill:\n" + "\n".join(problems[:20])


@pytest.mark.parametrize("arch", ARCHS)
def test_default_set_covers_every_kernel_mode_and_k(aot_rows, arch):
    """The set is derived from the launcher's plans; it must reach every kernel, mode, k, dtype and factor."""
    rows = [r for r in aot_rows if r["arch"] == arch]
    labels = [r["variant"] for r in rows]
    for kernel, modes in (
        ("reduce", ("MODE=0,", "MODE=1,TOPK=1,", "MODE=1,TOPK=5,", "MODE=1,TOPK=16,")),
        ("write", ("MODE=0,", "MODE=1,", "MODE=2,")),
        ("merge", ("MODE=0,", "MODE=1,TOPK=1,", "MODE=1,TOPK=5,", "MODE=1,TOPK=16,", "MODE=2,")),
    ):
        for mode in modes:
            for dtype in ("fp32", "fp16", "bf16") if kernel != "merge" else ("",):
                hit = [lab for lab in labels if lab.startswith(f"{kernel}[{dtype}") and f" {mode}" in lab]
                assert hit, f"{arch}: no {kernel} {mode} {dtype} variant compiled"
    for factor in (
        "EVEN_D=True",
        "EVEN_D=False",
        "HAS_BIAS=True",
        "HAS_BIAS=False",
        "FINAL=True",
        "FINAL=False",
        "BLOCK_B=16",
        "BLOCK_B=64",
    ):
        assert any(factor in lab for lab in labels), f"{arch}: no variant with {factor}"
    matmul = [r for r in rows if r["variant"].startswith(("reduce[fp16", "write[bf16")) and not r.get("error")]
    assert matmul and all(r["mma"] != "none" for r in matmul), "fp16/bf16 tiles must use tensor-core MMA"


def test_aot_refuses_the_interpreter():
    """Run under TRITON_INTERPRET=1 the tool would only see interpreted kernels: it must refuse, exit 2."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-m", "edge_unlearn.kernels.aot", "--list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "TRITON_INTERPRET" in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("EDGE_UNLEARN_FULL_AOT") != "1",
    reason="the full product takes tens of minutes on 2 cores: set EDGE_UNLEARN_FULL_AOT=1 to run it",
)
def test_full_product_compiles_without_spills(tmp_path):
    """Every variant of the full product (about 350 per arch)."""
    rows = _run_aot(tmp_path, full=True)
    AOT_RESULTS["full product"] = rows
    problems = [p for arch in ARCHS for p in _problems(rows, arch)]
    assert not problems, f"{len(problems)} variants fail or spill:\n" + "\n".join(problems[:30])
