"""Measuring: any :class:`~edge_unlearn.deploy.runner.Runner`, a batch sweep, percentiles, throughput, peak memory.

Per artefact and batch it measures ``iterations`` timed ``infer`` calls (or as many as fit in ``duration``
seconds) after ``warmup`` untimed ones, on fixed random inputs of the model's input shape, and reports mean,
p50, p90, p99 latency (ms per batch), throughput (images/s = batch / mean latency), the process's peak resident
set size during that batch (Linux ``VmHWM``, reset before each batch through ``/proc/self/clear_refs`` where the
kernel allows it, else the process-lifetime peak) and, through an optional hook, the GPU's peak allocation.

A runner with the GPU timing capability (``supports_gpu_timing`` and ``time_gpu``, e.g. the TensorRT runner) is
also timed on the device alone (CUDA events around the engine, no host copies, optionally a CUDA graph replay),
in the same batch row as the end-to-end latency; other runners have no GPU-only figure (None, never 0). On a
Jetson the environment records the model and the ``nvpmodel`` power mode, which latency depends on.

Deployment side: imports no torch. A checkpoint's runner (:mod:`edge_unlearn.deploy.runners`) imports torch
itself when entered, sets torch's threads while active and gives its CUDA memory hook.
Longer than 500 lines because the measuring loop, the provider plan and the GPU timing hooks are one state machine over one report.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edge_unlearn.core.formats import read_checkpoint_header
from edge_unlearn.errors import DependencyError, EdgeUnlearnError, ModelFileError, UsageError

from ..runner import Runner
from ..runners import fused_head_runner, open_runner, torch_cuda_available
from ..tensorrt.plan import clip_batches
from .results import BenchReport

DEFAULT_BATCHES = (1, 8, 64)
DEFAULT_ITERATIONS = 50
#: onnxruntime providers ``provider="auto"`` benches, in this order, when onnxruntime has them
AUTO_ONNX_PROVIDERS = (
    ("cpu", "CPUExecutionProvider"),
    ("cuda", "CUDAExecutionProvider"),
    ("tensorrt", "TensorrtExecutionProvider"),
)


@dataclass(frozen=True)
class BenchConfig:
    """What to measure. ``iterations`` and ``duration`` exclude each other; neither means 50 iterations."""

    batches: tuple[int, ...] = DEFAULT_BATCHES
    warmup: int = 5
    iterations: int | None = None
    duration: float | None = None
    min_iterations: int = 5
    threads: int | None = None
    seed: int = 0
    #: also time runners that support it on the device alone (``time_gpu``: CUDA events, no host copies)
    gpu_timing: bool = True
    #: GPU-only timing replays a captured CUDA graph (trtexec ``--useCudaGraph``); the row says if it was used
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        if not self.batches or any(int(b) < 1 for b in self.batches):
            raise UsageError(f"--batches takes positive batch sizes, e.g. 1,8,64; got {list(self.batches)}")
        if self.iterations is not None and self.duration is not None:
            raise UsageError("give --iterations or --duration, not both")
        if self.iterations is not None and self.iterations < 1:
            raise UsageError(f"--iterations must be at least 1, got {self.iterations}")
        if self.duration is not None and not self.duration > 0:
            raise UsageError(f"--duration must be a positive number of seconds, got {self.duration}")
        if self.warmup < 0:
            raise UsageError(f"--warmup must be 0 or more, got {self.warmup}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {self.threads}")
        if self.cuda_graph and not self.gpu_timing:
            raise UsageError("--cuda-graph applies to the GPU-only timing; drop --no-gpu-timing or --cuda-graph")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["batches"] = list(self.batches)
        data["mode"] = "duration" if self.duration is not None else "iterations"
        if self.duration is None and self.iterations is None:
            data["iterations"] = DEFAULT_ITERATIONS
        return data


def parse_batches(text: str) -> tuple[int, ...]:
    """``"1,8,64"`` -> (1, 8, 64)."""
    try:
        values = tuple(int(v) for v in str(text).replace(" ", "").split(",") if v)
    except ValueError:
        raise UsageError(f"--batches takes comma-separated integers such as 1,8,64; got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise UsageError(f"--batches takes positive integers such as 1,8,64; got {text!r}")
    return tuple(dict.fromkeys(values))


# ------------------------------------------------------------------------------------------------ memory


def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def current_rss_mib() -> float | None:
    kib = _proc_status_kib("VmRSS")
    return None if kib is None else kib / 1024.0


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``) to the current RSS (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float | None:
    """The process's peak resident set size in MiB: ``VmHWM``, else ``getrusage`` (Linux kB, macOS bytes)."""
    kib = _proc_status_kib("VmHWM")
    if kib is not None:
        return kib / 1024.0
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError):
        return None
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


