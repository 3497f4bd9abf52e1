"""GPU benchmark of the fused masked head against eager PyTorch and torch.compile of the eager path.

    python -m benchmarks.kernel_bench [--quick] [--json PATH] [--outputs argmax,topk,probs] [--sweep]

Writes benchmarks/results/kernel_bench/kernel_bench.json (``--quick``: bench_out/kernel_bench_quick.json).

Grid (issue #16): B in {1, 64, 1024}, C in {10, 1000, 100000}, D = 512, fp16 and bf16, 10% of classes
forgotten. Methods:
  eager    F.linear + masked_fill(-inf) + argmax / softmax+topk(5) / softmax (a model without the kernel)
  compile  torch.compile of the same function (inductor)
  fused    the Triton kernel on a CompactHead (kept rows compacted once, index map cached)
Timing: ``triton.testing.do_bench`` medians (it flushes L2 between runs). For each row: microseconds, speedup
of fused over eager and over compile, achieved GB/s of the bytes that must move (features, kept weight rows,
bias, output) against a device-to-device copy measured in the same run, and the fraction of the physical
limit reached: limit = max(bytes / copy bandwidth, FLOPs / measured fp16 matmul rate), fraction = limit / time.
Every method's result is checked against the eager one before it is timed.

``--sweep`` also times the fused kernel with each candidate tile configuration per (batch regime, output)
and reports the fastest: the evidence for the regime table in kernels/triton_head.py.

Needs a CUDA GPU: without one it prints why and exits 2 (no figure is invented or extrapolated).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.harness import SCRATCH, provenance, results_dir, write_results
from edge_unlearn.kernels import CompactHead

BATCHES = (1, 64, 1024)
CLASSES = (10, 1000, 100_000)
DIM = 512
TOPK = 5
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
OUTPUTS = ("argmax", "topk", "probs")
FORGET_FRACTION = 0.1
DEFAULT_JSON = results_dir("kernel_bench") / "kernel_bench.json"
QUICK_JSON = SCRATCH / "kernel_bench_quick.json"
# issue #16 targets on an H200, reported (not asserted) from the measured rows
TARGET_COPY_SHARE = 0.70  # argmax, C = 100 000, B <= 64: fused GB/s >= 70% of the copy's
TARGET_SPEEDUP = 1.5  # argmax and top-5, C = 100 000: fused >= 1.5x eager


def eager_head(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, output: str):
    """The unfused path: full logits in memory, then mask, then argmax / softmax (+ top-k)."""
    logits = F.linear(x, w, b).masked_fill(~mask, float("-inf"))
    if output == "argmax":
        return logits.argmax(dim=1)
    probs = torch.softmax(logits, dim=1)
    if output == "topk":
        return probs.topk(TOPK, dim=1)
    return probs


def bench_ms(fn: Callable[[], object], quick: bool) -> float:
    """Median milliseconds of ``fn`` by triton.testing.do_bench (L2 flushed before each run)."""
    import triton.testing

    return float(
        triton.testing.do_bench(fn, warmup=10 if quick else 25, rep=40 if quick else 200, return_mode="median")
    )


def copy_gbps(device: torch.device, quick: bool) -> float:
    """Device-to-device copy bandwidth, bytes read + written per second, 1 GiB buffer."""
    src = torch.empty((1 << 30) // 2, dtype=torch.float16, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src), quick)
    return 2 * src.numel() * 2 / (ms * 1e-3) / 1e9


def matmul_tflops(device: torch.device, dtype: torch.dtype, quick: bool) -> float:
    """Measured dense matmul rate (8192^3) in TFLOP/s: the compute side of the physical limit."""
    n = 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = bench_ms(lambda: a @ b, quick)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def needed_bytes(batch: int, num_classes: int, num_kept: int, dim: int, esize: int, output: str) -> int:
    """Bytes any implementation must move: features, kept weight rows and bias, and the output."""
    out = {"argmax": batch * 8, "topk": batch * TOPK * (esize + 8), "probs": batch * num_classes * esize}[output]
    return batch * dim * esize + num_kept * dim * esize + num_kept * esize + out


def _same_result(output: str, got, want) -> str | None:
    """None when ``got`` agrees with the eager result (ids exactly where logits are not tied), else why."""
    if output == "argmax":
        agree = (got == want).float().mean().item()
        return None if agree >= 0.999 else f"argmax agrees on {agree:.2%} of rows"
    if output == "topk":
        torch.testing.assert_close(got[0].float(), want[0].float(), rtol=2e-2, atol=1e-3)
        return None
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=1e-4)
    return None


def sweep_candidates():
    """Tile configurations --sweep compares (the regime table picks among such entries)."""
    from edge_unlearn.kernels.triton_head import KernelConfig

    return [
        KernelConfig(block_b=bb, block_c=bc, block_d=bd, num_warps=nw, num_stages=ns)
        for bb, bc, bd, nw, ns in (
            (16, 64, 64, 4, 3),
            (16, 128, 64, 4, 3),
            (16, 64, 128, 4, 4),
            (16, 32, 128, 4, 3),
            (64, 64, 64, 4, 3),
            (64, 128, 64, 8, 3),
            (128, 64, 64, 8, 3),
            (64, 64, 32, 4, 4),
        )
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--json", type=Path, default=None, help=f"result JSON (default {DEFAULT_JSON}; --quick: {QUICK_JSON})"
    )
    p.add_argument("--quick", action="store_true", help="shorter do_bench windows")
    p.add_argument("--outputs", default=",".join(OUTPUTS), help="comma list among " + ",".join(OUTPUTS))
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    p.add_argument("--sweep", action="store_true", help="also time every candidate tile configuration")
    args = p.parse_args(argv)
    outputs = [o for o in args.outputs.split(",") if o]
    bad = [o for o in outputs if o not in OUTPUTS]
    if bad:
        print(f"--outputs: unknown {bad}; choose among {','.join(OUTPUTS)}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print(
            "kernel_bench needs a CUDA GPU and none is visible: nothing measured. Run it on a GPU machine "
            "(the CPU evidence is tests/kernels: the interpreter tests and the AOT compile test).",
            file=sys.stderr,
        )
        return 2
    try:
        import triton
    except ImportError:
        print(
            "kernel_bench needs triton (it comes with torch's CUDA wheels on Linux): pip install triton",
            file=sys.stderr,
        )
        return 2

    device = torch.device("cuda")
    env = {
        "device": torch.cuda.get_device_name(device),
        "capability": ".".join(map(str, torch.cuda.get_device_capability(device))),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
    }
    copy = copy_gbps(device, args.quick)
    peak = {name: matmul_tflops(device, dtype, args.quick) for name, dtype in DTYPES.items()}
    methods = ["eager"] + ([] if args.no_compile else ["compile"]) + ["fused"]
    compiled = (
        {}
        if args.no_compile
        else {o: torch.compile(lambda x, w, b, m, o=o: eager_head(x, w, b, m, o)) for o in outputs}
    )
    rows: list[dict[str, object]] = []
    sweep_rows: list[dict[str, object]] = []
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for dname, dtype in DTYPES.items():
            for num_classes in CLASSES:
                w = (torch.randn(num_classes, DIM, generator=gen) / DIM**0.5).to(device, dtype)
                b = (0.1 * torch.randn(num_classes, generator=gen)).to(device, dtype)
                mask = torch.rand(num_classes, generator=gen) >= FORGET_FRACTION
                mask[0] = True
                mask = mask.to(device)
                head = CompactHead.from_head(w, b, mask)
                num_kept = int(mask.sum())
                for batch in BATCHES:
                    x = torch.randn(batch, DIM, generator=gen).to(device, dtype)
                    for output in outputs:
                        k = TOPK if output == "topk" else 1
                        fns = {
                            "eager": lambda: eager_head(x, w, b, mask, output),
                            "compile": lambda: compiled[output](x, w, b, mask),
                            "fused": lambda: head(x, output=output, k=k, impl="triton"),
                        }
                        nbytes = needed_bytes(batch, num_classes, num_kept, DIM, x.element_size(), output)
                        flops = 2 * batch * num_kept * DIM
                        limit_ms = max(nbytes / (copy * 1e9), flops / (peak[dname] * 1e12)) * 1e3
                        row: dict[str, object] = dict(
                            B=batch,
                            C=num_classes,
                            D=DIM,
                            dtype=dname,
                            output=output,
                            kept=num_kept,
                            bytes=nbytes,
                            flops=flops,
                            limit_us=round(limit_ms * 1e3, 2),
                        )
                        want = fns["eager"]()
                        for m in methods:
                            try:
                                problem = _same_result(output, fns[m](), want)
                            except AssertionError as exc:
                                problem = " ".join(str(exc).split())[:200]
                            if problem:
                                row[f"{m}_error"] = problem
                                continue
                            ms = bench_ms(fns[m], args.quick)
                            row[f"{m}_us"] = round(ms * 1e3, 2)
                            row[f"{m}_gbps"] = round(nbytes / (ms * 1e-3) / 1e9, 1)
                            row[f"{m}_copy_share"] = round(nbytes / (ms * 1e-3) / 1e9 / copy, 4)
                            row[f"{m}_limit_fraction"] = round(limit_ms / ms, 4)
                        for m in ("eager", "compile"):
                            if f"{m}_us" in row and "fused_us" in row:
                                row[f"fused_speedup_vs_{m}"] = round(row[f"{m}_us"] / row["fused_us"], 3)
                        rows.append(row)
                        if args.sweep and dname == "fp16" and num_classes == 100_000:
                            sweep_rows.append(_sweep(head, x, output, k, args.quick))
    result = {
        "env": env,
        "copy_gbps": round(copy, 1),
        "matmul_tflops": {k: round(v, 1) for k, v in peak.items()},
        "methods": methods,
        "forget_fraction": FORGET_FRACTION,
        "topk": TOPK,
        "quick": args.quick,
        "rows": rows,
        "targets": _targets(rows),
        "sweep": sweep_rows,
        **provenance("benchmarks.kernel_bench", argv, gpu=env["device"], triton=env["triton"], cuda=env["cuda"]),
    }
    _print_table(result)
    write_results(result, args.json or (QUICK_JSON if args.quick else DEFAULT_JSON))
    return 0


def _sweep(head, x, output: str, k: int, quick: bool) -> dict[str, object]:
    from edge_unlearn.kernels.triton_head import masked_head_triton

    timings = []
    for cfg in sweep_candidates():

        def fn(cfg=cfg):
            return masked_head_triton(
                x, head.weight, head.bias, head.row_of, head.kept_ids, head.kept_rows, output, k, cfg
            )

        try:
            fn()
            timings.append((bench_ms(fn, quick) * 1e3, cfg))
        except Exception as exc:  # noqa: BLE001 - a candidate that does not compile is reported, not fatal
            timings.append((float("inf"), f"{cfg}: {' '.join(str(exc).split())[:120]}"))
    timings.sort(key=lambda t: t[0])
    return {
        "B": x.shape[0],
        "output": output,
        "best_us": round(timings[0][0], 2),
        "best": str(timings[0][1]),
        "all": [(round(us, 2), str(c)) for us, c in timings],
    }


def _targets(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """The issue's H200 targets, evaluated on this run's rows (measured values, pass or not)."""
    out = []
    for r in rows:
        if r["C"] != 100_000 or "fused_us" not in r:
            continue
        if r["output"] == "argmax" and r["B"] <= 64:
            out.append(
                dict(
                    target=f"argmax copy share >= {TARGET_COPY_SHARE:.0%}",
                    B=r["B"],
                    dtype=r["dtype"],
                    value=r["fused_copy_share"],
                    met=r["fused_copy_share"] >= TARGET_COPY_SHARE,
                )
            )
        if r["output"] in ("argmax", "topk") and "fused_speedup_vs_eager" in r:
            out.append(
                dict(
                    target=f"{r['output']} fused >= {TARGET_SPEEDUP}x eager",
                    B=r["B"],
                    dtype=r["dtype"],
                    value=r["fused_speedup_vs_eager"],
                    met=r["fused_speedup_vs_eager"] >= TARGET_SPEEDUP,
                )
            )
    return out


def _print_table(result: dict[str, object]) -> None:
    methods = result["methods"]
    env = result["env"]
    print(
        f"# {env['device']} (sm_{env['capability'].replace('.', '')}), torch {env['torch']}, triton "
        f"{env['triton']}; copy {result['copy_gbps']} GB/s (read+write), matmul {result['matmul_tflops']} TFLOP/s"
    )
    print("# median us (do_bench); fused GB/s of needed bytes, its share of the copy, fraction of the physical limit")
    head = (
        ["B", "C", "dtype", "output"]
        + [f"{m} us" for m in methods]
        + ["x eager"]
        + (["x compile"] if "compile" in methods else [])
        + ["fused GB/s", "% copy", "% limit"]
    )
    print(" | ".join(head))
    for r in result["rows"]:
        cells = [r["B"], r["C"], r["dtype"], r["output"]]
        cells += [f"{r[m + '_us']:.1f}" if f"{m}_us" in r else "ERR" for m in methods]
        cells += [f"{r['fused_speedup_vs_eager']:.2f}" if "fused_speedup_vs_eager" in r else "-"]
        if "compile" in methods:
            cells += [f"{r['fused_speedup_vs_compile']:.2f}" if "fused_speedup_vs_compile" in r else "-"]
        if "fused_us" in r:
            cells += [
                f"{r['fused_gbps']:.0f}",
                f"{100 * r['fused_copy_share']:.1f}",
                f"{100 * r['fused_limit_fraction']:.1f}",
            ]
        print(" | ".join(str(c) for c in cells))
    errors = [
        (r["B"], r["C"], r["dtype"], r["output"], m, r[f"{m}_error"])
        for r in result["rows"]
        for m in methods
        if f"{m}_error" in r
    ]
    for e in errors:
        print(f"# MISMATCH B={e[0]} C={e[1]} {e[2]} {e[3]} {e[4]}: {e[5]}")
    for t in result["targets"]:
        print(f"# target {t['target']} (B={t['B']}, {t['dtype']}): {t['value']} -> {'met' if t['met'] else 'NOT met'}")
    for s in result["sweep"]:
        print(f"# sweep B={s['B']} {s['output']}: best {s['best_us']} us with {s['best']}")


if __name__ == "__main__":
    sys.exit(main())
