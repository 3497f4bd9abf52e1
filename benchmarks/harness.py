"""What every benchmark shares: where files go, threads, provenance, the trained-model cache, results writing.

Benchmarks are modules of the ``benchmarks`` package (product ones at the top, experiments under
``benchmarks.research``), run from the repository root as ``python -m benchmarks.<name>`` or
``python -m benchmarks.research.<name>``; they import this module as ``benchmarks.harness`` and never
import one another by path.

- :func:`use_threads`: the one way a benchmark sets torch's intra-op threads (``--threads``, else the
  ``BENCH_THREADS`` environment variable, else the script's default).
- :func:`provenance`: the command line that reproduces a results file and the environment it ran in.
- :func:`cached_train`: train a model once per recipe (architecture, dataset content, training config,
  forgotten classes), cached under a hash of it; forgetting_depth's cache layout, which long CPU runs fill.
- :func:`write_results`: the one writer of a results file (JSON) and its table (markdown), all or nothing.
- :func:`run_reporting_errors`: a bad checkpoint, dataset or option is one ``error:`` line and exit code 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_unlearn import __version__
from edge_unlearn.core.jsontext import to_json_text
from edge_unlearn.errors import EdgeUnlearnError
from edge_unlearn.fileio import atomic_output

if TYPE_CHECKING:  # torch-heavy types, imported where used (device-side benchmarks import this module too)
    from edge_unlearn.data import Dataset
    from edge_unlearn.models import UnlearnableClassifier
    from edge_unlearn.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
#: the real datasets (read-only, beside the repository)
SHARED_DATA = ROOT.parent / "shared" / "data"
#: trained models, exported artefacts and other scratch of benchmark runs (gitignored)
SCRATCH = ROOT / "bench_out"
#: committed results, one folder per benchmark (benchmarks/results/README.md indexes them)
RESULTS = ROOT / "benchmarks" / "results"


def results_dir(benchmark: str) -> Path:
    """The folder of one benchmark's committed results: ``benchmarks/results/<benchmark>/``."""
    return RESULTS / benchmark


def use_threads(threads: int | None = None, default: int = 2) -> int:
    """Set torch's intra-op threads: ``threads`` if given, else ``BENCH_THREADS``, else ``default``; at most the
    machine's cores. Returns the count set."""
    import torch

    wanted = threads if threads is not None else int(os.environ.get("BENCH_THREADS", default))
    count = max(1, min(os.cpu_count() or 1, wanted))
    torch.set_num_threads(count)
    return count