class GpuMemoryHook(Protocol):
    """Optional GPU memory probe: ``reset()`` before a batch, ``peak_mib()`` after it."""

    def reset(self) -> None: ...

    def peak_mib(self) -> float | None: ...


# ------------------------------------------------------------------------------------------------ runners


def input_shape_of(path: str | Path, runner: Runner | None = None) -> tuple[int, ...]:
    """The model's input shape without the batch axis, read without torch: the ONNX metadata, the safetensors
    header (JSON after an 8-byte length) or the TensorRT engine's sidecar."""
    meta = getattr(runner, "meta", None)
    shape = getattr(meta, "input_shape", None)
    if shape:
        return tuple(int(v) for v in shape)
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            return tuple(int(v) for v in read_checkpoint_header(path)["input_shape"])
        if suffix in (".plan", ".engine"):
            sidecar = json.loads(path.with_name(path.name + ".json").read_text())
            if sidecar.get("input_shape"):
                return tuple(int(v) for v in sidecar["input_shape"])
        if suffix == ".onnx":
            from ..onnx_meta import read_meta

            return tuple(int(v) for v in read_meta(path).input_shape)
    except EdgeUnlearnError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise ModelFileError(
            f"cannot read the input shape of {path} ({type(exc).__name__}: {exc}); "
            "give an edge-unlearn checkpoint, ONNX model or engine with its sidecar"
        ) from exc
    raise ModelFileError(
        f"{path} does not say its input shape; give an edge-unlearn checkpoint, ONNX model "
        "or an engine with its .json sidecar"
    )


def _onnx_providers_available() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def _split(provider: str | Sequence[str] | None) -> list[str]:
    if provider is None:
        return ["auto"]
    items = [provider] if isinstance(provider, str) else list(provider)
    out = [p.strip().lower() for item in items for p in str(item).split(",") if p.strip()]
    return out or ["auto"]


def plan_runs(path: str | Path, provider: str | Sequence[str] | None = None) -> list[str | None]:
    """The providers/devices to bench ``path`` on. ``auto``: ONNX on every onnxruntime provider present among
    CPU, CUDA, TensorRT; a checkpoint on CPU and, when torch sees a GPU, CUDA eager and CUDA with the fused
    masked head (``cuda-fused``); an engine on its GPU."""
    suffix = Path(path).suffix.lower()
    wanted = _split(provider)
    if suffix == ".onnx":
        if wanted == ["auto"]:
            available = _onnx_providers_available()
            return [short for short, full in AUTO_ONNX_PROVIDERS if full in available] or ["cpu"]
        return list(dict.fromkeys(wanted))
    if suffix == ".safetensors":
        if wanted == ["auto"]:
            return ["cpu"] + (["cuda", "cuda-fused"] if torch_cuda_available() else [])
        bad = [p for p in wanted if p not in ("cpu", "cuda", "cuda-fused")]
        if bad:
            raise UsageError(
                f"--provider {','.join(bad)} does not apply to torch checkpoint {Path(path).name}; "
                "use cpu, cuda or cuda-fused (or auto)"
            )
        return list(dict.fromkeys(wanted))
    return [None]


