"""``edge-unlearn report RUN_DIR``: one self-contained HTML file of a run folder, then its manifest.

Three parts: :func:`collect` gathers the evidence of the folder (run records, demo.json, validation and bench
JSON, checkpoint headers), :func:`report_context` turns it into plain values, and the Jinja2 template
``templates/report.html.j2`` (autoescape on: every value is escaped, nothing is hand-escaped) lays them out.
The plots are drawn by :mod:`edge_unlearn.deploy.report_plots`.

Everything is embedded (PNG plots as base64 ``data:`` URIs, inline CSS, one tiny inline script), so the file can
be mailed to a reviewer and opened offline. Sections, each shown only when the run folder holds its evidence:

* lineage: every checkpoint of the folder (safetensors header, read without torch): sha256, parent, arch,
  dataset, forgotten classes, and each unlearning step's method and parameters; the recorded commands;
* unlearning figures of the forgotten model against the original and the retrained model (``demo.json`` or
  ``forget``/``evaluate`` records), and a per-class accuracy plot;
* validation verdicts per backend and precision (``validate`` records, validation JSON files, ``demo.json``);
* latency table (with each ONNX model's quantization layout) and plot (``bench`` records or bench JSON files);
* the artefacts with their sha256.

Deployment side: imports no torch. Jinja2 is a base dependency (the report is a device command); matplotlib is
the ``report`` extra: without it the report renders every table and leaves each plot out with a note naming it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from edge_unlearn import __version__
from edge_unlearn.core.formats import BENCH_FORMAT, read_checkpoint_header
from edge_unlearn.errors import EdgeUnlearnError, UsageError
from edge_unlearn.fileio import atomic_output, sha256_file

from .bench.results import power_mode_text
from .rundir import MANIFEST, evidence_problems, read_records, refuse_signed, write_manifest

REPORT_NAME = "report.html"
TEMPLATE = "report.html.j2"
TEMPLATES = Path(__file__).resolve().parent / "templates"


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------ collect


def checkpoint_header(path: Path) -> dict[str, Any] | None:
    """The edge-unlearn metadata of a safetensors checkpoint (no torch, no tensors); None for a foreign file."""
    try:
        return read_checkpoint_header(path)
    except EdgeUnlearnError:
        return None


def collect(run_dir: Path) -> dict[str, Any]:
    """Everything the report shows, gathered from the folder (records first, then known files)."""
    records = read_records(run_dir)
    demo = _load_json(run_dir / "demo.json") if (run_dir / "demo.json").is_file() else None
    validations: list[dict[str, Any]] = []
    benches: list[dict[str, Any]] = []
    seen_validation_files: set[str] = set()
    for rec in records:
        payload = rec.get("payload") or {}
        if rec["kind"] == "validate" and isinstance(payload, dict) and "checks" in payload:
            validations.append({**payload, "_source": f"records/{rec['_file']}"})
        elif rec["kind"] == "bench" and isinstance(payload, dict) and payload.get("results"):
            benches.append({**payload, "_source": f"records/{rec['_file']}"})
    for path in sorted(run_dir.glob("*.json")):
        if path.name in (MANIFEST, "demo.json"):
            continue
        data = _load_json(path)
        if not isinstance(data, dict):
            continue
        if (
            "checks" in data
            and "verdict" in data
            and "environment" in data
            and not any(
                v.get("created") == data.get("created") and v.get("model") == data.get("model") for v in validations
            )
        ):
            validations.append({**data, "_source": path.name})
            seen_validation_files.add(path.name)
        elif data.get("format") == BENCH_FORMAT and data.get("results") and not benches:
            benches.append({**data, "_source": path.name})
    checkpoints = []
    for path in sorted(run_dir.rglob("*.safetensors")):
        meta = checkpoint_header(path)
        checkpoints.append(
            {
                "file": path.relative_to(run_dir).as_posix(),
                "sha256": sha256_file(path),
                "bytes": path.stat().st_size,
                "meta": meta,
            }
        )
    return {
        "records": records,
        "demo": demo,
        "validations": validations,
        "benches": benches,
        "checkpoints": checkpoints,
    }


def _retrained_eval(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The last ``evaluate`` record of a checkpoint that a ``retrain`` record wrote (outside the demo)."""
    made = {Path(str(r["payload"].get("checkpoint"))).name for r in records if r["kind"] == "retrain"}
    evals = [
        r["payload"]
        for r in records
        if r["kind"] == "evaluate" and Path(str(r["payload"].get("checkpoint"))).name in made
    ]
    return evals[-1] if evals else None


# ------------------------------------------------------------------------------------------------ context


