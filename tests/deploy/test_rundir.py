"""Run folder: records, manifest, `edge-unlearn verify` (exit 1 on a modified or missing artefact)."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from edge_unlearn.cli import main
from edge_unlearn.cli.report import record_to_run_dir
from edge_unlearn.deploy.rundir import read_records, record, verify, write_manifest
from edge_unlearn.errors import ModelFileError, UsageError
from edge_unlearn.fileio import sha256_file


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
    assert report.unlisted == ["new.txt"]  # an added file fails too (issue #13: extra files pass no more)
    result = cli.invoke(main, ["verify", str(run)])
    assert result.exit_code == 1
    assert "MODIFIED model.onnx" in result.output and "MISSING  sub/notes.txt" in result.output
    as_json = json.loads(cli.invoke(main, ["verify", str(run), "--json"]).output)
    assert as_json["verdict"] == "fail" and as_json["missing"] == ["sub/notes.txt"]

    outside.write_bytes(b"changed")  # an artefact referenced from outside the folder is checked too
    assert str(outside.resolve()) in [m["path"] for m in verify(run).mismatched]
    # a refreshed manifest notes artefacts that changed since their record (or the previous manifest) and keeps
    # their recorded hashes: re-running `report` never turns a tampered folder into a pass
    manifest = json.loads(write_manifest(run).read_text())
    assert {s["path"] for s in manifest["changed_since_recorded"]} == {
        "model.onnx",
        str(outside.resolve()),
        "sub/notes.txt",
    }
    entry = next(f for f in manifest["files"] if f["path"] == "model.onnx")
    assert entry["sha256"] != sha256_file(model)
    again = verify(run)
    assert not again and {m["path"] for m in again.mismatched} == {"model.onnx", str(outside.resolve())}
    assert "sub/notes.txt" in again.missing and not again.unlisted


def test_verify_without_manifest_is_exit_2(tmp_path):
    result = CliRunner().invoke(main, ["verify", str(tmp_path)])
    assert result.exit_code == 2 and "no manifest.json" in result.output and "edge-unlearn report" in result.output


def test_record_payload_with_paths_and_nan(tmp_path):
    from pathlib import Path

    path = record(tmp_path / "run", "forget", {"checkpoint": Path("a/b.safetensors"), "probe": float("nan")})
    data = json.loads(path.read_text())  # strict JSON
    assert data["payload"] == {"checkpoint": "a/b.safetensors", "probe": None}


# ------------------------------------------------------------------ signed evidence (issue #13)


def _signed(tmp_path, tiny_models):
    from edge_unlearn.cli import main

    run, model, outside = _run(tmp_path, tiny_models)
    write_manifest(run)
    cli = CliRunner()
    keys = tmp_path / "keys"
    keys.mkdir()
    made = cli.invoke(main, ["keygen", "-o", str(keys / "k.pem")])
    assert made.exit_code == 0, made.output
    signed = cli.invoke(main, ["sign", str(run), "--key", str(keys / "k.pem")])
    assert signed.exit_code == 0, signed.output
    return run, model, keys / "k.pem", keys / "k.pem.pub"


def _verify(run, pub):
    from edge_unlearn.cli import main

    return CliRunner().invoke(main, ["verify", str(run), "--key", str(pub)])


def test_keygen_writes_a_private_key_only_the_owner_reads(tmp_path, tiny_models):
    _, _, private, public = _signed(tmp_path, tiny_models)
    assert (private.stat().st_mode & 0o777) == 0o600
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    from edge_unlearn.cli import main

    again = CliRunner().invoke(main, ["keygen", "-o", str(private)])
    assert again.exit_code == 2 and "never overwrites" in again.output


def test_signed_folder_verifies_with_its_key(tmp_path, tiny_models):
    run, _, _, public = _signed(tmp_path, tiny_models)
    result = _verify(run, public)
    assert result.exit_code == 0 and "signature: valid" in result.output, result.output


@pytest.mark.parametrize(
    "tamper", ["flip_artefact", "extra_file", "rehash_manifest", "forged_record", "other_key", "no_signature"]
)
def test_tampered_signed_folder_fails_verify(tmp_path, tiny_models, tamper):
    """Each of issue #13's forgeries: a flipped byte, an added file, a manifest re-hashed together with the file,
    a forged record (validation JSON) with a re-written manifest, a signature by another key, a removed signature."""
    from edge_unlearn.cli import main

    run, model, private, public = _signed(tmp_path, tiny_models)
    if tamper == "flip_artefact":
        data = bytearray(model.read_bytes())
        data[len(data) // 2] ^= 0x01
        model.write_bytes(bytes(data))
        expect = "MODIFIED model.onnx"
    elif tamper == "extra_file":
        (run / "validate-forged.json").write_text('{"verdict": "pass"}')
        expect = "UNLISTED validate-forged.json"
    elif tamper in ("rehash_manifest", "forged_record"):
        if tamper == "forged_record":
            rec = run / "records" / "0001-export.json"
            text = json.loads(rec.read_text())
            text["payload"]["opset"] = 99
            rec.write_text(json.dumps(text))
        else:
            model.write_bytes(model.read_bytes() + b"\0")
        manifest = json.loads((run / "manifest.json").read_text())
        for entry in manifest["files"]:  # the attacker recomputes every sha256: anyone can
            entry["sha256"] = sha256_file(run / entry["path"])
        (run / "manifest.json").write_text(json.dumps(manifest))
        expect = "SIGNATURE invalid"
    elif tamper == "other_key":
        (run / "manifest.sig").unlink()
        CliRunner().invoke(main, ["keygen", "-o", str(tmp_path / "evil.pem")])
        assert CliRunner().invoke(main, ["sign", str(run), "--key", str(tmp_path / "evil.pem")]).exit_code == 0
        expect = "signed by another key"
    else:
        (run / "manifest.sig").unlink()
        expect = "SIGNATURE missing"
    result = _verify(run, public)
    assert result.exit_code == 1, result.output
    assert expect in result.output and "verdict: FAIL" in result.output


def test_report_refuses_a_signed_folder_and_sign_refuses_a_broken_one(tmp_path, tiny_models):
    from edge_unlearn.cli import main

    run, model, private, public = _signed(tmp_path, tiny_models)
    before = (run / "manifest.json").read_bytes()
    result = CliRunner().invoke(main, ["report", str(run)])
    assert result.exit_code == 2 and "is signed" in result.output
    assert (run / "manifest.json").read_bytes() == before and not (run / "report.html").exists()
    (run / "manifest.sig").unlink()
    model.write_bytes(b"tampered")
    result = CliRunner().invoke(main, ["sign", str(run), "--key", str(private)])
    assert result.exit_code == 2 and "refusing to sign" in result.output and not (run / "manifest.sig").exists()


def test_report_shows_a_red_banner_for_changed_artefacts(tmp_path, tiny_models):
    from edge_unlearn.deploy.report import render_report

    run, model, _ = _run(tmp_path, tiny_models)
    assert "evidence-banner" not in render_report(run).read_text()
    model.write_bytes(b"tampered")
    page = render_report(run).read_text()
    banner = page[page.index('id="evidence-banner"') : page.index("</div>", page.index('id="evidence-banner"'))]
    assert "EVIDENCE BROKEN" in banner and "model.onnx" in banner and "0001-export.json" in banner


@pytest.mark.parametrize("damage", ["entry_without_path", "not_a_list", "climbs_out", "bad_json"])
def test_damaged_manifest_is_one_line_exit_2(tmp_path, tiny_models, damage):
    run, _, _ = _run(tmp_path, tiny_models)
    write_manifest(run)
    manifest = json.loads((run / "manifest.json").read_text())
    if damage == "entry_without_path":
        del manifest["files"][0]["path"]
    elif damage == "not_a_list":
        manifest["files"] = {"a": 1}
    elif damage == "climbs_out":
        manifest["files"][0]["path"] = "../../etc/passwd"
    text = "{not json" if damage == "bad_json" else json.dumps(manifest)
    (run / "manifest.json").write_text(text)
    result = CliRunner().invoke(main, ["verify", str(run)])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and result.output.startswith("error: ")


@pytest.mark.parametrize("damage", [{"kind": 3}, {"artefacts": [{"sha256": "x"}]}, {"payload": [1, 2]}])
def test_damaged_record_is_one_line_exit_2(tmp_path, tiny_models, damage):
    run, _, _ = _run(tmp_path, tiny_models)
    rec = run / "records" / "0001-export.json"
    data = json.loads(rec.read_text())
    data.update(damage)
    rec.write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match="damaged"):
        read_records(run)


def test_report_refuses_a_record_that_climbs_out_before_writing(tmp_path, tiny_models):
    from edge_unlearn.cli import main

    run, _, _ = _run(tmp_path, tiny_models)
    rec = run / "records" / "0001-export.json"
    data = json.loads(rec.read_text())
    data["artefacts"][0]["path"] = "../../etc/hostname"
    rec.write_text(json.dumps(data))
    result = CliRunner().invoke(main, ["report", str(run), "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 2 and "climbs out" in result.stderr
    assert not (tmp_path / "r.html").exists() and not (run / "manifest.json").exists()


def test_verify_fails_when_a_validate_record_judged_a_bundle_no_bundle_record_wrote(tmp_path, tiny_models):
    run, _, _ = _run(tmp_path, tiny_models)
    record(run, "bundle", {"digest": "a" * 64})
    record(run, "validate", {"verdict": "pass", "bundle": {"digest": "a" * 64}})
    write_manifest(run)
    assert verify(run)
    record(run, "validate", {"verdict": "pass", "bundle": {"digest": "b" * 64}})
    write_manifest(run)
    report = verify(run)
    assert not report and report.foreign_bundles == [{"record": "0005-validate.json", "digest": "b" * 64}]
    assert any(line.startswith("BUNDLE   0005-validate.json") for line in report.problems)


def test_the_validate_record_carries_the_bundle_digest_and_provenance(artifacts, tmp_path):
    """bundle + validate into one run folder: the validate record names the digest and provenance the bundle record
    wrote, so the signed folder covers them; validating a re-digested copy of the bundle breaks verify."""
    from tests.deploy.test_gate_attacks import rewrite_bundle

    run = tmp_path / "run"
    cli = CliRunner()
    bundle = run / "eval.npz"
    run.mkdir()
    made = cli.invoke(
        main, ["bundle", str(artifacts.checkpoint), "--dataset", "digits", "-o", str(bundle), "--run-dir", str(run)]
    )
    assert made.exit_code == 0, made.output
    checked = cli.invoke(main, ["validate", str(artifacts.fp32), "--bundle", str(bundle), "--run-dir", str(run), "-q"])
    assert checked.exit_code == 0, checked.output
    bundle_record, validate_record = read_records(run, "bundle")[-1], read_records(run, "validate")[-1]
    digest = bundle_record["payload"]["digest"]
    assert len(digest) == 64 and validate_record["payload"]["bundle"]["digest"] == digest
    provenance = validate_record["payload"]["bundle"]["provenance"]
    assert provenance["checkpoint_sha256"] == sha256_file(artifacts.checkpoint) and provenance["dataset"] == "digits"
    write_manifest(run)
    assert verify(run)

    def resealed(arrays, info):  # the same arrays under another digest: a bundle the folder never wrote
        info["seed"] = 1

    rewrite_bundle(bundle, tmp_path / "other.npz", resealed)
    checked = cli.invoke(
        main, ["validate", str(artifacts.fp32), "--bundle", str(tmp_path / "other.npz"), "--run-dir", str(run), "-q"]
    )
    assert checked.exit_code == 0, checked.output
    write_manifest(run)
    result = cli.invoke(main, ["verify", str(run)])
    assert result.exit_code == 1 and "BUNDLE" in result.output, result.output