def git_commit() -> str | None:
    """The repository's HEAD commit, with ``+dirty`` when tracked files differ from it; None outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--"], cwd=ROOT, capture_output=True, timeout=10
        ).returncode
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(**extra: Any) -> dict[str, Any]:
    """The software and machine a result was measured on (``extra``: what a benchmark adds, e.g. onnxruntime)."""
    env: dict[str, Any] = {"edge_unlearn": __version__}
    try:
        import torch

        env.update(torch=torch.__version__, threads=torch.get_num_threads())
    except ImportError:  # a device-side benchmark on a machine without torch
        env.update(torch=None, threads=None)
    env.update(
        python=platform.python_version(),
        machine=platform.machine(),
        cpu=cpu_name(),
        cpu_count=os.cpu_count(),
        git_commit=git_commit(),
    )
    env.update(extra)
    return env


#: the packages of the edge runtimes and their converters, for benchmarks that compare them
RUNTIME_PACKAGES = (
    "onnxruntime",
    "openvino",
    "nncf",
    "ai-edge-litert",
    "litert-torch",
    "ai-edge-quantizer",
    "executorch",
    "torchao",
    "torch",
)


def runtime_versions() -> dict[str, str]:
    """The installed version of each of :data:`RUNTIME_PACKAGES` (absent ones left out)."""
    from importlib import metadata

    out = {}
    for dist in RUNTIME_PACKAGES:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """The command that reruns a benchmark: ``python -m <module> <argv>`` (``argv``: the process's by default)."""
    return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


def provenance(
    module: str, argv: Sequence[str] | None = None, started: float | None = None, **extra: Any
) -> dict[str, Any]:
    """How a results file was made: ``command`` (:func:`command_line`), ``environment`` (:func:`environment`
    with ``extra``) and, given ``started`` (``time.perf_counter()``), the run's ``seconds``."""
    out: dict[str, Any] = {}
    if started is not None:
        out["seconds"] = time.perf_counter() - started
    out["command"] = command_line(module, argv)
    out["environment"] = environment(**extra)
    return out


def data_digest(data: Dataset) -> str:
    """SHA-256 of the dataset's content (images and labels of both splits): the cache key's data part."""
    from edge_unlearn.data import ImageSource

    h = hashlib.sha256()
    for t in (data.x_train, data.y_train, data.x_test, data.y_test):
        chunks = t.batches(4096) if isinstance(t, ImageSource) else (t,)  # images stream; labels are tensors
        for chunk in chunks:
            h.update(chunk.contiguous().numpy().tobytes())
    return h.hexdigest()


def recipe_json(recipe: TrainConfig) -> dict[str, Any]:
    """The training config as the cache records it: without the device (which does not change the recipe)."""
    return {k: v for k, v in recipe.to_json().items() if k != "device"}


def cache_key(arch: str, digest: str, recipe: TrainConfig, forget_classes: Sequence[int] = ()) -> str:
    """The cache's name for one recipe: 16 hex digits of the SHA-256 of arch, data digest, recipe and the
    forgotten classes (unchanged since the first CIFAR-10 runs filled caches with it)."""
    return hashlib.sha256(
        json.dumps(
            {"arch": arch, "data": digest, "recipe": recipe_json(recipe), "forget": sorted(forget_classes)},
            sort_keys=True,
        ).encode()
    ).hexdigest()[:16]


def add_model_cache_and_output_args(parser: Any) -> None:
    """The options every study on forgetting_depth's model cache takes: ``--out-dir`` (the cache), ``--json``,
    ``--md``."""
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=SCRATCH / "forgetting_depth",
        help="the trained-model cache (forgetting_depth's)",
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--md", type=Path)


def cached_train(
    cache: Path, arch: str, data: Dataset, digest: str, recipe: TrainConfig, forget_classes: tuple[int, ...] = ()
) -> tuple[UnlearnableClassifier, float | None, str]:
    """Train (or load the model cached under the recipe's :func:`cache_key`): (model, training seconds, key).

    Files: ``<cache>/<arch>_<key>.safetensors`` and ``.json`` (``seconds``: those of the run that trained it;
    None for a model trained elsewhere and adopted into the cache; ``trained_with``: torch's version and thread
    count then — the key leaves them out so a cache serves any machine, but on CPU another thread count sums in
    another order and trains other weights: docs/training.md)."""
    import torch

    from edge_unlearn.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
    from edge_unlearn.training import train_model

    key = cache_key(arch, digest, recipe, forget_classes)
    path, info = cache / f"{arch}_{key}.safetensors", cache / f"{arch}_{key}.json"
    if path.exists() and info.exists():
        return load_checkpoint(path).model, json.loads(info.read_text())["seconds"], key
    result = train_model(arch, data, recipe, forget_classes=list(forget_classes), progress=False)
    meta = CheckpointMeta(
        arch,
        data.num_classes,
        data.class_names,
        data.input_shape,
        data.normalization,
        data.spec,
        train_recipe=recipe.to_json(),
    )
    cache.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, result.model, meta)
    info.write_text(
        json.dumps(
            {
                "seconds": result.seconds,
                "arch": arch,
                "recipe": recipe_json(recipe),
                "forget": sorted(forget_classes),
                "trained_with": {"torch": torch.__version__, "threads": torch.get_num_threads()},
            }
        )
    )
    return result.model, result.seconds, key


def write_results(
    report: dict[str, Any], json_path: Path | None, markdown: str | None = None, md_path: Path | None = None
) -> None:
    """The report as JSON (NaN written as null) and ``markdown`` as a table file, each where a path is given
    (folders made; each file all or nothing)."""
    for path, content in ((json_path, to_json_text(report) + "\n"), (md_path, (markdown or "") + "\n")):
        if path is None or (path is md_path and markdown is None):
            continue
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:
            tmp.write_text(content)
        print(f"wrote {path}", flush=True)


def run_reporting_errors(job: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``job(args)``, with a bad checkpoint, dataset, option or model kind reported as one ``error:`` line on
    stderr and exit code 2."""
    try:
        return job(args)
    except EdgeUnlearnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (the noise of an accuracy on ``n`` test images)."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    centre, half = (
        (p + z * z / (2 * n)) / (1 + z * z / n),
        z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n),
    )
    return centre - half, centre + half
