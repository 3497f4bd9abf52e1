"""Feature-level audit after quantization (issue #15 part 3): `export --audit`, `bundle --audit`, `validate --audit`.

Models (lenet on digits, class 3, the 150-step recipe of tests/conftest.py): the original with the class masked
and nothing else (its features still hold the class), the model retrained without the class (they never did), and
the NHLE default. On digits NHLE's features barely move (the prototype attack recovers most of the class:
docs/audit.md), so the passing case whose truth is known is the retrained model; the NHLE case checks that the
device's figures are the host's attack and probe, measured on the quantized model.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import invoke_cli, one_line_error

FORGET = 3


@dataclass(frozen=True)
class AuditModels:
    folder: Path
    original: Path
    masked: Path
    retrained: Path
    nhle: Path


def _forget(original: Path, out: Path, params: tuple = ()) -> None:
    from edge_unlearn.workflows import ForgetRequest, forget_checkpoint

    forget_checkpoint(
        ForgetRequest(
            checkpoint=str(original), forget=(str(FORGET),), out=str(out), params=params, device="cpu", evaluate=False
        )
    )


def _mask_only(original: Path, out: Path) -> None:
    """The original, class FORGET masked and nothing else changed."""
    from dataclasses import replace

    from edge_unlearn.checkpoint import load_checkpoint, save_checkpoint

    loaded = load_checkpoint(original)
    loaded.model.mask_classes([FORGET])
    save_checkpoint(out, loaded.model, replace(loaded.meta, forgotten_classes=(FORGET,)))


@pytest.fixture(scope="module")
def models(digits_checkpoint, tmp_path_factory) -> AuditModels:
    import torch

    from edge_unlearn.workflows import retrain_checkpoint

    folder = tmp_path_factory.mktemp("audit")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _forget(digits_checkpoint, folder / "nhle.safetensors")
        _mask_only(digits_checkpoint, folder / "masked.safetensors")
        retrain_checkpoint(digits_checkpoint, [str(FORGET)], folder / "retrain.safetensors", progress=False)
    finally:
        torch.set_num_threads(threads)
    return AuditModels(
        folder,
        digits_checkpoint,
        folder / "masked.safetensors",
        folder / "retrain.safetensors",
        folder / "nhle.safetensors",
    )


def _export(checkpoint: Path, out: Path, *, int8_target: str | None = "cpu") -> Path:
    """Audit export of ``checkpoint``, INT8 for ``int8_target`` (None: the FP32 file)."""
    from edge_unlearn.export.onnx_export import ExportConfig, export_onnx
    from edge_unlearn.export.quantize import QuantizeConfig, quantize_model

    fp32 = out.with_suffix(".fp32.onnx")
    with contextlib.redirect_stdout(io.StringIO()):
        if not fp32.is_file():
            export_onnx(checkpoint, fp32, ExportConfig(audit=True))
        if int8_target is None:
            return fp32
        quantize_model(fp32, out, QuantizeConfig(precision="int8", target=int8_target), calib="digits")
    return out


@pytest.fixture(scope="module")
def deployed(models) -> dict[str, Path]:
    """INT8 (cpu layout) audit exports and audit bundles of the masked original and the retrained model."""
    out = {}
    for name in ("masked", "retrained"):
        ckpt = getattr(models, name)
        out[f"{name}_int8"] = _export(ckpt, models.folder / f"{name}.audit.int8.onnx")
        out[f"{name}_bundle"] = models.folder / f"{name}.audit.npz"
        result = invoke_cli(["bundle", ckpt, "--audit", "-o", out[f"{name}_bundle"], "-q"])
        assert result.exit_code == 0, result.output
    return out


#: relative error of the features against torch on digits test images, by file (measured: fp16 3e-4, int8 cpu layout
#: 0.008, int8 tensorrt layout 0.045-0.053: symmetric activations; benchmarks/audit_quantized.py)
FEATURE_TOLERANCE = {"fp32": 1e-5, "fp16": 2e-3, "int8-cpu": 0.03, "int8-tensorrt": 0.1}


def test_audit_export_has_features_output_and_passes_the_gate_after_quantization(models, deployed, artifacts, digits):
    import onnx
    import onnxruntime as ort
    import torch

    from edge_unlearn.checkpoint import load_checkpoint
    from edge_unlearn.data import preprocess
    from edge_unlearn.deploy.onnx_meta import read_meta
    from edge_unlearn.deploy.structure import static_checks
    from edge_unlearn.export.quantize import QuantizeConfig, quantize_model

    fp32 = _export(models.masked, models.folder / "masked.audit.int8.onnx", int8_target=None)
    files = {
        "fp32": fp32,
        "int8-cpu": deployed["masked_int8"],
        "int8-tensorrt": _export(models.masked, models.folder / "masked.audit.trt.onnx", int8_target="tensorrt"),
    }
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_model(fp32, models.folder / "masked.audit.fp16.onnx", QuantizeConfig(precision="fp16"))
    files["fp16"] = models.folder / "masked.audit.fp16.onnx"
    model = load_checkpoint(models.masked).model.eval()
    x = preprocess(digits.x_test[:64], digits.normalization)
    with torch.no_grad():
        reference = model.features(x).numpy()
    for label, path in files.items():
        proto = onnx.load(str(path))
        meta = read_meta(proto)
        assert [o.name for o in proto.graph.output] == ["logits", "features"], label
        assert meta.features_name == "features" and meta.precision == label[:4], label
        checks, _ = static_checks(proto, meta)
        assert [c.name for c in checks if not c.passed] == [], (label, [c.line() for c in checks])
        logits, features = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
            ["logits", "features"], {"input": x.numpy()}
        )
        assert logits.shape == (64, 10) and np.all(logits[:, FORGET] == np.float32(-1e4))
        error = np.linalg.norm(features - reference) / np.linalg.norm(reference)
        assert error < FEATURE_TOLERANCE[label], (label, error)
    # the deployment export is unchanged: one output, no features in the metadata
    plain = onnx.load(str(artifacts.fp32))
    assert [o.name for o in plain.graph.output] == ["logits"] and read_meta(plain).features_name == ""


def test_validate_audit_passes_on_the_retrained_model_and_fails_on_the_masked_original(deployed):
    good = invoke_cli(
        ["validate", deployed["retrained_int8"], "--bundle", deployed["retrained_bundle"], "--audit", "--json"]
    )
    assert good.exit_code == 0, good.output
    report = json.loads(good.stdout)
    audit = report["audit"]
    assert audit["thresholds"]["max_prototype"] == 0.10 and audit["thresholds"]["max_probe"] is None
    assert audit["device"]["prototype_forget_acc"] <= 0.10
    bad = invoke_cli(["validate", deployed["masked_int8"], "--bundle", deployed["masked_bundle"], "--audit", "--json"])
    assert bad.exit_code == 1, bad.output
    report = json.loads(bad.stdout)
    failed = [c["name"] for c in report["checks"] if not c["passed"]]
    # every check of the deployment gate passes (the mask holds); the features still give the class away
    assert failed == ["audit_prototype_recovery"], failed
    assert report["audit"]["device"]["prototype_forget_acc"] > 0.5
    text = invoke_cli(["validate", deployed["masked_int8"], "--bundle", deployed["masked_bundle"], "--audit"])
    assert (
        text.exit_code == 1
        and "prototype recovery" in text.output
        and "verdict: FAIL (audit_prototype_recovery)" in text.output
    )
    assert "output probe on forgotten" in text.output
    # the deployed outputs of the masked original still read the class (it is the original's knowledge of it)
    assert report["audit"]["device"]["logit_probe_forget_acc"] > 0.9
    strict = invoke_cli(
        [
            "validate",
            deployed["masked_int8"],
            "--bundle",
            deployed["masked_bundle"],
            "--audit",
            "--audit-max-prototype",
            "1.0",
            "--audit-max-logit-probe",
            "0.5",
            "--json",
        ]
    )
    assert strict.exit_code == 1, strict.output
    assert [c["name"] for c in json.loads(strict.stdout)["checks"] if not c["passed"]] == [
        "audit_logit_probe_forget_acc"
    ]


def test_nhle_int8_audit_is_the_hosts_attack_and_probe_and_reports_weight_steps(models, digits):
    """The FP32 figures in the bundle are exactly edge_unlearn.attacks / metrics on the checkpoint; the INT8 model's
    within one image of them; thresholds come from --retrained; the weight-step report covers NHLE's edit."""
    from edge_unlearn.attacks import prototype_relearn_attack
    from edge_unlearn.checkpoint import load_checkpoint
    from edge_unlearn.metrics import RETAINED_LOGITS, probe_forget_accuracy, probe_forget_accuracy_by_depth

    bundle = models.folder / "nhle.audit.npz"
    result = invoke_cli(
        [
            "bundle",
            models.nhle,
            "--audit",
            "--retrained",
            models.retrained,
            "--reference",
            models.original,
            "--json",
            "-o",
            bundle,
        ]
    )
    assert result.exit_code == 0, result.output
    stored = json.loads(result.stdout)["audit"]
    nhle = load_checkpoint(models.nhle).model
    host_attack = prototype_relearn_attack(nhle, digits, [FORGET], lift_mask=True).forget_acc
    assert stored["fp32"]["prototype_forget_acc"] == host_attack
    assert stored["fp32"]["probe_forget_acc"] == probe_forget_accuracy(nhle, digits, [FORGET])
    gold = load_checkpoint(models.retrained).model
    gold_attack = prototype_relearn_attack(gold, digits, [FORGET], lift_mask=True).forget_acc
    assert stored["retrained"]["prototype_forget_acc"] == gold_attack
    assert stored["thresholds"]["max_prototype"] == pytest.approx(gold_attack + 0.05)
    assert stored["thresholds"]["max_probe"] == pytest.approx(min(1.0, stored["retrained"]["probe_forget_acc"] + 0.02))
    # the output probe: evaluate --depth's retained-logit probe (same draw, same pipeline), and retrain's + 0.02
    assert (
        stored["fp32"]["logit_probe_forget_acc"]
        == probe_forget_accuracy_by_depth(nhle, digits, [FORGET])[RETAINED_LOGITS]
    )
    assert (
        stored["retrained"]["logit_probe_forget_acc"]
        == probe_forget_accuracy_by_depth(gold, digits, [FORGET])[RETAINED_LOGITS]
    )
    assert stored["thresholds"]["max_logit_probe"] == pytest.approx(
        min(1.0, stored["retrained"]["logit_probe_forget_acc"] + 0.02)
    )

    int8 = _export(models.nhle, models.folder / "nhle.audit.int8.onnx")
    run = invoke_cli(["validate", int8, "--bundle", bundle, "--audit", "--json"])
    assert run.exit_code in (0, 1), run.output
    report = json.loads(run.stdout)
    device = report["audit"]["device"]
    n_forgotten = int(np.sum(digits.y_test.numpy() == FORGET))
    # INT8 noise may flip a few forget samples whose features NHLE v2 placed between two retained classes: the
    # deployed figure stays within the gate's own quantization tolerance of FP32, and the gate says so
    from edge_unlearn.deploy.audit import DEFAULT_TOLERANCE

    gap = device["prototype_forget_acc"] - host_attack
    assert abs(gap) <= DEFAULT_TOLERANCE + 1e-12, (device["prototype_forget_acc"], host_attack, n_forgotten)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["audit_prototype_quant_gap"]["passed"] == (gap <= DEFAULT_TOLERANCE + 1e-12)
    assert checks["audit_prototype_recovery"]["passed"] == (device["prototype_forget_acc"] <= gold_attack + 0.05)
    assert checks["audit_fp32_reference"]["passed"] and checks["audit_probe_retained_drop"]["passed"]
    # the output probe read on the INT8 model's own logits: near the FP32 figure, judged against retrain's
    logit_gap = device["logit_probe_forget_acc"] - stored["fp32"]["logit_probe_forget_acc"]
    assert abs(logit_gap) <= DEFAULT_TOLERANCE, (device["logit_probe_forget_acc"], stored["fp32"])
    assert checks["audit_logit_probe_quant_gap"]["value"] == pytest.approx(logit_gap)
    assert checks["audit_logit_probe_forget_acc"]["passed"] == (
        device["logit_probe_forget_acc"] <= stored["thresholds"]["max_logit_probe"]
    )
    assert run.exit_code == (0 if all(c["passed"] for c in report["checks"]) else 1)

    steps = stored["weight_steps"]
    edited = {t["tensor"]: t for t in steps["tensors"]}
    assert "backbone.9.weight" in edited  # NHLE's projection edits the backbone's last layer
    w = edited["backbone.9.weight"]
    assert w["changed"] > 0 and 0.0 <= w["int8"]["below_half_step"] <= 1.0 and w["int8"]["surviving"] > 0
    assert "head.weight" not in edited or edited["head.weight"]["shape"][0] == 9  # forgotten rows left out


