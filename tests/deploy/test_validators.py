"""The validators on hand-made logits (pure numpy, no model): each hazard of docs/design.md §4 fails a check."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_unlearn.deploy.bundle import Bundle
from edge_unlearn.deploy.onnx_meta import MASK_VALUE
from edge_unlearn.deploy.runner import Runner
from edge_unlearn.deploy.validate import Check, Thresholds, ValidationReport, evaluate_logits, validate
from edge_unlearn.errors import ModelFileError

C, FORGOTTEN = 5, (1,)


def _bundle(per_class: int = 20) -> Bundle:
    labels = np.repeat(np.arange(C), per_class).astype(np.int64)
    ref = np.full((len(labels), C), -1.0, np.float32)
    ref[np.arange(len(labels)), labels] = 3.0  # the reference is right everywhere
    ref[labels == 1, 2] = 4.0  # forgotten class 1's samples go to class 2 in the reference
    ref[:, list(FORGOTTEN)] = MASK_VALUE
    return Bundle(
        np.zeros((len(labels), 1, 2, 2), np.float32),
        labels,
        ref,
        tuple("abcde"),
        FORGOTTEN,
        {"source_sha256": "s"},
        "b.npz",
        "x",
    )


def _checks(logits, bundle=None, forgotten=(1,)):
    checks, table = evaluate_logits(logits, bundle or _bundle(), Thresholds(), list(forgotten))
    return {c.name: c for c in checks}, table


def test_reference_logits_pass():
    b = _bundle()
    checks, table = _checks(b.reference_logits.copy(), b)
    assert all(c.passed for c in checks.values()), {k: c.to_json() for k, c in checks.items()}
    assert checks["forget_acc"].value == 0.0 and checks["retain_agreement"].value == 1.0
    assert table[1]["forgotten"] and table[1]["wins"] == 0 and table[2]["wins"] == 40


def test_nan_fails_and_is_never_correct():
    b = _bundle()
    logits = b.reference_logits.copy()
    logits[0, 3] = np.nan
    logits[5, 1] = -np.inf  # -inf in a forgotten column: the FP16 -1e9 hazard
    checks, _ = _checks(logits, b)
    assert not checks["finite_outputs"].passed and checks["finite_outputs"].value == 2
    assert checks["retain_agreement"].value == pytest.approx(1 - 2 / 80)


def test_forgotten_class_winning_fails():
    b = _bundle()
    logits = b.reference_logits.copy()
    logits[b.labels == 1, 1] = 10.0  # the mask stopped working: the forgotten class is recognised again
    checks, _ = _checks(logits, b)
    assert checks["forget_acc"].value == 1.0 and not checks["forget_acc"].passed
    assert checks["forgotten_class_wins"].value == 20 and not checks["forgotten_class_wins"].passed
    one = b.reference_logits.copy()
    one[0, 1] = 10.0  # a retained sample predicted as the forgotten class: forget_acc stays 0, still a failure
    checks, _ = _checks(one, b)
    assert checks["forget_acc"].passed and not checks["forgotten_class_wins"].passed


def test_flattened_logits_fail_agreement():
    """The INT8 hazard: every logit quantized to the same value -> argmax 0 everywhere."""
    b = _bundle()
    logits = np.zeros_like(b.reference_logits)
    logits[:, 1] = MASK_VALUE
    checks, _ = _checks(logits, b)
    assert not checks["retain_agreement"].passed and not checks["retain_drop"].passed


def test_thresholds_are_inclusive():
    b = _bundle()
    logits = b.reference_logits.copy()
    logits[0, 0], logits[0, 3] = -1.0, 5.0  # one retained sample of 80 wrong: drop 1/80
    checks, _ = evaluate_logits(logits, b, Thresholds(max_retain_drop=1 / 80, min_agreement=79 / 80), [1])
    named = {c.name: c for c in checks}
    assert named["retain_drop"].passed and named["retain_agreement"].passed
    checks, _ = evaluate_logits(logits, b, Thresholds(max_retain_drop=0.0124, min_agreement=0.99), [1])
    named = {c.name: c for c in checks}
    assert not named["retain_drop"].passed and not named["retain_agreement"].passed


def test_fails_closed_on_missing_figures():
    b = _bundle()
    no_forget_samples = Bundle(
        b.inputs[b.labels != 1],
        b.labels[b.labels != 1],
        b.reference_logits[b.labels != 1],
        b.class_names,
        FORGOTTEN,
        b.meta,
    )
    checks, _ = _checks(no_forget_samples.reference_logits.copy(), no_forget_samples)
    assert checks["forget_acc"].value is None and not checks["forget_acc"].passed
    checks, _ = evaluate_logits(b.reference_logits.copy(), b, Thresholds(), None)
    assert not {c.name: c for c in checks}["model_forgets_bundle_classes"].passed
    checks, _ = _checks(b.reference_logits.copy(), b, forgotten=())  # the model did not forget class 1
    assert not checks["model_forgets_bundle_classes"].passed
    assert not Check("x", None, "<=", 1.0).passed and not Check("x", float("nan"), "<=", 1.0).passed
    empty = ValidationReport("m", {}, {}, Thresholds(), [], [], 0, 0.0)
    assert not empty  # no checks at all is not a pass


def test_wrong_shape_is_a_usage_error():
    b = _bundle()
    with pytest.raises(ModelFileError, match="do not belong together"):
        evaluate_logits(np.zeros((len(b.labels), C + 1), np.float32), b, Thresholds(), [1])


class _FakeRunner(Runner):
    runtime = "fake"

    def __init__(self, logits, meta):
        super().__init__("fake.onnx")
        self.logits, self.meta, self.pos = logits, meta, 0

    def activate_impl(self):
        self.pos = 0

    def infer_impl(self, inputs):
        out = self.logits[self.pos : self.pos + len(inputs)]
        self.pos += len(inputs)
        return out

    def describe_impl(self):
        return {"provider": "none", "precision": "int8", **self.meta}


def test_report_object_and_json():
    b = _bundle()
    runner = _FakeRunner(b.reference_logits.copy(), {"num_classes": C, "forgotten_classes": [1], "source_sha256": "s"})
    report = validate(runner, b, batch_size=7)  # batches that do not divide N
    assert report and report.passed and not runner.is_active
    data = json.loads(json.dumps(report.to_json()))
    assert data["verdict"] == "pass" and data["precision"] == "int8" and data["runtime"] == "fake"
    assert {c["name"] for c in data["checks"]} >= {
        "forget_acc",
        "retain_drop",
        "retain_agreement",
        "finite_outputs",
        "forgotten_class_wins",
        "same_source_checkpoint",
    }
    assert "verdict: PASS" in report.summary()
    other = _FakeRunner(b.reference_logits.copy(), {"num_classes": C, "forgotten_classes": [1], "source_sha256": "t"})
    assert not validate(other, b)  # a bundle from another checkpoint
    wrong = _FakeRunner(b.reference_logits.copy(), {"num_classes": C + 2, "forgotten_classes": [1]})
    with pytest.raises(ModelFileError, match="classes but bundle"):
        validate(wrong, b)
