"""``edge-unlearn report RUN_DIR``: one self-contained HTML file of a run folder, then its manifest.

Everything is embedded (PNG plots as base64 ``data:`` URIs, inline CSS, one tiny inline script), so the file can
be mailed to a reviewer and opened offline. Sections, each shown only when the run folder holds its evidence:

* lineage: every checkpoint of the folder (safetensors header, read without torch): sha256, parent, arch,
  dataset, forgotten classes, and each unlearning step's method and parameters; the recorded commands;
* unlearning figures of the forgotten model against the original and the retrained model (``demo.json`` or
  ``forget``/``evaluate`` records), and a per-class accuracy plot;
* validation verdicts per backend and precision (``validate`` records, validation JSON files, ``demo.json``);
* latency table and plot (``bench`` records or bench JSON files);
* the artefacts with their sha256.

Imports no torch; matplotlib is imported when the report is rendered.
"""
from __future__ import annotations

import base64
import html
import io
import json
import struct
import time
from pathlib import Path
from typing import Any, Iterable

from edge_unlearn import __version__
from edge_unlearn.errors import UsageError
from edge_unlearn.fileio import atomic_output, sha256_file

from .rundir import MANIFEST, evidence_banner, read_records, write_manifest

REPORT_NAME = "report.html"
BENCH_FORMAT = "edge-unlearn.bench/1"

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#1d2330;
padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #e3e7ee;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #d5dae3;padding:.3em .6em;
text-align:left;vertical-align:top}th{background:#f3f5f9;white-space:nowrap}td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{background:#e3f6e8;color:#11632d;font-weight:600}.fail{background:#fde5e5;color:#9b1c1c;font-weight:600}
code,.hash{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em;overflow-wrap:anywhere}.muted{color:#667085}
table{max-width:100%}img{max-width:100%;border:1px solid #e3e7ee;margin:.4em 0}
"""

#: sets data-images-loaded="yes"/"no" on <body> once every <img> decoded (checked by the headless-browser test)
_SCRIPT = """
(function(){function check(){var imgs=Array.prototype.slice.call(document.images);
var ok=imgs.length>0&&imgs.every(function(i){return i.complete&&i.naturalWidth>0;});
document.body.setAttribute('data-images-loaded',ok?'yes':'no');
document.body.setAttribute('data-image-count',String(imgs.length));}
if(document.readyState==='complete'){check();}else{window.addEventListener('load',check);}})();
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)
    return _e(value)


def _table(head: list[str], rows: Iterable[list[str]], raw: bool = False) -> str:
    """Cells are escaped unless ``raw`` (then the caller escaped them)."""
    out = ["<table><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(c if raw else f"<td>{_e(c)}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100)
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{_e(alt)}">'


def _verdict_cell(verdict: Any) -> str:
    ok = str(verdict).lower() in ("pass", "true")
    return f'<td class="{"pass" if ok else "fail"}" data-verdict="{"pass" if ok else "fail"}">{"PASS" if ok else "FAIL"}</td>'


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------ collect


def checkpoint_header(path: Path) -> dict[str, Any] | None:
    """The edge-unlearn metadata of a safetensors checkpoint, read as JSON (no torch, no tensors)."""
    try:
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            if size > 100 * 2**20:
                return None
            header = json.loads(handle.read(size))
        return json.loads(header["__metadata__"]["edge_unlearn"])
    except (OSError, ValueError, KeyError, TypeError, struct.error):
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
        if "checks" in data and "verdict" in data and "environment" in data and not any(
                v.get("created") == data.get("created") and v.get("model") == data.get("model") for v in validations):
            validations.append({**data, "_source": path.name})
            seen_validation_files.add(path.name)
        elif data.get("format") == BENCH_FORMAT and data.get("results") and not benches:
            benches.append({**data, "_source": path.name})
    checkpoints = []
    for path in sorted(run_dir.rglob("*.safetensors")):
        meta = checkpoint_header(path)
        checkpoints.append({"file": path.relative_to(run_dir).as_posix(), "sha256": sha256_file(path),
                            "bytes": path.stat().st_size, "meta": meta})
    return {"records": records, "demo": demo, "validations": validations, "benches": benches,
            "checkpoints": checkpoints}


# ------------------------------------------------------------------------------------------------ sections


def _lineage(data: dict[str, Any]) -> str:
    parts = ["<h2 id='lineage'>Lineage</h2>"]
    cks = data["checkpoints"]
    by_sha = {c["sha256"]: c["file"] for c in cks}
    if cks:
        rows = []
        for c in cks:
            m = c["meta"] or {}
            parent = m.get("parent_sha256")
            parent_txt = f"{by_sha.get(parent, '')} {parent[:16]}…" if parent else "—"
            names = m.get("class_names") or []
            forgotten = m.get("forgotten_classes") or []
            forgot_txt = ", ".join(f"{k} ({names[k]})" if k < len(names) else str(k) for k in forgotten) or "none"
            steps = []
            for step in m.get("lineage") or []:
                params = json.dumps(step.get("params", {}), sort_keys=True)
                steps.append(f"{step.get('method')} forget {step.get('forget_classes')} params {params}")
            rows.append([f"<td><code>{_e(c['file'])}</code></td>",
                         f"<td class='hash' title='{_e(c['sha256'])}'>{_e(c['sha256'])}</td>",
                         f"<td>{_e(m.get('arch', '?'))} / {_e(m.get('dataset', '?'))}</td>",
                         f"<td>{_e(forgot_txt)}</td>",
                         f"<td class='hash'>{_e(parent_txt)}</td>",
                         f"<td>{'<br>'.join(_e(s) for s in steps) or '—'}</td>"])
        parts.append(_table(["checkpoint", "sha256", "arch / dataset", "forgotten classes", "parent",
                             "unlearning steps (method, parameters)"], rows, raw=True))
    else:
        parts.append("<p class='muted'>No checkpoint in this folder.</p>")
    forget = (data["demo"] or {}).get("forget") or next(
        (r["payload"] for r in data["records"] if r["kind"] == "forget"), None)
    if forget:
        parts.append(f"<p>Forgotten: <b>{_e(forget.get('forget_classes'))}</b> "
                     f"({_e(', '.join(forget.get('forget_class_names', [])))}) with method <b>{_e(forget.get('method'))}</b>, "
                     f"parameters <code>{_e(json.dumps(forget.get('params', {}), sort_keys=True))}</code>, "
                     f"{_e(forget.get('samples_used'))} samples, parent sha256 "
                     f"<span class='hash'>{_e(forget.get('parent_sha256'))}</span>.</p>")
    if data["records"]:
        rows = []
        for r in data["records"]:
            arts = "<br>".join(f"<code>{_e(a['path'])}</code> <span class='hash'>{_e(a['sha256'][:16])}…</span>"
                               for a in r.get("artefacts", []))
            rows.append([f"<td><code>{_e(r['_file'])}</code></td>", f"<td>{_e(r['kind'])}</td>",
                         f"<td>{_e(r.get('created'))}</td>", f"<td>{arts or '—'}</td>"])
        parts.append("<h3>Recorded commands</h3>")
        parts.append(_table(["record", "kind", "created (UTC)", "artefacts"], rows, raw=True))
    return "\n".join(parts)


def _retrained_eval(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The last ``evaluate`` record of a checkpoint that a ``retrain`` record wrote (outside the demo)."""
    made = {Path(str(r["payload"].get("checkpoint"))).name for r in records if r["kind"] == "retrain"}
    evals = [r["payload"] for r in records if r["kind"] == "evaluate"
             and Path(str(r["payload"].get("checkpoint"))).name in made]
    return evals[-1] if evals else None


def _figures(data: dict[str, Any]) -> str:
    demo = data["demo"] or {}
    forget = demo.get("forget") or next((r["payload"] for r in data["records"] if r["kind"] == "forget"), None)
    if not forget or "forget_acc" not in forget:
        return ""
    gold = demo.get("retrain_eval") or _retrained_eval(data["records"]) or {}
    rows_spec = [("forget_acc (deployed, mask on)", "forget_acc_before", "forget_acc", "forget_acc"),
                 ("forget_acc_unmasked", "forget_acc_before", "forget_acc_unmasked", "forget_acc_unmasked"),
                 ("retain_acc", "retain_acc_before", "retain_acc", "retain_acc"),
                 ("probe_forget_acc", "probe_forget_acc_before", "probe_forget_acc", "probe_forget_acc")]
    rows = [[f"<td>{_e(name)}</td>", f"<td class='num'>{_num(forget.get(b))}</td>",
             f"<td class='num'>{_num(forget.get(a))}</td>", f"<td class='num'>{_num(gold.get(g))}</td>"]
            for name, b, a, g in rows_spec]
    parts = ["<h2 id='figures'>Unlearning figures</h2>",
             "<p>The forgotten model against the original it came from and a model retrained from scratch without "
             "the forgotten classes (the gold standard).</p>",
             _table(["figure", "original", f"forgotten ({forget.get('method')})", "retrained"], rows, raw=True)]
    per_after = forget.get("per_class_accuracy")
    per_before = forget.get("per_class_accuracy_before") or (demo.get("train") or {}).get("per_class_accuracy")
    per_gold = gold.get("per_class_accuracy")
    if per_after:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        import numpy as np

        names = gold.get("class_names") or [str(i) for i in range(len(per_after))]
        forgotten = set(forget.get("all_forgotten_classes") or forget.get("forget_classes") or [])
        series = [(label, vals) for label, vals in (("original", per_before), (f"forgotten ({forget.get('method')})",
                                                                               per_after), ("retrained", per_gold))
                  if vals and len(vals) == len(per_after)]
        x = np.arange(len(per_after))
        width = 0.8 / len(series)
        fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(x) + 2), 3.6))
        for i, (label, vals) in enumerate(series):
            ax.bar(x + (i - (len(series) - 1) / 2) * width, vals, width, label=label)
        for k in forgotten:
            ax.axvspan(k - 0.45, k + 0.45, color="#d62728", alpha=0.08)
        ax.set_xticks(x)
        ax.set_xticklabels([f"{n}{' (forgotten)' if i in forgotten else ''}" for i, n in enumerate(names)],
                           rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.3)
        ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        ax.set_ylabel("test accuracy")
        ax.set_title("per-class accuracy")
        ax.legend(fontsize=8, loc="upper center", ncol=len(series), frameon=False)
        fig.tight_layout()
        parts.append(_img(_png(fig), "per-class accuracy of the original, forgotten and retrained models"))
    return "\n".join(parts)


def _validation(data: dict[str, Any]) -> str:
    rows = []
    for v in data["validations"]:
        env = v.get("environment") or {}
        checks = {c["name"]: c for c in v.get("checks", [])}

        def fig(name: str) -> str:
            c = checks.get(name)
            return f"<td class='num'>{_num(c.get('value') if c else None)}</td>"

        failed = [c["name"] for c in v.get("checks", []) if not c.get("passed")]
        rows.append([f"<td><code>{_e(Path(str(v.get('model'))).name)}</code></td>",
                     f"<td>{_e(v.get('runtime') or env.get('runtime'))}</td>",
                     f"<td>{_e(v.get('provider') or env.get('provider'))}</td>",
                     f"<td>{_e(v.get('precision') or env.get('precision'))}</td>", _verdict_cell(v.get("verdict")),
                     fig("forget_acc"), fig("retain_drop"), fig("retain_agreement"), fig("forgotten_class_wins"),
                     f"<td>{_e(', '.join(failed)) or '—'}</td>", f"<td class='muted'>{_e(Path(str(v.get('_source'))).name)}</td>"])
    deploy = (data["demo"] or {}).get("deploy") or {}
    if not rows and deploy:
        arts = deploy.get("artifacts", {})
        for key in ("fp32", "int8", "fp16"):
            v = deploy.get(key)
            if not isinstance(v, dict):
                continue
            rows.append([f"<td><code>{_e(Path(str(arts.get(key, key))).name)}</code></td>", "<td>onnxruntime</td>",
                         "<td>cpu</td>", f"<td>{_e(key)}</td>", _verdict_cell(v.get("verdict")),
                         f"<td class='num'>{_num(v.get('forget_acc'))}</td>",
                         f"<td class='num'>{_num(v.get('retain_drop'))}</td>",
                         f"<td class='num'>{_num(v.get('retain_agreement'))}</td>", "<td class='num'>—</td>",
                         f"<td>{_e(', '.join(v.get('failed', []))) or '—'}</td>", "<td class='muted'>demo.json</td>"])
    if not rows:
        return ""
    head = ["model", "runtime", "provider", "precision", "verdict", "forget_acc", "retain_drop", "agreement",
            "forgotten wins", "failed checks", "source"]
    parts = ["<h2 id='validation'>Validation verdicts per backend and precision</h2>",
             "<p>Does forgetting survive export, quantization and the runtime? Each row ran the model over the "
             "evaluation bundle on that runtime (fail closed: a figure that could not be measured fails).</p>",
             _table(head, rows, raw=True)]
    with_classes = [v for v in data["validations"] if v.get("per_class")]
    if with_classes:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        import numpy as np

        first = with_classes[0]["per_class"]
        x = np.arange(len(first))
        width = 0.8 / (len(with_classes) + 1)
        fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(x) + 2), 3.4))
        ax.bar(x - 0.4 + width / 2, [r.get("ref_acc") or 0 for r in first], width, label="FP32 reference (bundle)",
               color="#999999")
        for i, v in enumerate(with_classes):
            label = f"{Path(str(v.get('model'))).name} [{v.get('runtime')}/{v.get('precision')}]"
            ax.bar(x - 0.4 + (i + 1.5) * width, [r.get("acc") or 0 for r in v["per_class"]], width, label=label)
        ax.set_xticks(x)
        ax.set_xticklabels([f"{r['name']}{' (forgotten)' if r.get('forgotten') else ''}" for r in first],
                           rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.3)
        ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        ax.set_ylabel("accuracy on the bundle")
        ax.set_title("per-class accuracy per backend and precision")
        ax.legend(fontsize=7, loc="upper center", ncol=min(3, len(with_classes) + 1), frameon=False)
        fig.tight_layout()
        parts.append(_img(_png(fig), "per-class accuracy per backend and precision"))
    return "\n".join(parts)


def _latency(data: dict[str, Any]) -> str:
    if not data["benches"]:
        return ""
    from .bench import latency_figure

    parts = ["<h2 id='latency'>Latency</h2>"]
    for bench in data["benches"]:
        rows = bench["results"]
        env = bench.get("environment") or {}
        parts.append(f"<p class='muted'>{_e(bench.get('_source'))}: {_e(env.get('cpu'))}, "
                     f"{_e(env.get('cpus_usable'))} usable CPUs, threads {_e(env.get('threads'))}, load "
                     f"{_e(env.get('load_average'))}, GPUs {_e(', '.join(env.get('gpus') or []) or 'none')}; "
                     f"{_e(', '.join(f'{k} {v}' for k, v in (env.get('versions') or {}).items()))}</p>")
        table_rows = [[f"<td><code>{_e(r['name'])}</code></td>", f"<td>{_e(r['runtime'])}</td>",
                       f"<td>{_e(r['provider'])}</td>", f"<td>{_e(r['precision'])}</td>",
                       f"<td class='num'>{r['batch']}</td>", f"<td class='num'>{_num(r['mean_ms'], 3)}</td>",
                       f"<td class='num'>{_num(r['p50_ms'], 3)}</td>", f"<td class='num'>{_num(r['p90_ms'], 3)}</td>",
                       f"<td class='num'>{_num(r['p99_ms'], 3)}</td>", f"<td class='num'>{_num(r['throughput'], 1)}</td>",
                       f"<td class='num'>{_num(r.get('peak_rss_mib'), 0)}</td>",
                       f"<td class='num'>{_num(r.get('gpu_peak_mib'), 1)}</td>"] for r in rows]
        parts.append(_table(["artefact", "runtime", "provider", "precision", "batch", "mean ms", "p50 ms", "p90 ms",
                             "p99 ms", "images/s", "peak RSS MiB", "GPU MiB"], table_rows, raw=True))
        ratios = bench.get("ratios_vs_onnx_fp32") or []
        if ratios:
            parts.append(_table(["artefact", "runtime / precision", "batch", "p50 vs ONNX FP32", "p99 vs ONNX FP32",
                                 "speedup"],
                                [[q["name"], f"{q['runtime']} / {q['precision']}", str(q["batch"]),
                                  f"×{q['p50_ratio']:.2f}", f"×{q['p99_ratio']:.2f}", f"{q['speedup']:.2f}"]
                                 for q in ratios]))
        parts.append(_img(_png(latency_figure(rows)), "latency and throughput vs batch size"))
        parts.append("<p class='muted'>Latency is per batch (one <code>infer</code> call). Peak RSS is the whole "
                     "process's (it includes libraries loaded for earlier rows, e.g. torch); bench one artefact per "
                     "process for a per-runtime memory figure.</p>")
    return "\n".join(parts)


def _artefacts(run_dir: Path) -> str:
    rows = []
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(run_dir).as_posix()
        if rel in (MANIFEST, REPORT_NAME) or rel.startswith("records/") or path.name.startswith("."):
            continue
        rows.append([f"<td><code>{_e(rel)}</code></td>", f"<td class='num'>{path.stat().st_size:,}</td>",
                     f"<td class='hash'>{_e(sha256_file(path))}</td>"])
    return ("<h2 id='artefacts'>Artefacts</h2><p>sha256 of every file as the report was written; "
            f"<code>{MANIFEST}</code> beside this report lists them all (and this report), and "
            f"<code>edge-unlearn verify {_e(run_dir)}</code> re-hashes them.</p>"
            + _table(["file", "bytes", "sha256"], rows, raw=True))


def render_report(run_dir: str | Path, output: str | Path | None = None, manifest: bool = True) -> Path:
    """Write ``RUN_DIR/report.html`` (or ``output``), then ``RUN_DIR/manifest.json``; returns the HTML path."""
    root = Path(run_dir)
    if not root.is_dir():
        raise UsageError(f"run folder {root} does not exist; pass the folder given to --run-dir or `demo --out-dir`")
    data = collect(root)
    if not (data["records"] or data["demo"] or data["checkpoints"] or data["validations"] or data["benches"]):
        raise UsageError(f"{root} holds no run records, demo.json, checkpoints, validation or bench JSON; "
                         f"run commands with --run-dir {root} first")
    sections = [s for s in (_lineage(data), _figures(data), _validation(data), _latency(data)) if s]
    sections.append(_artefacts(root))
    verdicts = [str(v.get("verdict")) for v in data["validations"]] or [
        str(v.get("verdict")) for k, v in ((data["demo"] or {}).get("deploy") or {}).items()
        if isinstance(v, dict) and "verdict" in v]
    overall = ("all validations PASS" if verdicts and all(v == "pass" for v in verdicts)
               else f"{sum(v != 'pass' for v in verdicts)} validation(s) FAIL" if verdicts else "no validation recorded")
    created = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>edge-unlearn report: {_e(root.name)}</title>
<meta name="generator" content="edge-unlearn {_e(__version__)}"><style>{_CSS}</style></head>
<body data-images-loaded="pending">
<h1>edge-unlearn run report</h1>
{evidence_banner(root)}
<p class="muted">Run folder <code>{_e(root.resolve())}</code> &middot; written {_e(created)} by edge-unlearn {_e(__version__)}
&middot; <span id="overall">{_e(overall)}</span></p>
{''.join(chr(10) + s for s in sections)}
<script>{_SCRIPT}</script>
</body></html>
"""
    out = Path(output) if output else root / REPORT_NAME
    with atomic_output(out) as tmp:
        Path(tmp).write_text(doc, encoding="utf-8")
    if manifest:
        write_manifest(root)
    return out
