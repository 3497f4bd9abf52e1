"""An unlearned checkpoint -> LiteRT flatbuffer (``.tflite``) in FP32 or INT8 (ai-edge-quantizer, full integer).

``litert_torch.convert`` lowers the deployed module -- backbone, compact head (retained rows only), then the
same float mask as the ONNX export (floor ``where(r > L, r, L)``, ``pad`` of one fill column, ``index_select`` of
the class index map) -- at batch 1 (the runner feeds larger batches one image at a time). INT8 is
ai-edge-quantizer's static int8 weights + activations recipe, restricted by name to the backbone and head
(:data:`QUANTIZED_SCOPE`), calibrated on *retained-class samples only*: the mask's ops stay float32, so the fill
never meets an integer type. The edge-unlearn metadata is written into the flatbuffer's metadata table; the file
is proven by the gate (:mod:`edge_unlearn.deploy.structure_litert`) and run once before it is written.
``audit=True`` (``convert --to litert --audit``) writes the audit sibling for ``validate --audit`` (docs/audit.md):
the module returns ``{"logits": ..., "features": ...}``, so the signature names both outputs, and the metadata
records ``features_name``; the deployed file stays the one without it.
Host side: needs torch and ``litert-torch`` (``pip install litert-torch``); the ``.tflite`` then runs torch-free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_unlearn.deploy.onnx_meta import (
    FEATURES_NAME,
    MASK_VALUE,
    OUTPUT_NAME,
    RETAINED_FLOOR,
    OnnxMeta,
    check_output_path,
)
from edge_unlearn.deploy.runners_litert import (
    inline_buffers,
    load_tflite,
    logits_view,
    output_tensor,
    with_tflite_meta,
)
from edge_unlearn.deploy.structure_litert import tflite_static_checks
from edge_unlearn.errors import DependencyError, ModelFileError, UsageError
from edge_unlearn.fileio import atomic_output, sha256_file

LITERT_PRECISIONS = ("fp32", "int8")
#: tensor-name pattern of the ops ai-edge-quantizer may quantize: those inside the deployed backbone + head module
#: (the mask's ops are named after :class:`_LiteRtMask` only)
QUANTIZED_SCOPE = r".*Deploy_deploy.*"
#: calibration images per signature call (the converted model's batch)
CALIB_BATCH = 1
#: the signature litert_torch.convert writes, and its one input
SIGNATURE, SIGNATURE_INPUT = "serving_default", "args_0"


@dataclass(frozen=True)
class ConvertResult:
    """What `convert` wrote from a checkpoint (LiteRT ``.tflite``, ExecuTorch ``.pte``)."""

    path: Path
    sha256: str
    precision: str
    calib_count: int
    calib_classes: tuple[int, ...]
    #: the file's outputs by name: the logits, and for an audit file the features
    outputs: tuple[str, ...] = (OUTPUT_NAME,)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "precision": self.precision,
            "calib_count": self.calib_count,
            "calib_classes": list(self.calib_classes),
            "outputs": list(self.outputs),
        }


def _import_litert_torch() -> Any:
    try:
        import litert_torch
    except ImportError as exc:
        raise DependencyError(
            "converting to LiteRT needs litert-torch on the host, which is not installed here; "
            "install it with pip install litert-torch (the .tflite then runs with edge-unlearn[litert])"
        ) from exc
    return litert_torch


def mask_module(model: Any, audit: bool = False) -> Any:
    """The deployed module with the class mask in torch: logits [B, C], forgotten columns = MASK_VALUE. ``audit``:
    it returns ``{"logits": logits, "features": penultimate features [B, D]}`` (the dict's keys name the
    signature's outputs); the backbone and head stay inside the module :data:`QUANTIZED_SCOPE` matches."""
    import torch

    from edge_unlearn.export.onnx_export import audit_module, deploy_module_with_rows, retained_classes

    retained = retained_classes(model)
    index = torch.full((model.num_classes,), len(retained), dtype=torch.int64)
    index[retained] = torch.arange(len(retained))
    deploy = deploy_module_with_rows(model, retained)
    if audit:
        deploy = audit_module(deploy)  # (retained logits, features); its class name still matches QUANTIZED_SCOPE

    class _LiteRtMask(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.deploy = deploy
            self.register_buffer("index", index)

        def forward(self, x: torch.Tensor) -> Any:
            out = self.deploy(x)
            retained_logits, features = out if audit else (out, None)
            floor = torch.tensor(RETAINED_FLOOR, dtype=retained_logits.dtype)
            floored = torch.where(retained_logits > floor, retained_logits, floor)
            padded = torch.nn.functional.pad(floored, (0, 1), value=MASK_VALUE)
            logits = torch.index_select(padded, 1, self.index)
            return {OUTPUT_NAME: logits, FEATURES_NAME: features} if audit else logits

    return _LiteRtMask().eval()


def convert_litert(
    checkpoint: str | Path,
    output: str | Path,
    precision: str = "fp32",
    calib: str | None = None,
    calib_inputs: np.ndarray | None = None,
    calib_samples: int = 100,
    seed: int = 0,
    echo: Callable[[str], None] | None = None,
    data_dir: str | None = None,
    download: bool = False,
    audit: bool = False,
) -> ConvertResult:
    """Write ``output`` (``.tflite``) from an edge-unlearn checkpoint; INT8 needs ``calib`` or ``calib_inputs``.
    ``audit``: the audit sibling (a second output ``features``, for ``validate --audit``)."""
    import torch

    from edge_unlearn.checkpoint import load_checkpoint
    from edge_unlearn.export.onnx_export import artefact_meta

    if precision not in LITERT_PRECISIONS:
        raise UsageError(f"unsupported precision {precision!r} for LiteRT; choose one of {LITERT_PRECISIONS}")
    checkpoint, output = Path(checkpoint), Path(output)
    if output.suffix.lower() != ".tflite":
        raise UsageError(f"a LiteRT model is a .tflite file; name the output {output.stem}.tflite")
    check_output_path(output, [checkpoint])
    ckpt = load_checkpoint(checkpoint)
    model = ckpt.model.eval()
    meta = artefact_meta(ckpt, precision, FEATURES_NAME if audit else "")
    calib_classes: tuple[int, ...] = ()
    if precision == "int8" and calib_inputs is None:
        if not calib:
            raise UsageError(
                "INT8 needs calibration data: pass --calib with a dataset spec (e.g. npz:data.npz); "
                "only its retained classes are used"
            )
        from edge_unlearn.export.quantize import calibration_inputs

        calib_inputs, classes = calibration_inputs(
            calib, replace(meta, precision="fp32"), calib_samples, seed, data_dir=data_dir, download=download
        )
        calib_classes = tuple(classes)
    litert_torch = _import_litert_torch()
    module = mask_module(model, audit=audit)
    example = torch.zeros(1, *meta.input_shape)
    try:
        data = bytes(litert_torch.convert(module, (example,)).model_content())
    except Exception as exc:  # noqa: BLE001 - the converter raises many types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ModelFileError(f"litert_torch.convert failed for arch {meta.arch}: {first}") from exc
    info: dict[str, Any] = {"tool": "litert-torch", "batch": 1}
    if precision == "int8":
        assert calib_inputs is not None
        data = restore_signature_outputs(_quantize_int8(data, np.ascontiguousarray(calib_inputs, dtype=np.float32)))
        info.update(
            tool="ai-edge-quantizer",
            recipe="static_wi8_ai8",
            scope=QUANTIZED_SCOPE,
            calib=calib or "(inputs)",
            calib_count=len(calib_inputs),
            calib_classes=list(calib_classes),
        )
        if echo:
            echo(f"INT8 (static, int8 weights and activations) on {len(calib_inputs)} retained-class samples")
    meta = replace(meta, quantization=info)
    data = with_tflite_meta(data, meta)
    with atomic_output(output) as tmp:
        tmp.write_bytes(data)
        _self_check(tmp, meta)
    count = 0 if calib_inputs is None else len(calib_inputs)
    outputs = (meta.output_name, *((meta.features_name,) if meta.features_name else ()))
    return ConvertResult(output, sha256_file(output), precision, count, calib_classes, outputs)


def _quantize_int8(data: bytes, calib_inputs: np.ndarray) -> bytes:
    try:
        from ai_edge_quantizer import qtyping, quantizer, recipe_manager
    except ImportError as exc:
        raise DependencyError("LiteRT INT8 needs ai-edge-quantizer; pip install ai-edge-quantizer") from exc
    manager = recipe_manager.RecipeManager()
    manager.add_static_config(
        regex=QUANTIZED_SCOPE,
        operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        activation_num_bits=8,
        weight_num_bits=8,
    )
    qt = quantizer.Quantizer(bytearray(data))
    qt.load_quantization_recipe(manager.get_quantization_recipe())
    samples = [{SIGNATURE_INPUT: calib_inputs[i : i + CALIB_BATCH]} for i in range(0, len(calib_inputs), CALIB_BATCH)]
    result = qt.calibrate({SIGNATURE: samples})
    return bytes(qt.quantize(result).quantized_model)


def restore_signature_outputs(data: bytes) -> bytes:
    """``data`` with each graph output the quantizer replaced by its quantized copy put back to the float tensor the
    signature names. ai-edge-quantizer (0.10) rewrites an audit file's float ``features`` output ``t`` as
    ``QUANTIZE(t) -> t_quantized`` and lists ``t_quantized`` as the graph output while the signature still names
    ``t``: the file then has no output called ``features`` (the runner finds outputs by the signature's names).
    ``t`` is still computed (``t_quantized`` feeds the head), so declaring it the output again costs nothing and
    keeps the features float. A model that needs no repair is returned unchanged."""
    import flatbuffers

    from edge_unlearn.deploy.runners_litert import schema

    fb = schema()
    model = inline_buffers(fb.ModelT.InitFromPackedBuf(data, 0), data)
    if not model.subgraphs or model.subgraphs[0].outputs is None:
        return data
    graph = model.subgraphs[0]
    quantize = {
        i
        for i, c in enumerate(model.operatorCodes)
        if max(c.builtinCode, c.deprecatedBuiltinCode) == fb.BuiltinOperator.QUANTIZE
    }
    quantized_copy = {  # QUANTIZE's output -> its float input
        int(op.outputs[0]): int(op.inputs[0]) for op in graph.operators or [] if op.opcodeIndex in quantize
    }
    named = {
        int(entry.tensorIndex)
        for signature in model.signatureDefs or []
        if int(signature.subgraphIndex or 0) == 0
        for entry in signature.outputs or []
    }
    outputs = [int(i) for i in graph.outputs]
    restored = [quantized_copy[o] if o not in named and quantized_copy.get(o) in named else o for o in outputs]
    if restored == outputs:
        return data
    graph.outputs = np.asarray(restored, dtype=np.int32)
    builder = flatbuffers.Builder(len(data) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _self_check(path: Path, meta: OnnxMeta) -> None:
    """The gate proves the written file's mask and, on a few inputs, the forgotten columns are exactly the fill."""
    from edge_unlearn.deploy.runners_litert import LiteRtRunner

    model = load_tflite(path)
    if meta.features_name:
        for name in (meta.output_name, meta.features_name):
            if output_tensor(model, name) is None:
                raise ModelFileError(
                    f"the audit .tflite has no output named {name!r} in its signature; nothing written"
                )
    failed = [c.line() for c in tflite_static_checks(logits_view(model, meta), meta, str(path)) if not c.passed]
    if failed:
        raise ModelFileError(f"the .tflite fails the gate's structural checks, nothing written: {failed[0]}")
    x = np.random.default_rng(0).standard_normal((2, *meta.input_shape)).astype(np.float32)
    with LiteRtRunner(path) as runner:
        out = runner.infer(x)
        features = runner.infer_features(x)[1] if meta.features_name else None
    forgotten = list(meta.forgotten_classes)
    if not np.all(np.isfinite(out)) or (forgotten and not np.all(out[:, forgotten] == np.float32(meta.mask_value))):
        raise ModelFileError("the .tflite changed the forgotten classes' fill value or produces NaN; nothing written")
    if features is not None and (features.ndim != 2 or len(features) != len(x) or not np.all(np.isfinite(features))):
        raise ModelFileError(
            f"the audit .tflite's features output is {list(features.shape)} or not finite, not float [batch, D]; "
            "nothing written"
        )