def test_weight_step_report_counts_edits_that_round_back():
    """A synthetic edit: half the weights move by 0.2 of an INT8 step (they round back), half by 3 steps."""
    from edge_unlearn.deploy.audit import weight_step_report

    before = np.tile(np.array([[0.0, 10.0, 20.0, 127.0]]), (2, 1)) / 127.0  # scale 1/127 per row (max |w| = 1)
    after = before.copy()
    after[:, 1] += 0.2 / 127.0
    after[:, 2] += 3.0 / 127.0
    report = weight_step_report({"w": before}, {"w": after}, {}, [])
    (entry,) = report["tensors"]
    assert entry["changed"] == 4 and entry["int8"]["below_half_step"] == 0.5 and entry["int8"]["rounded_back"] == 0.5
    expected = np.linalg.norm(np.full(2, 3.0 / 127)) / np.linalg.norm(after - before)
    assert entry["int8"]["surviving"] == pytest.approx(expected, rel=1e-9)
    assert entry["fp16"]["below_half_step"] == 0.0  # both moves are far above the FP16 spacing here
    assert weight_step_report({"w": before}, {"w": before}, {}, [])["tensors"] == []


def test_audit_needs_an_audit_bundle_and_an_audit_export(deployed, artifacts):
    no_audit = invoke_cli(["validate", deployed["masked_int8"], "--bundle", artifacts.bundle, "--audit"])
    one_line_error(no_audit, "no audit data", "bundle CHECKPOINT --audit")
    plain = invoke_cli(["validate", artifacts.int8, "--bundle", deployed["masked_bundle"], "--audit"])
    one_line_error(plain, "no features output", "export CHECKPOINT --audit")
    stray = invoke_cli(["validate", artifacts.int8, "--bundle", artifacts.bundle, "--audit-max-probe", "0.5"])
    one_line_error(stray, "add --audit")


