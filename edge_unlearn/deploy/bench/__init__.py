"""The latency bench, in three parts: :mod:`.measure` (runners, batch sweep, percentiles, memory),
:mod:`.results` (table, ratios, JSON/CSV) and :mod:`.plot` (matplotlib, the ``report`` extra).
Deployment side: imports no torch; matplotlib only when a plot is drawn."""

from __future__ import annotations

from .measure import (
    AUTO_ONNX_PROVIDERS,
    DEFAULT_BATCHES,
    DEFAULT_ITERATIONS,
    BenchConfig,
    BenchRow,
    GpuMemoryHook,
    bench_artefacts,
    bench_runner,
    current_rss_mib,
    environment,
    gpu_timing_stats,
    input_shape_of,
    jetson_environment,
    open_bench_runner,
    parse_batches,
    peak_rss_mib,
    plan_runs,
    reset_peak_rss,
    summarize,
    supports_gpu_timing,
    time_batches,
)
from .results import CSV_FIELDS, BenchReport, power_mode_text

__all__ = [
    "AUTO_ONNX_PROVIDERS",
    "CSV_FIELDS",
    "DEFAULT_BATCHES",
    "DEFAULT_ITERATIONS",
    "BenchConfig",
    "BenchReport",
    "BenchRow",
    "GpuMemoryHook",
    "bench_artefacts",
    "bench_runner",
    "current_rss_mib",
    "environment",
    "gpu_timing_stats",
    "input_shape_of",
    "jetson_environment",
    "latency_figure",
    "open_bench_runner",
    "parse_batches",
    "peak_rss_mib",
    "plan_runs",
    "plot_latency",
    "power_mode_text",
    "reset_peak_rss",
    "summarize",
    "supports_gpu_timing",
    "time_batches",
]


def __getattr__(name: str):
    """The plot functions load matplotlib's module only when asked for."""
    if name in ("latency_figure", "plot_latency"):
        from . import plot

        return getattr(plot, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
