"""Peak memory and throughput of `edge-unlearn evaluate` on image folders of growing size (issue #12).

Generates, once, a pool of JPEGs of mixed sizes (20×20 to 300×200, about 30 % grey) from the shared CIFAR-10
archive into a cache folder, then for N = 2k, 8k, 32k builds an ImageFolder whose test split holds N of them
(symbolic links into the pool; train/ is a fixed 2 000 images for the probe's draw), and runs
``edge-unlearn evaluate CKPT --dataset folder:DIR`` as a child process for each N, interleaved over
``--rounds`` rounds. The child's peak RSS comes from ``os.wait4`` (that child's own rusage), its images/s
from wall time and from the evaluation time the command reports. Peak RSS must stay flat (within 10 %)
as N grows ×16: images are decoded batch by batch, never held.

    nice -n 5 python -m benchmarks.data_scale      # 2k, 8k, 32k; ~25 min on 2 busy cores
    python -m benchmarks.data_scale --quick        # smoke run: N = 500, 2000, one round, into --cache

Writes benchmarks/results/data_scale/data_scale.json and .md (the table also printed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import SCRATCH, SHARED_DATA, provenance, results_dir
from benchmarks.harness import write_results as write_files

SHARED = SHARED_DATA / "cifar10.npz"
EXE = Path(sys.executable).with_name("edge-unlearn")
TRAIN_IMAGES = 2000


def write_pool(npz: Path, pool: Path, count: int, seed: int) -> None:
    """``count`` JPEGs (random size 20..300 × 20..200, ~30 % grey) of CIFAR-10 images under pool/CLASS/."""
    from PIL import Image

    done = pool / f".done-{count}-{seed}"
    if done.exists():
        return
    rng = np.random.default_rng(seed)
    with np.load(npz) as arrays:
        x = np.concatenate([arrays["x_train"], arrays["x_test"]])
        y = np.concatenate([arrays["y_train"], arrays["y_test"]])
    if x.shape[1] in (1, 3):
        x = x.transpose(0, 2, 3, 1)
    for k in range(count):
        i = int(rng.integers(len(x)))
        image = Image.fromarray(x[i].squeeze())
        image = image.resize((int(rng.integers(20, 301)), int(rng.integers(20, 201))), Image.BILINEAR)
        if rng.random() < 0.3:
            image = image.convert("L")
        folder = pool / str(int(y[i]))
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{k:06d}.jpg", quality=90)
        if k % 4000 == 3999:
            print(f"  pool: {k + 1}/{count} images", flush=True)
    done.touch()


def link_folder(pool: Path, target: Path, train: int, test: int) -> None:
    """An ImageFolder of links into the pool: train/ the first ``train`` images, test/ the next ``test``."""
    if (target / ".complete").exists():
        return
    files = sorted(pool.glob("*/*.jpg"), key=lambda p: p.name)
    if len(files) < train + test:
        raise SystemExit(f"the pool holds {len(files)} images, {train + test} are needed")
    for split, chosen in (("train", files[:train]), ("test", files[train : train + test])):
        for file in chosen:
            link = target / split / file.parent.name / file.name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(file)
    (target / ".complete").touch()


def run_child(args: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in bytes, stdout) of one child process, from its own rusage (os.wait4)."""
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        child = subprocess.Popen(args, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        child.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if code != 0:
        raise SystemExit(f"{' '.join(args)} failed ({code}): {stderr[-2000:]}")
    return wall, int(usage.ru_maxrss) * 1024, stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2000,8000,32000", help="Test-split sizes N (comma-separated).")
    parser.add_argument("--rounds", type=int, default=2, help="Interleaved rounds (median reported).")
    parser.add_argument("--workers", type=int, default=0, help="--workers of evaluate.")
    parser.add_argument(
        "--cache",
        type=Path,
        default=SCRATCH / "data_scale",
        help="Where the generated images and checkpoints stay between runs (gitignored).",
    )
    parser.add_argument("--threads", type=int, default=1, help="OMP/torch threads of the child (1: fair under load).")
    parser.add_argument("--out", type=Path, default=None, help="Results JSON (the table beside it, .md).")
    parser.add_argument("--quick", action="store_true", help="Smoke run: N = 500, 2000, one round, into --cache.")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.rounds = "500,2000", 1
    args.out = args.out or (
        args.cache / "data_scale_quick.json" if args.quick else results_dir("data_scale") / "data_scale.json"
    )
    args.argv = argv
    if not SHARED.is_file():
        raise SystemExit(f"{SHARED} is absent: the benchmark builds its images from the shared CIFAR-10 archive")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    pool = args.cache / "pool"
    t0 = time.perf_counter()
    write_pool(SHARED, pool, TRAIN_IMAGES + max(sizes), seed=0)
    generate_s = time.perf_counter() - t0
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    for n in sizes:
        link_folder(pool, args.cache / f"n{n}", TRAIN_IMAGES, n)
    # one model for every N: lenet at 32×32, trained briefly on the small folder, class 3 forgotten
    ckpt = args.cache / "forgot3.safetensors"
    if not ckpt.exists():
        base = args.cache / "original.safetensors"
        small = f"folder:{args.cache / f'n{sizes[0]}'}"
        run_child(
            [
                str(EXE),
                "train",
                "--dataset",
                small,
                "--image-size",
                "32",
                "--arch",
                "lenet",
                "--epochs",
                "1",
                "--min-steps",
                "60",
                "-q",
                "-o",
                str(base),
            ],
            env,
        )
        run_child(
            [str(EXE), "forget", str(base), "--forget", "3", "--samples", "16", "--no-eval", "-q", "-o", str(ckpt)], env
        )
    samples: dict[int, list[dict]] = {n: [] for n in sizes}
    for r in range(args.rounds):
        for n in sizes:  # interleaved: every N sees the same machine load over the run
            cmd = [
                str(EXE),
                "evaluate",
                str(ckpt),
                "--dataset",
                f"folder:{args.cache / f'n{n}'}",
                "--json",
                "--workers",
                str(args.workers),
            ]
            load = os.getloadavg()[0]
            wall, rss, out = run_child(cmd, env)
            report = json.loads(out)
            samples[n].append(
                {
                    "wall_s": wall,
                    "peak_rss_bytes": rss,
                    "eval_s": report["seconds"],
                    "accuracy": report["accuracy"],
                    "load_before": load,
                }
            )
            print(f"  round {r + 1}: N={n}: {wall:.1f} s, peak RSS {rss / 2**20:.0f} MiB", flush=True)
            done = sorted(m for m in sizes if samples[m])
            write_results(args, done, samples, generate_s)  # after every run: a long run leaves its figures
    return 0


def write_results(args, sizes: list[int], samples: dict[int, list[dict]], generate_s: float) -> None:
    """The table (printed and .md) and the JSON, from the rounds done so far."""
    rows = []
    for n in sizes:
        rss = statistics.median(s["peak_rss_bytes"] for s in samples[n])
        wall = statistics.median(s["wall_s"] for s in samples[n])
        evals = statistics.median(s["eval_s"] for s in samples[n])
        rows.append(
            {
                "images": n,
                "peak_rss_mib": rss / 2**20,
                "wall_s": wall,
                "eval_s": evals,
                "images_per_s_wall": n / wall,
                "images_per_s_eval": n / evals,
                "accuracy": samples[n][0]["accuracy"],
                "runs": samples[n],
            }
        )
    base_rss = rows[0]["peak_rss_mib"]
    for row in rows:
        row["rss_vs_smallest"] = row["peak_rss_mib"] / base_rss
    flat = max(r["rss_vs_smallest"] for r in rows) <= 1.10
    rounds = len(samples[sizes[0]])
    result = {
        "benchmark": "data_scale",
        "measured": "edge-unlearn evaluate CKPT --dataset folder:DIR",
        "workers": args.workers,
        "threads": args.threads,
        "rounds": rounds,
        "train_images": TRAIN_IMAGES,
        "generate_seconds": generate_s,
        "rss_flat_within_10pct": flat,
        "rows": rows,
        **provenance("benchmarks.data_scale", args.argv, load=os.getloadavg()),
    }
    lines = [
        f"`edge-unlearn evaluate` (probe included: {TRAIN_IMAGES} training images decoded per run) on a folder "
        f"of N JPEGs (20×20 to 300×200, ~30 % grey) brought to 32×32, lenet, --workers {args.workers}, "
        f"{args.threads} thread(s), median of {rounds} interleaved round(s); {os.cpu_count()} cores shared "
        f"with other jobs (load average {os.getloadavg()[0]:.1f}).",
        "",
        "| N images | peak RSS (MiB) | vs smallest N | wall (s) | images/s (wall) | images/s (evaluation) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['images']} | {row['peak_rss_mib']:.0f} | {row['rss_vs_smallest']:.3f} | "
            f"{row['wall_s']:.1f} | {row['images_per_s_wall']:.0f} | {row['images_per_s_eval']:.0f} |"
        )
    lines += ["", f"Peak RSS flat within 10 % over ×{max(sizes) // min(sizes)} images: {'yes' if flat else 'NO'}."]
    table = "\n".join(lines)
    print(table)
    write_files(result, args.out, table, args.out.with_suffix(".md"))


if __name__ == "__main__":
    sys.exit(main())