def _rewrite(src: Path, dst: Path, change) -> None:
    with np.load(src, allow_pickle=False) as arrays:
        data = {k: arrays[k] for k in arrays.files}
    change(data)
    with open(dst, "wb") as handle:
        np.savez_compressed(handle, **data)


def test_a_tampered_probe_is_refused_or_fails(deployed, tmp_path):
    """A probe edited so that it never predicts the forgotten class: refused (digest), and when the forger also
    rewrites the digest, the stored probe no longer reproduces the recorded FP32 figures (exit 1)."""
    from edge_unlearn.deploy.audit import AUDIT_JSON, array_digest

    def blind(data):
        coef = data["audit_probe_coef"].copy()
        coef[FORGET] = 0.0
        data["audit_probe_coef"] = coef
        intercept = data["audit_probe_intercept"].copy()
        intercept[FORGET] = -1e3
        data["audit_probe_intercept"] = intercept

    def blind_and_rehash(data):
        blind(data)
        info = json.loads(str(data[AUDIT_JSON]))
        for key in ("audit_probe_coef", "audit_probe_intercept"):
            info["digests"][key] = array_digest(data[key])
        data[AUDIT_JSON] = np.asarray(json.dumps(info))

    model, src = deployed["masked_int8"], deployed["masked_bundle"]
    _rewrite(src, tmp_path / "blind.npz", blind)
    one_line_error(
        invoke_cli(["validate", model, "--bundle", tmp_path / "blind.npz", "--audit"]),
        "audit_probe_coef",
        "changed after the bundle was written",
    )
    _rewrite(src, tmp_path / "rehashed.npz", blind_and_rehash)
    result = invoke_cli(
        [
            "validate",
            model,
            "--bundle",
            tmp_path / "rehashed.npz",
            "--audit",
            "--audit-max-probe",
            "0.5",
            "--audit-max-prototype",
            "1.0",
            "--json",
        ]
    )
    assert result.exit_code == 1, result.output
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["audit_probe_forget_acc"]["value"] == 0.0  # the blinded probe "sees" nothing ...
    assert not checks["audit_fp32_reference"]["passed"]  # ... but it is not the probe the host fitted


