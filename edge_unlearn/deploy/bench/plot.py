"""The bench's plot: p50 latency (p90..p99 shaded) and throughput against batch size. Needs matplotlib (the
``report`` extra); imported only when a plot is asked for."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def latency_figure(rows: Sequence[dict[str, Any]], title: str | None = None):
    """A matplotlib figure: p50 latency per batch (p90..p99 shaded) and throughput vs batch, one line per
    artefact/runtime/precision (the provider is named when it is not the CPU)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        provider = str(r.get("provider", ""))
        where = "" if provider in ("cpu", "CPUExecutionProvider", "-") else f"/{provider}"
        key = f"{r['name']} [{r['runtime']}/{r['precision']}{where}]"
        groups.setdefault(key, []).append(r)
    fig, (ax_lat, ax_tp) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, items in groups.items():
        items = sorted(items, key=lambda r: r["batch"])
        b = [r["batch"] for r in items]
        (line,) = ax_lat.plot(b, [r["p50_ms"] for r in items], marker="o", label=key)
        ax_lat.fill_between(
            b, [r["p90_ms"] for r in items], [r["p99_ms"] for r in items], alpha=0.15, color=line.get_color()
        )
        ax_tp.plot(b, [r["throughput"] for r in items], marker="o", color=line.get_color(), label=key)
    for ax in (ax_lat, ax_tp):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.grid(True, which="both", alpha=0.3)
    ax_lat.set_ylabel("latency per batch, ms (p50; p90-p99 shaded)")
    ax_tp.set_ylabel("throughput, images/s")
    ax_lat.set_title(title or "latency vs batch")
    ax_tp.set_title("throughput vs batch")
    ax_tp.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def plot_latency(rows: Sequence[dict[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """Write :func:`latency_figure` as a PNG (atomically)."""
    import matplotlib.pyplot as plt

    from edge_unlearn.fileio import atomic_output

    fig = latency_figure(rows, title)
    path = Path(path)
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)
    return path