def open_bench_runner(path: str | Path, provider: str | None = None, threads: int | None = None) -> Runner:
    """The runner of ``path`` (through :func:`edge_unlearn.deploy.runners.open_runner`) with the CPU thread setting applied;
    provider ``cuda-fused`` on a checkpoint gives the fused masked head runner."""
    if provider == "cuda-fused":
        if Path(path).suffix.lower() != ".safetensors":
            raise UsageError(f"--provider cuda-fused applies to .safetensors checkpoints only, not {Path(path).name}")
        if not torch_cuda_available():
            raise DependencyError(
                "--provider cuda-fused needs a CUDA GPU visible to torch (and Triton); bench on cpu here"
            )
        runner = fused_head_runner(path, "cuda")
    else:
        runner = open_runner(path, provider=provider)
    if threads is not None and hasattr(runner, "threads"):
        runner.threads = threads  # onnxruntime: intra_op_num_threads; torch: torch.set_num_threads while active
    return runner


@dataclass
class BenchRow:
    """One artefact at one batch size. Latencies in milliseconds per ``infer`` call (one batch)."""

    name: str
    path: str
    runtime: str
    provider: str
    precision: str
    batch: int
    iterations: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    throughput: float
    peak_rss_mib: float | None
    gpu_peak_mib: float | None
    threads: int | str
    source_sha256: str = ""
    #: the ONNX metadata ``edge_unlearn_quant_layout`` (e.g. "s8s8-qdq", "u8s8-qoperator"); "" when not recorded
    quant_layout: str = ""
    #: GPU-only latency (ms per batch, CUDA events around the engine alone, no host copies) of runners with the
    #: GPU timing capability; None for the others (never 0)
    gpu_iterations: int | None = None
    gpu_mean_ms: float | None = None
    gpu_p50_ms: float | None = None
    gpu_p90_ms: float | None = None
    gpu_p99_ms: float | None = None
    gpu_min_ms: float | None = None
    gpu_max_ms: float | None = None
    #: whether the GPU-only timing replayed a CUDA graph (as the runner reports it); None without GPU timing
    cuda_graph: bool | None = None

    @property
    def label(self) -> str:
        layout = f", {self.quant_layout}" if self.quant_layout else ""
        return f"{self.name} [{self.runtime}/{self.provider}/{self.precision}{layout}]"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(latencies_s: Sequence[float], batch: int) -> dict[str, float]:
    """mean/p50/p90/p99/min/max/std in ms and images/s of per-call latencies in seconds."""
    ms = np.asarray(latencies_s, dtype=np.float64) * 1e3
    if ms.size == 0:
        raise UsageError("no timed iteration was run; raise --iterations or --duration")
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    mean = float(ms.mean())
    return {
        "mean_ms": mean,
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "std_ms": float(ms.std()),
        "throughput": batch / (mean / 1e3) if mean > 0 else math.inf,
    }


def supports_gpu_timing(runner: Runner) -> bool:
    """Whether ``runner`` has the GPU-only timing capability (``supports_gpu_timing`` and ``time_gpu``)."""
    return bool(getattr(runner, "supports_gpu_timing", False)) and callable(getattr(runner, "time_gpu", None))


def gpu_timing_stats(runner: Runner, batch: int, iterations: int, config: BenchConfig) -> dict[str, Any]:
    """Time ``batch`` on the device alone through ``runner.time_gpu`` (``iterations`` timed, ``config.warmup``
    untimed, ``config.cuda_graph`` passed through) -> the ``gpu_*`` fields of a :class:`BenchRow`."""
    result = runner.time_gpu(
        int(batch),
        iterations=int(iterations),
        warmup=config.warmup,  # type: ignore[attr-defined]
        cuda_graph=config.cuda_graph,
    )
    gpu_ms = np.asarray(result["gpu_ms"], dtype=np.float64)
    if gpu_ms.size == 0:
        raise ModelFileError(f"{runner.name} returned no GPU timings for batch {batch}")
    stats = summarize(gpu_ms / 1e3, int(batch))
    return {
        "gpu_iterations": int(gpu_ms.size),
        "cuda_graph": bool(result.get("cuda_graph", False)),
        **{f"gpu_{key}": stats[key] for key in ("mean_ms", "p50_ms", "p90_ms", "p99_ms", "min_ms", "max_ms")},
    }