def test_a_tampered_output_probe_is_refused_and_a_format_1_bundle_is_audited_without_it(deployed, tmp_path):
    """The output probe's arrays are digest-checked like the rest; a bundle written before the output probe
    (audit format 1) still validates, without the output-probe checks, and refuses an output-probe threshold."""
    from edge_unlearn.deploy.audit import AUDIT_FORMAT_V1, AUDIT_JSON, LOGIT_PROBE_ARRAYS, array_digest

    model, src = deployed["retrained_int8"], deployed["retrained_bundle"]

    def blind(data):
        intercept = data["audit_logit_probe_intercept"].copy()
        intercept[FORGET] = -1e3
        data["audit_logit_probe_intercept"] = intercept

    _rewrite(src, tmp_path / "blind.npz", blind)
    one_line_error(
        invoke_cli(["validate", model, "--bundle", tmp_path / "blind.npz", "--audit"]),
        "audit_logit_probe_intercept",
        "changed after the bundle was written",
    )

    def blind_and_rehash(data):
        blind(data)
        info = json.loads(str(data[AUDIT_JSON]))
        info["digests"]["audit_logit_probe_intercept"] = array_digest(data["audit_logit_probe_intercept"])
        data[AUDIT_JSON] = np.asarray(json.dumps(info))

    _rewrite(src, tmp_path / "rehashed.npz", blind_and_rehash)
    forged = invoke_cli(
        [
            "validate",
            model,
            "--bundle",
            tmp_path / "rehashed.npz",
            "--audit",
            "--audit-max-logit-probe",
            "0.5",
            "--json",
        ]
    )
    assert forged.exit_code == 1, forged.output
    checks = {c["name"]: c for c in json.loads(forged.stdout)["checks"]}
    assert checks["audit_logit_probe_forget_acc"]["value"] == 0.0  # the blinded output probe "sees" nothing ...
    assert not checks["audit_fp32_reference"]["passed"]  # ... but it is not the one the host fitted

    def format_1(data):
        info = json.loads(str(data[AUDIT_JSON]))
        for key in LOGIT_PROBE_ARRAYS:
            del data[key]
            del info["digests"][key]
        info["format"] = AUDIT_FORMAT_V1
        data[AUDIT_JSON] = np.asarray(json.dumps(info))

    _rewrite(src, tmp_path / "v1.npz", format_1)
    old = invoke_cli(["validate", model, "--bundle", tmp_path / "v1.npz", "--audit", "--json"])
    assert old.exit_code == 0, old.output
    names = [c["name"] for c in json.loads(old.stdout)["checks"]]
    assert "audit_prototype_recovery" in names and not [n for n in names if "logit" in n]
    one_line_error(
        invoke_cli(["validate", model, "--bundle", tmp_path / "v1.npz", "--audit", "--audit-max-logit-probe", "0.5"]),
        "no output probe",
        "bundle CHECKPOINT --audit",
    )

    def stray(data):  # a format-1 bundle carrying output-probe arrays it never recorded
        format_1(data)
        with np.load(src, allow_pickle=False) as arrays:
            data["audit_logit_probe_coef"] = arrays["audit_logit_probe_coef"]

    _rewrite(src, tmp_path / "stray.npz", stray)
    one_line_error(
        invoke_cli(["validate", model, "--bundle", tmp_path / "stray.npz", "--audit"]),
        "audit_logit_probe_coef",
        "changed after the bundle was written",
    )