def _forget_payload(data: dict[str, Any]) -> dict[str, Any] | None:
    return (data["demo"] or {}).get("forget") or next(
        (r["payload"] for r in data["records"] if r["kind"] == "forget"), None
    )


def _lineage(data: dict[str, Any]) -> dict[str, Any]:
    by_sha = {c["sha256"]: c["file"] for c in data["checkpoints"]}
    checkpoints = []
    for c in data["checkpoints"]:
        m = c["meta"] or {}
        parent = m.get("parent_sha256")
        names = m.get("class_names") or []
        forgotten = m.get("forgotten_classes") or []
        checkpoints.append(
            {
                "file": c["file"],
                "sha256": c["sha256"],
                "arch": m.get("arch", "?"),
                "dataset": m.get("dataset", "?"),
                "forgotten": ", ".join(f"{k} ({names[k]})" if k < len(names) else str(k) for k in forgotten) or "none",
                "parent": f"{by_sha.get(parent, '')} {parent[:16]}…" if parent else "—",
                "steps": [
                    f"{step.get('method')} forget {step.get('forget_classes')} params "
                    f"{json.dumps(step.get('params', {}), sort_keys=True)}"
                    for step in m.get("lineage") or []
                ],
            }
        )
    forget = _forget_payload(data)
    return {
        "checkpoints": checkpoints,
        "forget": None
        if not forget
        else {
            "classes": forget.get("forget_classes"),
            "class_names": ", ".join(forget.get("forget_class_names", [])),
            "method": forget.get("method"),
            "params": json.dumps(forget.get("params", {}), sort_keys=True),
            "samples": forget.get("samples_used"),
            "parent_sha256": forget.get("parent_sha256"),
        },
        "records": [
            {"file": r["_file"], "kind": r["kind"], "created": r.get("created"), "artefacts": r.get("artefacts", [])}
            for r in data["records"]
        ],
    }


def _figures(data: dict[str, Any]) -> dict[str, Any] | None:
    demo = data["demo"] or {}
    forget = _forget_payload(data)
    if not forget or "forget_acc" not in forget:
        return None
    gold = demo.get("retrain_eval") or _retrained_eval(data["records"]) or {}
    rows_spec = [
        ("forget_acc (deployed, mask on)", "forget_acc_before", "forget_acc", "forget_acc"),
        ("forget_acc_unmasked", "forget_acc_before", "forget_acc_unmasked", "forget_acc_unmasked"),
        ("retain_acc", "retain_acc_before", "retain_acc", "retain_acc"),
        ("probe_forget_acc", "probe_forget_acc_before", "probe_forget_acc", "probe_forget_acc"),
    ]
    per_after = forget.get("per_class_accuracy")
    plot = None
    if per_after and report_plots_available():
        from .report_plots import per_class_figure, png_data_uri

        per_before = forget.get("per_class_accuracy_before") or (demo.get("train") or {}).get("per_class_accuracy")
        names = gold.get("class_names") or [str(i) for i in range(len(per_after))]
        forgotten = set(forget.get("all_forgotten_classes") or forget.get("forget_classes") or [])
        series = [
            (label, vals)
            for label, vals in (
                ("original", per_before),
                (f"forgotten ({forget.get('method')})", per_after),
                ("retrained", gold.get("per_class_accuracy")),
            )
            if vals and len(vals) == len(per_after)
        ]
        plot = png_data_uri(per_class_figure(names, series, forgotten))
    return {
        "method": forget.get("method"),
        "has_per_class": bool(per_after),
        "plot": plot,
        "rows": [
            {"name": name, "original": forget.get(b), "forgotten": forget.get(a), "retrained": gold.get(g)}
            for name, b, a, g in rows_spec
        ],
    }