def time_batches(runner: Runner, inputs: np.ndarray, config: BenchConfig) -> list[float]:
    """Warm up, then the timed calls on an active runner; per-call seconds."""
    for _ in range(config.warmup):
        runner.infer(inputs)
    latencies: list[float] = []
    clock = time.perf_counter
    if config.duration is not None:
        deadline = clock() + config.duration
        while clock() < deadline or len(latencies) < config.min_iterations:
            start = clock()
            runner.infer(inputs)
            latencies.append(clock() - start)
    else:
        for _ in range(config.iterations or DEFAULT_ITERATIONS):
            start = clock()
            runner.infer(inputs)
            latencies.append(clock() - start)
    return latencies


def bench_runner(
    runner: Runner,
    config: BenchConfig = BenchConfig(),
    name: str | None = None,
    input_shape: Sequence[int] | None = None,
    gpu_memory: GpuMemoryHook | None = None,
    echo: Callable[[str], None] | None = None,
) -> list[BenchRow]:
    """Enter ``runner`` and measure every batch of ``config``; one :class:`BenchRow` per batch."""
    shape = tuple(input_shape) if input_shape else input_shape_of(runner.path, runner)
    rng = np.random.default_rng(config.seed)
    rows: list[BenchRow] = []
    if config.threads is not None and hasattr(runner, "threads"):
        runner.threads = config.threads
    with runner:
        info = runner.describe()
        if gpu_memory is None and hasattr(runner, "gpu_memory_hook"):
            gpu_memory = runner.gpu_memory_hook()  # torch on CUDA: its peak allocation
        gpu_timed = config.gpu_timing and supports_gpu_timing(runner)
        batches = tuple(config.batches)
        if info.get("min_batch") is not None and info.get("max_batch") is not None:  # an engine: its profile
            batches, note = clip_batches(batches, int(info["min_batch"]), int(info["max_batch"]))
            if note and echo is not None:
                echo(f"  {runner.name}: {note}")
        for batch in batches:
            inputs = rng.standard_normal((int(batch), *shape)).astype(np.float32)
            out = runner.infer(inputs)  # also checks the batch is accepted before timing
            if len(out) != batch:
                raise ModelFileError(f"{runner.name} returned {len(out)} rows for a batch of {batch}")
            reset_peak_rss()
            if gpu_memory is not None:
                gpu_memory.reset()
            latencies = time_batches(runner, inputs, config)
            stats = summarize(latencies, int(batch))
            gpu_peak = gpu_memory.peak_mib() if gpu_memory is not None else None
            # same number of timed calls as the end-to-end loop (in --duration mode: as many as it made)
            gpu_stats = gpu_timing_stats(runner, int(batch), len(latencies), config) if gpu_timed else {}
            row = BenchRow(
                name=name or Path(runner.path).name,
                path=str(runner.path),
                runtime=str(info.get("runtime", runner.runtime)),
                provider=str(info.get("provider") or "-"),
                precision=str(info.get("precision") or "-"),
                batch=int(batch),
                iterations=len(latencies),
                **stats,
                peak_rss_mib=peak_rss_mib(),
                gpu_peak_mib=gpu_peak,
                threads=config.threads if config.threads is not None else "default",
                source_sha256=str(info.get("source_sha256") or ""),
                quant_layout=str(info.get("quant_layout") or ""),
                **gpu_stats,
            )
            rows.append(row)
            if echo is not None:
                gpu_note = (
                    ""
                    if row.gpu_p50_ms is None
                    else f", GPU-only p50 {row.gpu_p50_ms:.3f} ms{' (CUDA graph)' if row.cuda_graph else ''}"
                )
                echo(
                    f"  {row.label} batch {batch}: p50 {row.p50_ms:.3f} ms, p99 {row.p99_ms:.3f} ms, "
                    f"{row.throughput:.1f} img/s ({row.iterations} iterations){gpu_note}"
                )
    return rows