def test_validate_audit_without_torch(deployed):
    code = textwrap.dedent(f"""
        import json, sys
        sys.modules["torch"] = None
        sys.modules["sklearn"] = None
        from edge_unlearn.deploy.audit import AuditThresholds
        from edge_unlearn.deploy.validate import validate_model
        report = validate_model({str(deployed["retrained_int8"])!r}, {str(deployed["retrained_bundle"])!r},
                                audit=AuditThresholds())
        loaded = [m for m in sys.modules if m.split(".")[0] in ("torch", "sklearn") and sys.modules[m] is not None]
        print(json.dumps({{"verdict": bool(report), "audit": "audit_prototype_recovery" in
                          [c.name for c in report.checks], "loaded": loaded}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"verdict": True, "audit": True, "loaded": []}


def test_output_band_limits_and_figures_are_the_documented_formulas():
    """Entropy range ± 5 % of its mean, TV floor = mean pairwise TV of the retrained models, TV = mean over them."""
    from edge_unlearn.deploy.audit import output_band_checks, output_band_figures, output_band_limits

    p = np.array([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0 + 1e-12]])
    q = np.array([[0.6, 0.3, 0.1], [0.4, 0.4, 0.2]])
    r = np.array([[0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    band = np.log(np.stack([q, r]))

    def entropy(m):
        return float(np.mean(-(m * np.log(m)).sum(1)))

    def tv(a, b):
        return float(np.mean(0.5 * np.abs(a - b).sum(1)))

    limits = output_band_limits(band)
    hq, hr = entropy(q), entropy(r)
    widen = 0.05 * (hq + hr) / 2
    assert limits["retrained_entropy"] == pytest.approx([hq, hr])
    assert limits["entropy_low"] == pytest.approx(min(hq, hr) - widen)
    assert limits["entropy_high"] == pytest.approx(max(hq, hr) + widen)
    assert limits["floor_tv"] == pytest.approx(tv(q, r)) and limits["max_tv"] == pytest.approx(tv(q, r) + 0.05)
    figures = output_band_figures(np.log(p), band)
    assert figures["out_tv"] == pytest.approx((tv(p, q) + tv(p, r)) / 2)
    assert figures["out_entropy"] == pytest.approx(entropy(p), abs=1e-9)
    assert figures["out_confidence"] == pytest.approx((0.7 + 0.5) / 2)
    # the first retrained model itself: inside the range, at half the floor; a sharp one-hot answer: outside
    checks, _ = output_band_checks(np.log(q), band)
    assert [c.passed for c in checks] == [True, True]
    sharp = np.log(np.array([[1 - 2e-9, 1e-9, 1e-9], [1e-9, 1 - 2e-9, 1e-9]]))
    checks, _ = output_band_checks(sharp, band)
    assert checks[0].name == "audit_output_entropy" and not checks[0].passed
    assert checks[0].value == pytest.approx(limits["entropy_low"] - output_band_figures(sharp, band)["out_entropy"])
    # one retrained model: no floor, so no TV check (an entropy check only)
    checks, figures = output_band_checks(np.log(q), band[:1])
    assert [c.name for c in checks] == ["audit_output_entropy"] and figures["floor_tv"] is None


@pytest.fixture(scope="module")
def second_retrain(models) -> Path:
    import torch

    from edge_unlearn.workflows import retrain_checkpoint

    out = models.folder / "retrain_seed1.safetensors"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        retrain_checkpoint(models.original, [str(FORGET)], out, progress=False, seed=1)
    finally:
        torch.set_num_threads(threads)
    return out


def test_validate_audit_judges_the_deployed_answers_against_two_retrained_seeds(
    models, second_retrain, digits, tmp_path
):
    """`bundle --audit --retrained A --retrained B` stores both retrained models' answers on the forgotten class's
    images; `validate --audit` measures the deployed model's answers against them with the host's own measures
    (edge_unlearn.output_audit), checks entropy and TV, and refuses a band edited after the bundle was written."""
    import torch

    from edge_unlearn.checkpoint import load_checkpoint
    from edge_unlearn.deploy.audit import AUDIT_JSON, OUTPUT_BAND_ARRAY, array_digest
    from edge_unlearn.output_audit import compare_outputs, forget_test_log_softmax

    bundle = tmp_path / "masked.band.npz"
    made = invoke_cli(
        ["bundle", models.masked, "--audit", "--retrained", models.retrained, "--retrained", second_retrain,
         "--json", "-o", bundle]
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    assert len(json.loads(made.stdout)["audit"]["retrained_band"]) == 2
    fp32 = _export(models.masked, tmp_path / "masked.audit.onnx", int8_target=None)
    run = invoke_cli(["validate", fp32, "--bundle", bundle, "--audit", "--json"])
    assert run.exit_code in (0, 1), run.output
    report = json.loads(run.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert {"audit_output_entropy", "audit_output_tv"} <= set(checks)
    outputs = report["audit"]["outputs"]
    # the host's figures on the same images (the bundle holds the whole test split): the device's equal them
    golds = [load_checkpoint(p).model.eval() for p in (models.retrained, second_retrain)]
    log_p = forget_test_log_softmax(load_checkpoint(models.masked).model.eval(), digits, [FORGET])
    refs = [forget_test_log_softmax(g, digits, [FORGET]) for g in golds]
    host = compare_outputs(log_p, refs)
    assert outputs["out_entropy"] == pytest.approx(host["entropy"], abs=1e-4)
    assert outputs["out_tv"] == pytest.approx(host["tv"], abs=1e-4)
    floor = float(compare_outputs(refs[0], refs[1:])["tv"])
    assert outputs["floor_tv"] == pytest.approx(floor, abs=1e-4)
    assert checks["audit_output_tv"]["threshold"] == pytest.approx(floor + 0.05, abs=1e-4)
    assert checks["audit_output_tv"]["passed"] == (host["tv"] <= floor + 0.05)
    with torch.no_grad():
        entropies = [float(-(r.exp() * r).sum(1).mean()) for r in refs]
    assert outputs["retrained_entropy"] == pytest.approx(entropies, abs=1e-4)
    # the first retrained seed deployed against the same band: its own answers sit inside it
    own = tmp_path / "retrained.band.npz"
    made = invoke_cli(
        ["bundle", models.retrained, "--audit", "--retrained", models.retrained, "--retrained", second_retrain,
         "-q", "-o", own]
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    gold_onnx = _export(models.retrained, tmp_path / "retrained.audit.onnx", int8_target=None)
    mine = json.loads(invoke_cli(["validate", gold_onnx, "--bundle", own, "--audit", "--json"]).stdout)
    mine_checks = {c["name"]: c for c in mine["checks"]}
    assert mine_checks["audit_output_entropy"]["passed"] and mine_checks["audit_output_tv"]["passed"]
    assert mine["audit"]["outputs"]["out_tv"] == pytest.approx(floor / 2, abs=1e-4)

    def flatten(data):  # a forger moves the retrained answers toward the deployed model's
        data[OUTPUT_BAND_ARRAY] = np.repeat(data[OUTPUT_BAND_ARRAY].mean(axis=0, keepdims=True), 2, axis=0)

    def unrecorded(data):  # a band the audit data never recorded
        info = json.loads(str(data[AUDIT_JSON]))
        del info["output_band"]
        data[AUDIT_JSON] = np.asarray(json.dumps(info))

    _rewrite(bundle, tmp_path / "forged.npz", flatten)
    one_line_error(
        invoke_cli(["validate", fp32, "--bundle", tmp_path / "forged.npz", "--audit"]),
        OUTPUT_BAND_ARRAY,
        "changed after the bundle was written",
    )

    def shortened(data):  # a forger drops an image from the band and rewrites its record and digest to match
        info = json.loads(str(data[AUDIT_JSON]))
        data[OUTPUT_BAND_ARRAY] = data[OUTPUT_BAND_ARRAY][:, 1:]
        info["output_band"]["images"] -= 1
        info["digests"][OUTPUT_BAND_ARRAY] = array_digest(data[OUTPUT_BAND_ARRAY])
        data[AUDIT_JSON] = np.asarray(json.dumps(info))

    _rewrite(bundle, tmp_path / "shortened.npz", shortened)
    one_line_error(
        invoke_cli(["validate", fp32, "--bundle", tmp_path / "shortened.npz", "--audit"]),
        "retrained answers cover",
        "re-create the bundle",
    )
    _rewrite(bundle, tmp_path / "unrecorded.npz", unrecorded)
    one_line_error(
        invoke_cli(["validate", fp32, "--bundle", tmp_path / "unrecorded.npz", "--audit"]),
        OUTPUT_BAND_ARRAY,
        "changed after the bundle was written",
    )