def _validations(data: dict[str, Any]) -> dict[str, Any] | None:
    rows = []
    for v in data["validations"]:
        env = v.get("environment") or {}
        checks = {c["name"]: c.get("value") for c in v.get("checks", [])}
        rows.append(
            {
                "model": Path(str(v.get("model"))).name,
                "runtime": v.get("runtime") or env.get("runtime"),
                "provider": v.get("provider") or env.get("provider"),
                "precision": v.get("precision") or env.get("precision"),
                "passed": _passed(v.get("verdict")),
                "forget_acc": checks.get("forget_acc"),
                "retain_drop": checks.get("retain_drop"),
                "agreement": checks.get("retain_agreement"),
                "wins": checks.get("forgotten_class_wins"),
                "failed": [c["name"] for c in v.get("checks", []) if not c.get("passed")],
                "source": Path(str(v.get("_source"))).name,
            }
        )
    deploy = (data["demo"] or {}).get("deploy") or {}
    if not rows and deploy:
        arts = deploy.get("artifacts", {})
        for key in ("fp32", "int8", "fp16"):
            v = deploy.get(key)
            if isinstance(v, dict):
                rows.append(
                    {
                        "model": Path(str(arts.get(key, key))).name,
                        "runtime": "onnxruntime",
                        "provider": "cpu",
                        "precision": key,
                        "passed": _passed(v.get("verdict")),
                        "forget_acc": v.get("forget_acc"),
                        "retain_drop": v.get("retain_drop"),
                        "agreement": v.get("retain_agreement"),
                        "wins": None,
                        "failed": list(v.get("failed", [])),
                        "source": "demo.json",
                    }
                )
    if not rows:
        return None
    with_classes = [v for v in data["validations"] if v.get("per_class")]
    plot = None
    if with_classes and report_plots_available():
        from .report_plots import backend_per_class_figure, png_data_uri

        plot = png_data_uri(backend_per_class_figure(with_classes))
    return {"rows": rows, "has_per_class": bool(with_classes), "plot": plot}


def _benches(data: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for bench in data["benches"]:
        env = bench.get("environment") or {}
        plot = None
        if report_plots_available():
            from .bench.plot import latency_figure
            from .report_plots import png_data_uri

            plot = png_data_uri(latency_figure(bench["results"]))
        rows = bench["results"]
        out.append(
            {
                "source": bench.get("_source"),
                "env": env,
                "gpus": ", ".join(env.get("gpus") or []) or "none",
                "jetson": power_mode_text(env),
                "gpu_timed": any(r.get("gpu_p50_ms") is not None for r in rows),
                "versions": ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items()),
                "rows": rows,
                "ratios": bench.get("ratios_vs_onnx_fp32") or [],
                "plot": plot,
            }
        )
    return out


def _artefacts(run_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(run_dir).as_posix()
        if rel in (MANIFEST, REPORT_NAME) or rel.startswith("records/") or path.name.startswith("."):
            continue
        rows.append({"file": rel, "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    return rows


def _passed(verdict: Any) -> bool:
    return str(verdict).lower() in ("pass", "true")


def report_plots_available() -> bool:
    """Whether matplotlib (the ``report`` extra) is importable; without it the plots are left out with a note."""
    import importlib.util

    try:
        return importlib.util.find_spec("matplotlib") is not None
    except ValueError:  # sys.modules["matplotlib"] is None: import blocked
        return False


def report_context(run_dir: Path, data: dict[str, Any]) -> dict[str, Any]:
    """The template's values (plain data) for a run folder's collected evidence."""
    validations = _validations(data)
    verdicts = [row["passed"] for row in validations["rows"]] if validations else []
    overall = (
        "all validations PASS"
        if verdicts and all(verdicts)
        else f"{sum(not v for v in verdicts)} validation(s) FAIL"
        if verdicts
        else "no validation recorded"
    )
    return {
        "run_name": run_dir.name,
        "run_dir": str(run_dir.resolve()),
        "run_dir_arg": str(run_dir),
        "version": __version__,
        "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "overall": overall,
        "manifest_name": MANIFEST,
        **_lineage(data),
        "figures": _figures(data),
        "validations": validations,
        "benches": _benches(data),
        "artefacts": _artefacts(run_dir),
        "evidence_problems": evidence_problems(run_dir),
    }


# ------------------------------------------------------------------------------------------------ render


def _num(value: Any, digits: int = 4) -> str:
    """A figure for a table cell: floats to ``digits`` places, None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_html(context: dict[str, Any]) -> str:
    """The template rendered with autoescape (every value is escaped; the template holds the only markup)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["num"] = _num
    return env.get_template(TEMPLATE).render(**context)


def render_report(run_dir: str | Path, output: str | Path | None = None, manifest: bool = True) -> Path:
    """Write ``RUN_DIR/report.html`` (or ``output``), then ``RUN_DIR/manifest.json``; returns the HTML path."""
    root = Path(run_dir)
    if not root.is_dir():
        raise UsageError(f"run folder {root} does not exist; pass the folder given to --run-dir or `demo --out-dir`")
    refuse_signed(root)
    data = collect(root)
    if not (data["records"] or data["demo"] or data["checkpoints"] or data["validations"] or data["benches"]):
        raise UsageError(
            f"{root} holds no run records, demo.json, checkpoints, validation or bench JSON; "
            f"run commands with --run-dir {root} first"
        )
    doc = render_html(report_context(root, data))
    out = Path(output) if output else root / REPORT_NAME
    with atomic_output(out) as tmp:
        Path(tmp).write_text(doc, encoding="utf-8")
    if manifest:
        write_manifest(root)
    return out
