"""The report's plots (matplotlib, the ``report`` extra): per-class accuracy of the original, forgotten and
retrained models; per-class accuracy per backend and precision; PNG data URIs for embedding."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def png_data_uri(fig) -> str:
    """The figure as a ``data:image/png;base64,...`` URI; closes it."""
    plt = _pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100)
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def per_class_figure(names: Sequence[str], series: Sequence[tuple[str, Sequence[float]]], forgotten: set[int]):
    """Grouped bars of per-class test accuracy, one group per class, one bar per model; forgotten classes shaded."""
    import numpy as np

    plt = _pyplot()
    x = np.arange(len(names))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(x) + 2), 3.6))
    for i, (label, vals) in enumerate(series):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, vals, width, label=label)
    for k in forgotten:
        ax.axvspan(k - 0.45, k + 0.45, color="#d62728", alpha=0.08)
    ax.set_xticks(x)
    ax.set_xticklabels(
        [f"{n}{' (forgotten)' if i in forgotten else ''}" for i, n in enumerate(names)],
        rotation=30,
        ha="right",
        fontsize=8,
    )
    ax.set_ylim(0, 1.3)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("test accuracy")
    ax.set_title("per-class accuracy")
    ax.legend(fontsize=8, loc="upper center", ncol=max(1, len(series)), frameon=False)
    fig.tight_layout()
    return fig


def backend_per_class_figure(validations: Sequence[dict[str, Any]]):
    """Per-class accuracy on the bundle of each validated model, beside the bundle's FP32 reference."""
    import numpy as np

    plt = _pyplot()
    first = validations[0]["per_class"]
    x = np.arange(len(first))
    width = 0.8 / (len(validations) + 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(x) + 2), 3.4))
    ax.bar(
        x - 0.4 + width / 2,
        [r.get("ref_acc") or 0 for r in first],
        width,
        label="FP32 reference (bundle)",
        color="#999999",
    )
    for i, v in enumerate(validations):
        label = f"{Path(str(v.get('model'))).name} [{v.get('runtime')}/{v.get('precision')}]"
        ax.bar(x - 0.4 + (i + 1.5) * width, [r.get("acc") or 0 for r in v["per_class"]], width, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(
        [f"{r['name']}{' (forgotten)' if r.get('forgotten') else ''}" for r in first],
        rotation=30,
        ha="right",
        fontsize=8,
    )
    ax.set_ylim(0, 1.3)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("accuracy on the bundle")
    ax.set_title("per-class accuracy per backend and precision")
    ax.legend(fontsize=7, loc="upper center", ncol=min(3, len(validations) + 1), frameon=False)
    fig.tight_layout()
    return fig
