"""Run folder: records, manifest, `edge-unlearn verify` (exit 1 on a modified or missing artefact)."""
from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from edge_unlearn.cli import main
from edge_unlearn.cli_report import record_to_run_dir
from edge_unlearn.errors import ModelFileError, UsageError
from edge_unlearn.fileio import sha256_file
from edge_unlearn.export.rundir import read_records, record, verify, write_manifest


def _run(tmp_path, tiny_models):
    run = tmp_path / "run"
    run.mkdir()
    model = shutil.copy(tiny_models[0], run / "model.onnx")
    outside = tmp_path / "outside.onnx"
    shutil.copy(tiny_models[1], outside)
    record_to_run_dir(run, "export", {"opset": 18}, [model])
    record_to_run_dir(run, "quantize", {"precision": "int8"}, [model, outside])
    return run, model, outside


def test_records_are_numbered_and_hash_artefacts(tmp_path, tiny_models):
    run, model, outside = _run(tmp_path, tiny_models)
    assert sorted(p.name for p in (run / "records").iterdir()) == ["0001-export.json", "0002-quantize.json"]
    recs = read_records(run)
    assert [r["kind"] for r in recs] == ["export", "quantize"] and recs[1]["payload"] == {"precision": "int8"}
    arts = recs[1]["artefacts"]
    assert arts[0] == {"path": "model.onnx", "sha256": sha256_file(model), "bytes": model.stat().st_size}
    assert arts[1]["path"] == str(outside.resolve())  # outside the folder: referenced by absolute path
    copied = record(run, "bundle", {}, [outside], copy=True)
    assert json.loads(copied.read_text())["artefacts"][0]["path"] == "artefacts/outside.onnx"
    assert record_to_run_dir(None, "export", {}, [model]) is None
    with pytest.raises(UsageError):
        record(run, "Bad Kind", {})
    with pytest.raises(ModelFileError):
        record(run, "export", {}, [tmp_path / "missing.onnx"])
    assert len(read_records(run)) == 3  # the failed one left no empty record behind


def test_manifest_and_verify_catch_modified_and_missing(tmp_path, tiny_models):
    run, model, outside = _run(tmp_path, tiny_models)
    (run / "sub").mkdir()
    (run / "sub" / "notes.txt").write_text("hello")
    manifest = json.loads(write_manifest(run).read_text())
    listed = {f["path"] for f in manifest["files"]}
    assert {"model.onnx", "records/0001-export.json", "sub/notes.txt"} <= listed and "manifest.json" not in listed
    assert [e["path"] for e in manifest["external"]] == [str(outside.resolve())]
    ok = verify(run)
    assert ok and ok.checked == len(listed) + 1 and ok.to_json()["verdict"] == "pass"

    cli = CliRunner()
    assert cli.invoke(main, ["verify", str(run)]).exit_code == 0
    data = bytearray(model.read_bytes())
    data[-1] ^= 1  # one flipped bit
    model.write_bytes(bytes(data))
    (run / "sub" / "notes.txt").unlink()
    (run / "new.txt").write_text("x")
    report = verify(run)
    assert not report
    assert [m["path"] for m in report.mismatched] == ["model.onnx"] and report.missing == ["sub/notes.txt"]
    assert report.unlisted == ["new.txt"]  # listed, but a new file alone does not fail
    result = cli.invoke(main, ["verify", str(run)])
    assert result.exit_code == 1
    assert "MODIFIED model.onnx" in result.output and "MISSING  sub/notes.txt" in result.output
    as_json = json.loads(cli.invoke(main, ["verify", str(run), "--json"]).output)
    assert as_json["verdict"] == "fail" and as_json["missing"] == ["sub/notes.txt"]

    outside.write_bytes(b"changed")  # an artefact referenced from outside the folder is checked too
    assert str(outside.resolve()) in [m["path"] for m in verify(run).mismatched]
    # a refreshed manifest notes artefacts that changed since their record
    stale = json.loads(write_manifest(run).read_text())["changed_since_recorded"]
    assert {s["path"] for s in stale} == {"model.onnx", str(outside.resolve())}


def test_verify_without_manifest_is_exit_2(tmp_path):
    result = CliRunner().invoke(main, ["verify", str(tmp_path)])
    assert result.exit_code == 2 and "no manifest.json" in result.output and "edge-unlearn report" in result.output


def test_record_payload_with_paths_and_nan(tmp_path):
    from pathlib import Path

    path = record(tmp_path / "run", "forget", {"checkpoint": Path("a/b.safetensors"), "probe": float("nan")})
    data = json.loads(path.read_text())  # strict JSON
    assert data["payload"] == {"checkpoint": "a/b.safetensors", "probe": None}
