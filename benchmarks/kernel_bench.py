"""Benchmark of the fused masked head against eager PyTorch and torch.compile.

    python benchmarks/kernel_bench.py [--quick] [--json PATH] [--outputs argmax,probs]

Grid (issue #4): B in {1, 8, 64, 256}, C in {10, 1000, 100000}, D = 512, fp16 and bf16, 10% of classes forgotten.
Methods on a GPU:
  eager    F.linear + masked_fill(-inf) + softmax / argmax (what a model does without the kernel)
  compile  torch.compile of the same function
  fused    the Triton kernel on a CompactHead (kept rows compacted once, index map cached)
For each: median microseconds, speedup over eager, achieved GB/s counting the bytes that must move (features,
kept weight rows, bias, output) and that rate's share of a device-to-device copy measured in the same run.

On a machine without a GPU it times eager and the PyTorch reference on the same CompactHead (what
``impl="auto"`` runs on CPU: fp32 accumulation, kept rows only) on CPU so the script and its JSON are
exercised, and says so: GPU figures need a GPU. No number here is invented or extrapolated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F


from edge_unlearn.kernels import CompactHead  # noqa: E402

BATCHES = (1, 8, 64, 256)
CLASSES = (10, 1000, 100000)
DIM = 512
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
FORGET_FRACTION = 0.1
GPU_NOTE = "GPU figures need a GPU: this run had none, so it timed the CPU reference and eager paths only."


def eager_head(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, output: str):
    """The unfused path: full logits in memory, then mask, then softmax or argmax."""
    logits = F.linear(x, w, b).masked_fill(~mask, float("-inf"))
    if output == "argmax":
        return logits.argmax(dim=1)
    return torch.softmax(logits, dim=1)


def time_us(fn: Callable[[], object], device: torch.device, reps: int, warmup: int) -> float:
    """Median wall time of ``fn`` in microseconds (CUDA events on a GPU, perf_counter on CPU)."""
    for _ in range(warmup):
        fn()
    samples: List[float] = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) * 1e3)
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(samples)


def copy_gbps(device: torch.device, reps: int) -> float:
    """Device-to-device (or host memcpy) bandwidth: bytes read + written per second, 256 MiB buffer."""
    n = (256 << 20) // 4
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    us = time_us(lambda: dst.copy_(src), device, reps, warmup=2)
    return 2 * src.numel() * 4 / (us * 1e-6) / 1e9


def needed_bytes(batch: int, num_classes: int, num_kept: int, dim: int, esize: int, output: str) -> int:
    """Bytes that any implementation must move: features, kept weight rows and bias, and the output."""
    out = batch * 8 if output == "argmax" else batch * num_classes * esize
    return batch * dim * esize + num_kept * dim * esize + num_kept * esize + out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, help="write the results as JSON to this path")
    p.add_argument("--quick", action="store_true", help="fewer repetitions (and on CPU a smaller grid)")
    p.add_argument("--outputs", default="argmax,probs", help="comma list among argmax,probs")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    p.add_argument("--threads", type=int, help="CPU only: torch intra-op threads (1 is steadier on a busy host)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.type == "cuda"
    outputs = [o for o in args.outputs.split(",") if o]
    reps, warmup = (10, 3) if args.quick else (50, 10)
    batches, classes = BATCHES, CLASSES
    if not on_gpu:
        reps, warmup = (3, 1) if args.quick else (5, 1)
        if args.quick:
            classes = (10, 1000)
    do_compile = on_gpu and not args.no_compile
    methods = ["eager"] + (["compile"] if do_compile else []) + (["fused"] if on_gpu else ["reference"])

    env = {
        "device": torch.cuda.get_device_name(device) if on_gpu else f"cpu ({platform.processor() or 'unknown'}, "
                                                                     f"{os.cpu_count()} cores)",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
    }
    if on_gpu:
        import triton

        env["triton"] = triton.__version__
    copy = copy_gbps(device, reps=5 if args.quick else 20)
    rows: List[Dict[str, object]] = []
    compiled = torch.compile(eager_head, dynamic=False) if do_compile else None
    gen = torch.Generator().manual_seed(0)
    for dname, dtype in DTYPES.items():
        for num_classes in classes:
            w = (torch.randn(num_classes, DIM, generator=gen) / DIM**0.5).to(device, dtype)
            b = torch.randn(num_classes, generator=gen).to(device, dtype)
            mask = torch.rand(num_classes, generator=gen) >= FORGET_FRACTION
            mask[0] = True
            mask = mask.to(device)
            head = CompactHead.from_head(w, b, mask)
            num_kept = int(mask.sum())
            for batch in batches:
                x = torch.randn(batch, DIM, generator=gen).to(device, dtype)
                for output in outputs:
                    fns = {
                        "eager": lambda: eager_head(x, w, b, mask, output),
                        "compile": lambda: compiled(x, w, b, mask, output),
                        "fused": lambda: head(x, output=output, impl="triton"),
                        "reference": lambda: head(x, output=output, impl="reference"),
                    }
                    nbytes = needed_bytes(batch, num_classes, num_kept, DIM, x.element_size(), output)
                    row: Dict[str, object] = dict(B=batch, C=num_classes, D=DIM, dtype=dname, output=output,
                                                  kept=num_kept, bytes=nbytes)
                    with torch.inference_mode():
                        for m in methods:
                            us = time_us(fns[m], device, reps, warmup)
                            gbps = nbytes / (us * 1e-6) / 1e9
                            row[f"{m}_us"] = round(us, 2)
                            row[f"{m}_gbps"] = round(gbps, 2)
                            row[f"{m}_copy_share"] = round(gbps / copy, 4)
                    fast = "fused" if on_gpu else "reference"
                    row["speedup_vs_eager"] = round(row["eager_us"] / row[f"{fast}_us"], 3)
                    rows.append(row)

    result = {"env": env, "on_gpu": on_gpu, "copy_gbps": round(copy, 1), "methods": methods,
              "forget_fraction": FORGET_FRACTION, "quick": args.quick, "rows": rows}
    if not on_gpu:
        result["note"] = GPU_NOTE
    _print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(args.json)
    return 0


def _print_table(result: Dict[str, object]) -> None:
    methods = result["methods"]
    fast = "fused" if result["on_gpu"] else "reference"
    print(f"# {result['env']['device']}, torch {result['env']['torch']}; copy {result['copy_gbps']} GB/s "
          f"(read+write); median us; GB/s of needed bytes and its share of the copy")
    if not result["on_gpu"]:
        print(f"# {GPU_NOTE}")
    head = ["B", "C", "dtype", "output"] + [f"{m} us" for m in methods] + [f"x vs eager ({fast})",
                                                                            f"{fast} GB/s", "% copy"]
    print(" | ".join(head))
    for r in result["rows"]:
        cells = [r["B"], r["C"], r["dtype"], r["output"]] + [f"{r[m + '_us']:.1f}" for m in methods]
        cells += [f"{r['speedup_vs_eager']:.2f}", f"{r[fast + '_gbps']:.2f}", f"{100 * r[fast + '_copy_share']:.1f}"]
        print(" | ".join(str(c) for c in cells))


if __name__ == "__main__":
    sys.exit(main())
