"""Bench results: the table, ratios against onnxruntime FP32, JSON (format ``edge-unlearn.bench/1``) and CSV.
Imports no torch and no matplotlib (the plot is :mod:`.plot`)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_unlearn.core.formats import BENCH_FORMAT

if TYPE_CHECKING:
    from .measure import BenchConfig, BenchRow

CSV_FIELDS = (
    "name",
    "path",
    "runtime",
    "provider",
    "precision",
    "quant_layout",
    "batch",
    "iterations",
    "mean_ms",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "min_ms",
    "max_ms",
    "std_ms",
    "throughput",
    "peak_rss_mib",
    "gpu_peak_mib",
    "threads",
    "gpu_iterations",
    "gpu_mean_ms",
    "gpu_p50_ms",
    "gpu_p90_ms",
    "gpu_p99_ms",
    "gpu_min_ms",
    "gpu_max_ms",
    "cuda_graph",
)


def power_mode_text(environment: dict[str, Any]) -> str:
    """'Jetson AGX Orin, power mode MAXN (id 0)' from a bench environment; "" off a Jetson."""
    parts = []
    if environment.get("jetson_model"):
        parts.append(str(environment["jetson_model"]))
    mode = environment.get("power_mode")
    if isinstance(mode, dict) and mode.get("name"):
        ident = f" (id {mode['id']})" if mode.get("id") is not None else ""
        parts.append(f"power mode {mode['name']}{ident}")
    return ", ".join(parts)


@dataclass
class BenchReport:
    rows: list[BenchRow]
    config: BenchConfig
    environment: dict[str, Any]
    errors: list[dict[str, str]] = field(default_factory=list)
    #: ``validate``'s verdict per artefact path against ``bundle`` (bench --bundle); empty without one
    verdicts: dict[str, dict[str, Any]] = field(default_factory=dict)
    bundle: str | None = None

    def fastest_passing(self) -> list[dict[str, Any]]:
        """Per batch size, the row with the lowest p50 among the artefacts that pass ``validate`` (bench
        --bundle): which runtime and precision to ship on this machine. Batches where none passes are absent."""
        best: dict[int, BenchRow] = {}
        for r in self.rows:
            if (self.verdicts.get(r.path) or {}).get("passed") and (
                r.batch not in best or r.p50_ms < best[r.batch].p50_ms
            ):
                best[r.batch] = r
        return [
            {
                "batch": b,
                "name": r.name,
                "path": r.path,
                "runtime": r.runtime,
                "provider": r.provider,
                "precision": r.precision,
                "p50_ms": r.p50_ms,
            }
            for b, r in sorted(best.items())
        ]

    def ratios(self) -> list[dict[str, Any]]:
        """Each row that is not onnxruntime FP32 against the onnxruntime FP32 row of the same source checkpoint,
        batch and kind of device (CPU or GPU): ``p50_ratio`` < 1 is faster than FP32, ``speedup`` = FP32 p50 /
        this p50. Rows without a source checkpoint sha256 or without such an FP32 row are left out."""

        def where(provider: str) -> str:
            return "cpu" if provider.lower() in ("cpu", "-") or "CPU" in provider else "gpu"

        base = {
            (r.source_sha256, where(r.provider), r.batch): r
            for r in self.rows
            if r.runtime == "onnxruntime" and r.precision == "fp32" and r.source_sha256
        }
        own = {
            (r.source_sha256, r.runtime, where(r.provider), r.batch): r
            for r in self.rows
            if r.precision == "fp32" and r.source_sha256
        }
        out = []
        for r in self.rows:
            if not r.source_sha256 or (r.runtime == "onnxruntime" and r.precision == "fp32"):
                continue
            ref = base.get((r.source_sha256, where(r.provider), r.batch))
            if ref is None:
                continue
            mine = own.get((r.source_sha256, r.runtime, where(r.provider), r.batch))
            out.append(
                {
                    "name": r.name,
                    "runtime": r.runtime,
                    "precision": r.precision,
                    "provider": r.provider,
                    "batch": r.batch,
                    "baseline": ref.name,
                    "p50_ratio": r.p50_ms / ref.p50_ms,
                    "p99_ratio": r.p99_ms / ref.p99_ms,
                    "speedup": ref.p50_ms / r.p50_ms,
                    "throughput_ratio": r.throughput / ref.throughput,
                    # against the FP32 file of the same checkpoint in this row's own runtime (INT8/FP32 per runtime)
                    "p50_ratio_own_fp32": None if mine is None else r.p50_ms / mine.p50_ms,
                }
            )
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "format": BENCH_FORMAT,
            "config": self.config.to_json(),
            "environment": self.environment,
            "results": [r.to_json() for r in self.rows],
            "ratios_vs_onnx_fp32": self.ratios(),
            "errors": self.errors,
            **(
                {"bundle": self.bundle, "validation": self.verdicts, "fastest_passing": self.fastest_passing()}
                if self.bundle is not None
                else {}
            ),
        }

    def table(self) -> str:
        head = (
            f"{'artefact':<24} {'runtime':<11} {'provider':<22} {'prec':<5} {'layout':<22} {'batch':>5} {'iters':>5} "
            f"{'mean ms':>9} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'img/s':>9} {'RSS MiB':>8} {'GPU MiB':>8} "
            f"{'GPU p50':>9} {'GPU p99':>9}"
        )
        lines = [head, "-" * len(head)]
        for r in self.rows:
            gpu = "-" if r.gpu_peak_mib is None else f"{r.gpu_peak_mib:.1f}"
            rss = "-" if r.peak_rss_mib is None else f"{r.peak_rss_mib:.0f}"
            gpu50, gpu99 = ("-" if v is None else f"{v:.3f}" for v in (r.gpu_p50_ms, r.gpu_p99_ms))
            lines.append(
                f"{r.name[:24]:<24} {r.runtime[:11]:<11} {r.provider[:22]:<22} {r.precision[:5]:<5} "
                f"{(r.quant_layout or '-')[:22]:<22} "
                f"{r.batch:>5} {r.iterations:>5} {r.mean_ms:>9.3f} {r.p50_ms:>9.3f} {r.p90_ms:>9.3f} "
                f"{r.p99_ms:>9.3f} {r.throughput:>9.1f} {rss:>8} {gpu:>8} {gpu50:>9} {gpu99:>9}"
            )
        if any(r.gpu_p50_ms is not None for r in self.rows):
            graphs = sorted({f"{r.name} batch {r.batch}" for r in self.rows if r.cuda_graph})
            lines.append(
                "GPU p50/p99: device-only ms per batch (CUDA events around the engine, no host copies); "
                + (f"CUDA graph replay: {', '.join(graphs)}" if graphs else "no CUDA graph")
                + "; '-': the runtime has no GPU-only timing"
            )
        ratios = self.ratios()
        if ratios:
            lines.append("vs onnxruntime FP32 of the same checkpoint (p50 ratio < 1 is faster):")
            for q in ratios:
                lines.append(
                    f"  {q['name'][:24]:<24} {q['runtime']}/{q['precision']} batch {q['batch']:>3}: "
                    f"p50 x{q['p50_ratio']:.2f}  p99 x{q['p99_ratio']:.2f}  speedup {q['speedup']:.2f}"
                    + (
                        f"  (x{q['p50_ratio_own_fp32']:.2f} its own {q['runtime']} FP32)"
                        if q["p50_ratio_own_fp32"] is not None and q["runtime"] != "onnxruntime"
                        else ""
                    )
                )
        if self.bundle is not None:
            lines.append(f"validate against {self.bundle} (default thresholds):")
            for path, v in self.verdicts.items():
                why = v["error"] or ", ".join(v["failed"])
                lines.append(f"  {Path(path).name}: {'PASS' if v['passed'] else 'FAIL'}" + (f" ({why})" if why else ""))
            fastest = self.fastest_passing()
            for f in fastest:
                lines.append(
                    f"fastest that passes validate, batch {f['batch']}: {f['name']} "
                    f"[{f['runtime']}/{f['provider']}/{f['precision']}] p50 {f['p50_ms']:.3f} ms"
                )
            if not fastest:
                lines.append("no artefact passes validate: none to ship")
        env = self.environment
        lines.append(
            f"machine: {env.get('cpu')} ({env.get('cpus_usable')} usable CPUs, threads {env.get('threads')}, "
            f"load {env.get('load_average')}); GPUs: {', '.join(env.get('gpus') or []) or 'none'}; "
            + ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items())
        )
        if power_mode_text(env):
            lines.append(f"jetson: {power_mode_text(env)}")
        load, cpus = env.get("load_average"), env.get("cpus_usable")
        if load and cpus and load[0] > cpus:
            lines.append(
                f"warning: load average {load[0]} exceeds the {cpus} usable CPUs: these latencies include "
                "waiting for a CPU (multi-threaded torch suffers most); rerun on an idle machine or "
                "with --threads 1"
            )
        for err in self.errors:
            lines.append(f"skipped {err['artefact']} ({err['provider']}): {err['error']}")
        return "\n".join(lines)

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(CSV_FIELDS), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: ("" if v is None else v) for k, v in r.to_json().items()})
        return buf.getvalue()

    def write_json(self, path: str | Path) -> None:
        from edge_unlearn.core.jsontext import to_json_text
        from edge_unlearn.fileio import atomic_output

        with atomic_output(path) as tmp:
            Path(tmp).write_text(to_json_text(self.to_json()) + "\n")

    def write_csv(self, path: str | Path) -> None:
        from edge_unlearn.fileio import atomic_output

        with atomic_output(path) as tmp:
            Path(tmp).write_text(self.to_csv())

    def plot(self, path: str | Path) -> Path:
        """Write the latency/throughput PNG (needs matplotlib: the ``report`` extra)."""
        from .plot import plot_latency

        return plot_latency([r.to_json() for r in self.rows], path)
