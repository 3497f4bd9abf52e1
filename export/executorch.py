"""An unlearned checkpoint -> ExecuTorch program (``.pte``) with the XNNPACK delegate, in FP32 or INT8.

``torch.export`` lowers the same deployed module as the LiteRT converter (:func:`edge_unlearn.export.litert.
mask_module`: backbone, compact head of the retained rows, then the float mask -- floor ``where(r > L, r, L)``,
``pad`` of one fill column, ``index_select`` of the class index map) at batch 1 (the runner feeds larger batches one
image at a time). ``to_edge_transform_and_lower`` hands the backbone and head to XNNPACK; the mask's ops are kept
out of every delegated region (:class:`_ScopedPartitioner`), so they stay ExecuTorch kernel calls whose constants
(L, fill, index map) sit in the program where the gate reads them. INT8 is the PT2E flow (torchao's
``prepare_pt2e``/``convert_pt2e``) with ExecuTorch's ``XNNPACKQuantizer`` (symmetric, per-channel weights) set on the
``deploy`` submodule only and calibrated on *retained-class samples only*; the mask never meets an integer type.
The edge-unlearn metadata is a constant method (:data:`META_METHOD`, the JSON props as a uint8 tensor). The file is
proven by the gate (:mod:`edge_unlearn.pte.structure`) and run once before it is written.
``audit=True`` (``convert --to executorch --audit``) writes the audit sibling for ``validate --audit``
(docs/audit.md): the module returns ``{"logits": ..., "features": ...}``, which ``torch.export`` flattens in that
order into the forward method's two outputs, and the metadata records ``features_name``; the features output is
left out of the mask's walk, so it comes out of the XNNPACK delegate in float. The deployed file stays the one
without it.
Host side: needs torch and ``executorch`` (``pip install 'edge-unlearn[executorch]'``); ExecuTorch's Python runtime
needs torch too, so ``.pte`` files are validated on the host.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_unlearn.deploy.onnx_meta import FEATURES_NAME, OnnxMeta, check_output_path
from edge_unlearn.errors import DependencyError, ModelFileError, UsageError
from edge_unlearn.export.litert import ConvertResult
from edge_unlearn.fileio import atomic_output, sha256_file
from edge_unlearn.pte.runner import META_METHOD, NEEDS_EXECUTORCH

EXECUTORCH_PRECISIONS = ("fp32", "int8")
#: the deployed module's attribute the quantizer is scoped to (backbone + head)
QUANTIZED_MODULE = "deploy"
#: op names of the class mask, kept out of the XNNPACK partitions (walked back from the program's output)
MASK_OPS = ("index_select", "constant_pad_nd", "where", "gt", "_clone_dim_order", "_to_copy")


def _scoped_partitioner(inner: Any) -> Any:
    """``inner`` (XnnpackPartitioner) with the class mask's nodes untagged: walking back from the program's output
    through :data:`MASK_OPS`, every node found stays outside the delegate (a kernel call the gate reads)."""
    from executorch.exir.backend.partitioner import Partitioner, PartitionResult

    class _ScopedPartitioner(Partitioner):
        def __init__(self) -> None:
            super().__init__(inner.delegation_spec)

        def partition(self, exported_program: Any) -> Any:
            result = inner.partition(exported_program)
            graph = result.tagged_exported_program.graph
            todo = [a for a in graph.output_node().all_input_nodes]
            seen: set[Any] = set()
            while todo:
                node = todo.pop()
                if node in seen or node.op != "call_function":
                    continue
                seen.add(node)
                if not any(op in str(node.target) for op in MASK_OPS):
                    continue
                node.meta.pop("delegation_tag", None)
                todo.extend(node.all_input_nodes)
            used = {n.meta.get("delegation_tag") for n in graph.nodes}
            tags = {tag: spec for tag, spec in result.partition_tags.items() if tag in used}
            return PartitionResult(result.tagged_exported_program, tags)

        def ops_to_not_decompose(self, ep: Any) -> Any:
            return inner.ops_to_not_decompose(ep)

    return _ScopedPartitioner()


def lower_to_pte(
    module: Any, example: tuple[Any, ...], meta: OnnxMeta, calib_inputs: np.ndarray | None = None
) -> bytes:
    """The ``.pte`` bytes of ``module`` (a :func:`~edge_unlearn.export.litert.mask_module`), INT8 when
    ``calib_inputs`` is given; the metadata ``meta`` as the constant method :data:`META_METHOD`."""
    import torch

    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except ImportError as exc:
        raise DependencyError(NEEDS_EXECUTORCH) from exc
    if calib_inputs is not None:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = XNNPACKQuantizer()
        quantizer.set_module_name(QUANTIZED_MODULE, get_symmetric_quantization_config(is_per_channel=True))
        prepared = prepare_pt2e(torch.export.export(module, example).module(), quantizer)
        with torch.no_grad():
            for image in calib_inputs:
                prepared(torch.from_numpy(np.ascontiguousarray(image[None], dtype=np.float32)))
        module = convert_pt2e(prepared)
    props = np.frombuffer(json.dumps(meta.to_props(), sort_keys=True).encode(), np.uint8).copy()
    with torch.no_grad():
        program = torch.export.export(module, example)
        edge = to_edge_transform_and_lower(
            program,
            partitioner=[_scoped_partitioner(XnnpackPartitioner())],
            constant_methods={META_METHOD: torch.from_numpy(props)},
        )
        return bytes(edge.to_executorch().buffer)


def convert_executorch(
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
    """Write ``output`` (``.pte``) from an edge-unlearn checkpoint; INT8 needs ``calib`` or ``calib_inputs``.
    ``audit``: the audit sibling (a second output, the features, for ``validate --audit``)."""
    import torch

    from edge_unlearn.checkpoint import load_checkpoint
    from edge_unlearn.export.litert import mask_module
    from edge_unlearn.export.onnx_export import artefact_meta

    if precision not in EXECUTORCH_PRECISIONS:
        raise UsageError(f"unsupported precision {precision!r} for ExecuTorch; choose one of {EXECUTORCH_PRECISIONS}")
    checkpoint, output = Path(checkpoint), Path(output)
    if output.suffix.lower() != ".pte":
        raise UsageError(f"an ExecuTorch program is a .pte file; name the output {output.stem}.pte")
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
    info: dict[str, Any] = {"tool": "executorch", "delegate": "XnnpackBackend", "batch": 1}
    if precision == "int8":
        assert calib_inputs is not None
        info.update(
            tool="executorch-pt2e",
            recipe="xnnpack_symmetric_per_channel",
            scope=QUANTIZED_MODULE,
            calib=calib or "(inputs)",
            calib_count=len(calib_inputs),
            calib_classes=list(calib_classes),
        )
    meta = replace(meta, quantization=info)
    module = mask_module(model, audit=audit)
    example = (torch.zeros(1, *meta.input_shape),)
    try:
        data = lower_to_pte(module, example, meta, calib_inputs if precision == "int8" else None)
    except DependencyError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch.export and the lowering raise many types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ModelFileError(f"lowering to ExecuTorch failed for arch {meta.arch}: {first}") from exc
    if precision == "int8" and echo:
        echo(
            f"INT8 (PT2E XNNPACK, symmetric per-channel) on {0 if calib_inputs is None else len(calib_inputs)} retained-class samples"
        )
    with atomic_output(output) as tmp:
        tmp.write_bytes(data)
        _self_check(tmp, meta)
    count = 0 if calib_inputs is None else len(calib_inputs)
    outputs = (meta.output_name, *((meta.features_name,) if meta.features_name else ()))
    return ConvertResult(output, sha256_file(output), precision, count, calib_classes, outputs)


def _self_check(path: Path, meta: OnnxMeta) -> None:
    """The gate proves the written file's mask and, on a few inputs, the forgotten columns are exactly the fill."""
    from edge_unlearn.pte.runner import ExecuTorchRunner

    runner = ExecuTorchRunner(path)
    failed = [c.line() for c in runner.static_checks() if not c.passed]
    if failed:
        raise ModelFileError(f"the .pte fails the gate's structural checks, nothing written: {failed[0]}")
    x = np.random.default_rng(0).standard_normal((2, *meta.input_shape)).astype(np.float32)
    with runner:
        out = runner.infer(x)
        features = runner.infer_features(x)[1] if meta.features_name else None
    forgotten = list(meta.forgotten_classes)
    if not np.all(np.isfinite(out)) or (forgotten and not np.all(out[:, forgotten] == np.float32(meta.mask_value))):
        raise ModelFileError("the .pte changed the forgotten classes' fill value or produces NaN; nothing written")
    if features is not None and (features.ndim != 2 or len(features) != len(x) or not np.all(np.isfinite(features))):
        raise ModelFileError(
            f"the audit .pte's features output is {list(features.shape)} or not finite, not float [batch, D]; "
            "nothing written"
        )