# ------------------------------------------------------------------------------------------------ environment


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_names() -> list[str]:
    """GPU names from nvidia-smi when present (no CUDA library import); [] otherwise."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def jetson_environment() -> dict[str, Any]:
    """On a Jetson: ``jetson_model``, ``jetson_release`` (L4T/JetPack) and ``power_mode`` (``nvpmodel -q``:
    {"name": "MAXN", "id": 0}); the keys that apply only, {} elsewhere. Never raises."""
    from .. import doctor
    from ..tensorrt.probe import jetson_power_mode

    out: dict[str, Any] = {}
    jetson = doctor.jetson_info(doctor.NV_TEGRA_RELEASE, doctor.DEVICE_TREE_MODEL)
    if jetson is not None:
        out["jetson_model"] = jetson.get("model")
        out["jetson_release"] = {k: jetson.get(k) for k in ("l4t", "jetpack")}
    power = jetson_power_mode()  # nvpmodel ships with L4T only: a power mode means a Jetson
    if power is not None:
        out["power_mode"] = power
    return out


def environment(threads: int | None = None) -> dict[str, Any]:
    """CPU model, cores, load, thread setting, GPUs, library versions (torch/TensorRT only if already loaded)
    and, on a Jetson, its model and power mode."""
    from edge_unlearn import __version__

    versions: dict[str, str] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "edge_unlearn": __version__,
    }
    try:
        import onnxruntime as ort

        versions["onnxruntime"] = ort.__version__
        providers = list(ort.get_available_providers())
    except ImportError:
        providers = []
    for module in ("onnx", "torch", "tensorrt", "pycuda"):
        mod = sys.modules.get(module)
        if mod is not None and getattr(mod, "__version__", None):
            versions[module] = str(mod.__version__)
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count()
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "load_average": load,
        "threads": threads if threads is not None else "default",
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "host": platform.node(),
        "gpus": gpu_names(),
        "onnxruntime_providers": providers,
        "versions": versions,
        **jetson_environment(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def bench_artefacts(
    paths: Iterable[str | Path],
    config: BenchConfig = BenchConfig(),
    provider: str | Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    keep_going: bool = False,
    echo: Callable[[str], None] | None = None,
    bundle: str | Path | None = None,
) -> BenchReport:
    """Bench every artefact on every provider of :func:`plan_runs`. With ``keep_going`` an artefact whose
    runtime is missing here (e.g. CUDA provider) is listed in ``errors`` instead of stopping the sweep. With
    ``bundle`` every artefact is also validated against it (the default thresholds of ``validate``), so the
    report can name the fastest one that passes (:meth:`BenchReport.fastest_passing`)."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise UsageError("give at least one artefact: a .safetensors checkpoint, an .onnx model or an engine")
    if names is not None and len(names) not in (0, len(paths)):
        raise UsageError(f"--name was given {len(names)} times for {len(paths)} artefacts; give one per artefact")
    for path in paths:
        if not path.is_file():
            raise ModelFileError(
                f"artefact {path} not found; give .safetensors checkpoints, .onnx models or .plan/.engine files"
            )
    rows: list[BenchRow] = []
    errors: list[dict[str, str]] = []
    for i, path in enumerate(paths):
        label = names[i] if names else path.name
        providers = plan_runs(path, provider)
        for prov in providers:
            if echo is not None:
                echo(f"bench {path} ({prov or 'default'})")
            try:
                runner = open_bench_runner(path, prov, config.threads)
                rows.extend(bench_runner(runner, config, name=label, echo=echo))
            except EdgeUnlearnError as exc:
                if not keep_going:
                    raise
                errors.append({"artefact": str(path), "provider": str(prov), "error": str(exc)})
    verdicts = {str(path): validation_verdict(path, bundle) for path in paths} if bundle is not None else {}
    return BenchReport(
        rows, config, environment(config.threads), errors, verdicts, None if bundle is None else str(bundle)
    )


def validation_verdict(path: str | Path, bundle: str | Path) -> dict[str, Any]:
    """``validate``'s verdict on one artefact: {passed, failed (check names), error (a file it cannot judge)}."""
    from ..validate import validate_model

    try:
        report = validate_model(path, bundle)
    except EdgeUnlearnError as exc:
        return {"passed": False, "failed": [], "error": str(exc)}
    return {"passed": bool(report), "failed": [c.name for c in report.checks if not c.passed], "error": None}
