"""Ahead-of-time compile of the fused head for real GPUs, on a machine without one.

``python -m edge_unlearn.kernels.aot [--arch 80,87,90] [--json PATH]`` compiles every kernel specialisation the
public API launches on a GPU (argmax, top-k for a set of k, probabilities, logits; fp32/fp16/bf16; D aligned
and odd; with and without bias; single pass and class split) for each compute capability, through Triton's own
compiler (``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))``), then runs the ptxas Triton
bundles with ``-v`` on the PTX and records registers, spill bytes and shared memory per variant. It exits 1
when a variant fails to compile or spills, 2 when the toolchain is missing.

The variants are not listed by hand: they are the launches ``triton_head.plan_launches`` makes for a grid of
calls (the batch regimes of the tuned table x C small and large x D x dtype x output x bias) with each
target's SM count, with the integer specialisations Triton's JIT would apply (== 1, multiple of 16) except on
the arguments the kernels mark ``do_not_specialize``.

Must run in a process where ``TRITON_INTERPRET`` is not 1 (the kernels are defined compiled, not interpreted).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

# compute capability -> SM count of the GPU the plan is made for (A100, Jetson AGX Orin, H100/H200)
TARGETS: dict[int, int] = {80: 108, 87: 16, 90: 132}
BATCHES = (1, 64, 1024)  # one per batch regime of the tuned table
CLASSES = (10, 100_000)  # classes fitting one small tile / many tiles and splits
DIMS = (512, 513)  # aligned (multiple of 16 and of every D tile) and odd
TOPK_SET = (1, 5, 16)  # smallest, typical and largest k (KP = 2, 8, 16)
DTYPE_NAMES = ("fp32", "fp16", "bf16")
_PTR = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16", "int32": "*i32", "int64": "*i64"}


@dataclass(frozen=True)
class Variant:
    """One compile unit: kernel, its signature/constexprs/divisibility attributes and launch options."""

    kernel: str
    signature: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, object], ...]
    divisible: tuple[str, ...]
    num_warps: int
    num_stages: int

    def label(self) -> str:
        ptr = dict(self.signature).get("x_ptr") or dict(self.signature).get("out_ptr") or ""
        consts = ",".join(f"{k}={v}" for k, v in self.constexprs if k not in ("IEEE",))
        return (
            f"{self.kernel}[{ptr.lstrip('*')}] {consts} div16={'+'.join(self.divisible) or '-'} "
            f"w{self.num_warps}s{self.num_stages}"
        )


def _dtype_name(dtype) -> str:
    import torch

    return {
        torch.float32: "fp32",
        torch.float16: "fp16",
        torch.bfloat16: "bf16",
        torch.int32: "int32",
        torch.int64: "int64",
    }[dtype]


def _no_specialise(fn) -> set:
    """Names of the arguments a JIT function marks do_not_specialize."""
    names = {p.name for p in getattr(fn, "params", ()) if getattr(p, "do_not_specialize", False)}
    # an interpreted kernel (TRITON_INTERPRET=1) keeps the decorator's arguments instead
    for item in getattr(fn, "kwargs", {}).get("do_not_specialize", ()) or ():
        names.add(item if isinstance(item, str) else fn.arg_names[item])
    return names


def variants_for(cc: int) -> list[Variant]:
    """Every distinct specialisation the public API launches on a GPU of compute capability ``cc``."""
    import torch

    from . import triton_head as th

    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    requests = [("argmax", 1), ("logits", 1), ("probs", 1)] + [("topk", k) for k in TOPK_SET]
    seen: dict[Variant, None] = {}
    for dname in DTYPE_NAMES:
        for batch in BATCHES:
            for num_classes in CLASSES:
                num_kept = num_classes - num_classes // 10  # 10% forgotten
                for dim in DIMS:
                    for has_bias in (True, False):
                        for output, k in requests:
                            plan = th.plan_launches(
                                batch,
                                num_classes,
                                num_kept,
                                dim,
                                dtypes[dname],
                                output,
                                k,
                                has_bias,
                                dim,
                                dim,
                                True,
                                TARGETS[cc],
                            )
                            for launch in plan.launches:
                                seen[_variant(th.KERNELS[launch.kernel], launch)] = None
    return list(seen)


def _group(variant: Variant) -> tuple:
    """What the default set covers for every arch: each kernel x mode x k, and each dtype of the matmul kernels."""
    consts = dict(variant.constexprs)
    sig = dict(variant.signature)
    ptr = sig.get("x_ptr", "") if variant.kernel != "scale" else sig.get("out_ptr", "")
    return (variant.kernel, consts.get("MODE"), consts.get("TOPK"), ptr)


def default_variants(cc: int) -> list[Variant]:
    """The CI subset: one variant per group (``_group``) for this arch, rotating through the group's variants
    by arch and group, so the other factors (batch regime, aligned or odd D, bias, class split, the merge and
    scale kernels' dtype) all take every value across the set. ``variants_for`` is the full product."""
    groups: dict[tuple, list[Variant]] = {}
    for v in variants_for(cc):
        groups.setdefault(_group(v), []).append(v)
    offset = sorted(TARGETS).index(cc)
    picked = []
    for i, (_, members) in enumerate(sorted(groups.items(), key=lambda g: str(g[0]))):
        spread = len(members) // len(TARGETS) + 1  # the archs take picks far apart in each group
        picked.append(members[(7 * i + offset * spread) % len(members)])
    return picked


def _variant(fn, launch) -> Variant:
    fixed = _no_specialise(fn)
    sig: list[tuple[str, str]] = []
    consts: list[tuple[str, object]] = []
    divisible: list[str] = []
    for name in fn.arg_names:
        if name in launch.constexprs:
            consts.append((name, launch.constexprs[name]))
        elif name in launch.pointers:
            sig.append((name, _PTR[_dtype_name(launch.pointers[name].dtype)]))
            divisible.append(name)  # torch allocations are 16-byte aligned
        else:
            value = int(launch.ints[name])
            if name not in fixed and value == 1:
                consts.append((name, 1))  # what the JIT does with an integer equal to 1
                continue
            sig.append((name, "i32" if -(2**31) <= value < 2**31 else "i64"))
            if name not in fixed and value % 16 == 0:
                divisible.append(name)
    return Variant(
        fn.__name__.lstrip("_").replace("_kernel", ""),
        tuple(sig),
        tuple(consts),
        tuple(divisible),
        launch.num_warps,
        launch.num_stages,
    )


def ptxas_path() -> Path:
    """The ptxas Triton ships (triton/backends/nvidia/bin/ptxas)."""
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


def compile_variant(variant: Variant, cc: int) -> dict[str, object]:
    """Compile one variant for ``sm_<cc>`` and read ptxas -v; returns a result row (``error`` set on failure)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import triton_head as th

    fn = th.KERNELS[variant.kernel]
    names = list(fn.arg_names)
    row: dict[str, object] = dict(arch=f"sm_{cc}", variant=variant.label(), kernel=variant.kernel)
    start = time.perf_counter()
    try:
        signature = {n: "constexpr" for n, _ in variant.constexprs}
        signature.update(dict(variant.signature))
        signature = {n: signature[n] for n in names}
        constexprs = {(names.index(n),): v for n, v in variant.constexprs}
        attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in variant.divisible}
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(
            src,
            target=GPUTarget("cuda", cc, 32),
            options=dict(num_warps=variant.num_warps, num_stages=variant.num_stages),
        )
        ptx = compiled.asm["ptx"]
        row["shared_bytes"] = int(compiled.metadata.shared)
        row["mma"] = "wgmma" if "wgmma" in ptx else "mma.sync" if "mma.sync" in ptx else "none"
        row.update(_ptxas_usage(ptx, cc))
    except Exception as exc:  # noqa: BLE001 - the row carries the compiler's message
        message = " ".join(str(exc).split())
        where = message.find("Cannot access global variable")
        row["error"] = message[where : where + 200] if where >= 0 else message[-400:]
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def _ptxas_usage(ptx: str, cc: int) -> dict[str, int]:
    arch = re.search(r"\.target (sm_\w+)", ptx)
    gpu = arch.group(1) if arch else f"sm_{cc}"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        proc = subprocess.run(
            [str(ptxas_path()), "-v", f"--gpu-name={gpu}", str(src), "-o", str(Path(tmp) / "k.o")],
            capture_output=True,
            text=True,
            timeout=300,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed: {proc.stderr.strip()[-400:]}")
    log = proc.stderr + proc.stdout
    regs = re.search(r"Used (\d+) registers", log)
    stores = re.search(r"(\d+) bytes spill stores", log)
    loads = re.search(r"(\d+) bytes spill loads", log)
    stack = re.search(r"(\d+) bytes stack frame", log)
    if not (regs and stores and loads):
        raise RuntimeError(f"could not read ptxas -v output: {log.strip()[-300:]}")
    return dict(
        registers=int(regs.group(1)),
        spill_store_bytes=int(stores.group(1)),
        spill_load_bytes=int(loads.group(1)),
        stack_bytes=int(stack.group(1)) if stack else 0,
    )


def _compile_job(job: tuple[Variant, int]) -> dict[str, object]:
    return compile_variant(*job)


def run(archs: Sequence[int], workers: int | None = None, full: bool = False) -> list[dict[str, object]]:
    """Compile the default (or the full) set for every arch in ``workers`` processes; one row per variant.

    The slowest compiles (top-k) are started first so the pool's workers finish together.
    """
    pick = variants_for if full else default_variants
    jobs = [(v, cc) for cc in archs for v in pick(cc)]
    jobs.sort(key=lambda j: (j[0].kernel != "reduce", dict(j[0].constexprs).get("MODE") != 1))
    workers = workers or max(1, min(len(jobs), os.cpu_count() or 1))
    if workers == 1:
        return [_compile_job(j) for j in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_compile_job, jobs, chunksize=1))


def failures(rows: Sequence[dict[str, object]]) -> list[str]:
    """One line per row that failed to compile or spilled registers."""
    bad = []
    for r in rows:
        if r.get("error"):
            bad.append(f"{r['arch']} {r['variant']}: {r['error']}")
        elif r["spill_store_bytes"] or r["spill_load_bytes"]:
            bad.append(
                f"{r['arch']} {r['variant']}: spills {r['spill_store_bytes']} B stored, "
                f"{r['spill_load_bytes']} B loaded ({r['registers']} registers)"
            )
    return bad


def format_table(rows: Sequence[dict[str, object]]) -> str:
    """Fixed-width table: arch, registers, spills, shared memory, MMA kind, compile seconds, variant."""
    lines = [f"{'arch':7} {'regs':>4} {'spill st/ld B':>13} {'smem B':>7} {'mma':8} {'s':>5}  variant"]
    for r in sorted(rows, key=lambda r: (r["arch"], r["variant"])):
        if r.get("error"):
            lines.append(
                f"{r['arch']:7} {'FAIL':>4} {'':>13} {'':>7} {'':8} {r['seconds']:5.1f}  {r['variant']}: "
                f"{str(r['error'])[:160]}"
            )
        else:
            spills = f"{r['spill_store_bytes']}/{r['spill_load_bytes']}"
            lines.append(
                f"{r['arch']:7} {r['registers']:4d} {spills:>13} {r['shared_bytes']:7d} {r['mma']:8} "
                f"{r['seconds']:5.1f}  {r['variant']}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--arch",
        default=",".join(str(a) for a in TARGETS),
        help="comma list of compute capabilities among " + ",".join(str(a) for a in TARGETS),
    )
    parser.add_argument("--json", type=Path, help="write the result rows as JSON to this path")
    parser.add_argument("--workers", type=int, help="compile processes (default: CPU count)")
    parser.add_argument(
        "--full", action="store_true", help="every variant (the product of all factors), not the covering CI subset"
    )
    parser.add_argument("--list", action="store_true", help="list the variants without compiling")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("TRITON_INTERPRET=1 is set: unset it, the AOT compile needs the compiled kernels", file=sys.stderr)
        return 2
    try:
        archs = [int(a) for a in args.arch.split(",") if a]
        unknown = [a for a in archs if a not in TARGETS]
        if unknown:
            raise ValueError(f"unknown arch {unknown}")
    except ValueError as exc:
        print(f"--arch: {exc}; pass a comma list among {','.join(str(a) for a in TARGETS)}", file=sys.stderr)
        return 2
    try:
        import triton  # noqa: F401
        from triton.backends.compiler import GPUTarget  # noqa: F401
    except ImportError as exc:
        print(f"Triton with its NVIDIA backend is needed ({exc}); pip install triton", file=sys.stderr)
        return 2
    if not ptxas_path().exists():
        print(f"ptxas not found at {ptxas_path()}; install a Triton wheel that bundles it", file=sys.stderr)
        return 2
    if args.list:
        for cc in archs:
            for v in (variants_for if args.full else default_variants)(cc):
                print(f"sm_{cc} {v.label()}")
        return 0
    rows = run(archs, args.workers, args.full)
    print(format_table(rows))
    bad = failures(rows)
    summary = dict(
        variants=len(rows), failed=len(bad), max_registers=max((r.get("registers", 0) for r in rows), default=0)
    )
    print(
        f"# {summary['variants']} variants, {summary['failed']} failed or spilled, "
        f"max {summary['max_registers']} registers"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        import triton

        tmp.write_text(json.dumps(dict(triton=triton.__version__, summary=summary, rows=rows), indent=1))
        tmp.replace(args.json)
    for line in bad:
        print(f"FAIL {line}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
