"""``quantize --calib-method entropy`` calibrates by entropy (issue #11's INT8 investigation): onnxruntime's
quantize_static default (128 histogram bins for 128 quantized bins) leaves its KL search a single candidate, the
whole range, so its "entropy" activation ranges equal MinMax's bit for bit. edge-unlearn computes them with
2048 bins instead; this test fails if entropy silently becomes minmax again."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import onnx
from onnx import numpy_helper

from edge_unlearn.deploy.onnx_meta import read_meta
from edge_unlearn.export.quantize import QuantizeConfig, quantize_model


def _activation_scales(path) -> dict[str, float]:
    """Scales of the activation QuantizeLinear nodes (weights are per-channel and calibration-independent)."""
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {
        n.input[0]: float(inits[n.input[1]])
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and n.input[1] in inits and inits[n.input[1]].size == 1
    }


def test_entropy_calibration_is_not_minmax(artifacts, tmp_path):
    scales = {}
    for method in ("minmax", "entropy"):
        out = tmp_path / f"{method}.onnx"
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_model(
                artifacts.fp32,
                out,
                QuantizeConfig(precision="int8", target="cpu", calib_method=method, calib_samples=128),
                calib="digits",
            )
        assert read_meta(out).quantization["calib_method"] == method
        scales[method] = _activation_scales(out)
    assert scales["minmax"].keys() == scales["entropy"].keys() and len(scales["minmax"]) >= 3
    differ = [k for k in scales["minmax"] if not np.isclose(scales["minmax"][k], scales["entropy"][k], rtol=1e-3)]
    assert len(differ) >= len(scales["minmax"]) // 2, (scales, differ)


def test_histogram_calibration_takes_a_sample_count_that_is_not_a_multiple_of_the_batch(artifacts, tmp_path):
    """onnxruntime's percentile calibrator stacks every batch's outputs: a shorter last batch (100 = 3 × 32 + 4)
    made it fail; the reader's batches now all have one size and every sample is read once."""
    from edge_unlearn.export.quantize import _Reader

    reader = _Reader("x", np.arange(100, dtype=np.float32)[:, None])
    batches = list(iter(reader.get_next, None))
    assert {len(b["x"]) for b in batches} == {25} and np.concatenate(
        [b["x"] for b in batches]
    ).ravel().tolist() == list(range(100))
    out = tmp_path / "percentile.onnx"
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_model(
            artifacts.fp32,
            out,
            QuantizeConfig(precision="int8", target="cpu", calib_method="percentile", calib_samples=100),
            calib="digits",
        )
    assert read_meta(out).quantization["calib_method"] == "percentile"
