"""`edge-unlearn report`: one self-contained HTML file with embedded plots and the verdicts, then a manifest."""

from __future__ import annotations

import base64
import re

from click.testing import CliRunner

from edge_unlearn.cli import main
from edge_unlearn.deploy.rundir import verify


def test_report_html_is_self_contained_with_verdicts(run_folder):
    result = CliRunner().invoke(main, ["report", str(run_folder)])
    assert result.exit_code == 0, result.output
    html = (run_folder / "report.html").read_text()
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 3  # per-class accuracy (figures), per-class per backend (validation), latency
    assert all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in images)
    assert not re.search(r'(src|href)="(?!data:)', html)  # nothing fetched from outside
    # verdicts per backend and precision, in the order recorded
    verdicts = re.findall(r'data-verdict="(pass|fail)"', html)
    assert verdicts == ["pass", "fail"]
    assert "1 validation(s) FAIL" in html
    # lineage: checkpoint hashes, parent, forgotten classes, method and parameters
    from edge_unlearn.fileio import sha256_file

    assert sha256_file(run_folder / "original.safetensors") in html
    assert "3 (three)" in html and "nhle" in html and "&#34;steps&#34;: 20" in html
    # figures against original and retrained, latency table with p50/p99 and INT8 ratio
    assert "retrained" in html and "probe_forget_acc" in html
    assert "p99 ms" in html and "p50 vs ONNX FP32" in html
    # the manifest covers the report; verify passes until the report is touched
    assert verify(run_folder)
    (run_folder / "report.html").write_text(html.replace("FAIL", "PASS"))
    assert CliRunner().invoke(main, ["verify", str(run_folder)]).exit_code == 1


def test_report_of_demo_json_only_and_empty_folder(tmp_path):
    import json

    from tests.deploy.conftest import demo_json

    run = tmp_path / "r"
    run.mkdir()
    cli = CliRunner()
    result = cli.invoke(main, ["report", str(run)])
    assert result.exit_code == 2 and "no run records" in result.output
    data = demo_json()
    data["deploy"] = {
        "artifacts": {"fp32": "model.onnx", "int8": "model.int8.onnx"},
        "fp32": {"verdict": "pass", "forget_acc": 0.0, "retain_drop": 0.0, "retain_agreement": 1.0, "failed": []},
        "int8": {"verdict": "pass", "forget_acc": 0.0, "retain_drop": 0.004, "retain_agreement": 0.99, "failed": []},
    }
    (run / "demo.json").write_text(json.dumps(data))
    assert cli.invoke(main, ["report", str(run), "-o", str(tmp_path / "out.html")]).exit_code == 0
    html = (tmp_path / "out.html").read_text()
    assert re.findall(r'data-verdict="(pass|fail)"', html) == ["pass", "pass"] and "all validations PASS" in html
    assert (run / "manifest.json").is_file()


def test_demo_bench_and_report(run_folder):
    """The demo's last step on a demo-like folder: bench (batches 1/8/64), record, report, manifest."""
    from edge_unlearn.demo import demo_bench_and_report
    from edge_unlearn.deploy.rundir import read_records

    lines: list[str] = []
    out = demo_bench_and_report(
        run_folder, [run_folder / "model.onnx", run_folder / "model.int8.onnx"], echo=lines.append, iterations=3
    )
    assert {"bench", "report", "manifest", "ratios"} <= set(out)
    assert [q["batch"] for q in out["ratios"]] == [1, 8, 64]
    assert any("p99 ms" in line for line in lines)
    assert [r["kind"] for r in read_records(run_folder)][-1] == "bench"
    html = (run_folder / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4  # two bench records -> two latency plots
    assert verify(run_folder)


def test_report_escapes_every_value(run_folder):
    """The template autoescapes: markup in a recorded value (a model file name) is shown as text, never run."""
    import json

    from edge_unlearn.cli.report import record_to_run_dir
    from tests.deploy.conftest import validation_json

    hostile = run_folder / "<img src=x onerror=alert(1)>.onnx"
    hostile.write_bytes((run_folder / "model.onnx").read_bytes())
    record_to_run_dir(run_folder, "validate", validation_json(str(hostile), "fp32", "pass"), [hostile])
    result = CliRunner().invoke(main, ["report", str(run_folder), "--json"])
    assert result.exit_code == 0, result.output
    html = (run_folder / "report.html").read_text()
    assert "<img src=x onerror" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;.onnx" in html
    assert json.loads(result.stdout)["report"] == str(run_folder / "report.html")  # human lines go to stderr
