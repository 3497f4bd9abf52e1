"""torch -> ONNX export of an unlearned checkpoint (the only export module that imports torch).

The graph holds the backbone, a *compact* head with the retained classes' rows only, and two float nodes
that scatter the retained logits back to their class positions and fill the forgotten ones with
:data:`edge_unlearn.deploy.onnx_meta.MASK_VALUE` (why: docs/deployment.md). Export runs ``torch.onnx.export(dynamo=True)``
with a dynamic batch axis, ``onnx.checker`` with ``full_check=True``, and a parity check against torch on
onnxruntime at two batch sizes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_unlearn import __version__
from edge_unlearn.deploy.onnx_meta import (
    FEATURES_NAME,
    INPUT_NAME,
    MASK_VALUE,
    OUTPUT_NAME,
    RETAINED_NAME,
    OnnxMeta,
    check_output_path,
    mask_graph,
    write_meta,
)
from edge_unlearn.errors import ModelFileError, UsageError
from edge_unlearn.fileio import atomic_output, sha256_file

if TYPE_CHECKING:
    from edge_unlearn.checkpoint import Checkpoint

DEFAULT_OPSET = 18
#: the node that copies the penultimate features to the audit export's second output
AUDIT_NODE = "edge_unlearn_audit/features"


@dataclass(frozen=True)
class ExportConfig:
    """How to export. Parity tolerance = ``parity_rtol`` × max(1, largest |logit|) on random normal inputs.

    ``audit``: add the penultimate features as a second output (:data:`FEATURES_NAME`) for
    ``validate --audit`` (docs/audit.md); a sibling file of the deployed model, never the deployed one."""

    opset: int = DEFAULT_OPSET
    parity_samples: int = 16
    parity_rtol: float = 1e-4
    seed: int = 0
    audit: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Parity:
    """torch vs onnxruntime on the same inputs (retained classes' logits; forgotten ones must be the mask value)."""

    samples: int
    batch_sizes: tuple[int, ...]
    max_abs_diff: float
    tolerance: float
    argmax_agreement: float
    forgotten_exact: bool
    #: audit export only: max |diff| of the features output against torch, and its tolerance
    features_max_abs_diff: float | None = None
    features_tolerance: float | None = None

    @property
    def ok(self) -> bool:
        features_ok = self.features_max_abs_diff is None or self.features_max_abs_diff <= (
            self.features_tolerance or 0.0
        )
        return (
            self.max_abs_diff <= self.tolerance
            and self.argmax_agreement == 1.0
            and self.forgotten_exact
            and features_ok
        )

    def line(self) -> str:
        features = (
            ""
            if self.features_max_abs_diff is None
            else f", features max |diff| {self.features_max_abs_diff:.2e} (tolerance {self.features_tolerance:.1e})"
        )
        return (
            f"parity torch vs onnxruntime ({self.samples} samples, batches {list(self.batch_sizes)}): "
            f"max |diff| {self.max_abs_diff:.2e} (tolerance {self.tolerance:.1e}), "
            f"argmax agreement {self.argmax_agreement:.4f}, forgotten logits = {MASK_VALUE:g}: "
            f"{'yes' if self.forgotten_exact else 'NO'}{features}"
        )


@dataclass(frozen=True)
class ExportResult:
    path: Path
    sha256: str
    meta: OnnxMeta
    parity: Parity

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "forgotten_classes": list(self.meta.forgotten_classes),
            "num_classes": self.meta.num_classes,
            "source_sha256": self.meta.source_sha256,
            "outputs": [self.meta.output_name] + ([self.meta.features_name] if self.meta.features_name else []),
            "parity": {**asdict(self.parity), "ok": self.parity.ok},
        }


class MaskDesign:
    """How the class mask enters the exported graph. The library ships one design, :class:`CompactMask` (ours,
    docs/deployment.md); the alternatives it was measured against (a float ``Where``, a naive bias of -1e4 or
    -1e9) live in ``benchmarks/mask_variants.py`` and plug in here through the same three hooks."""

    #: recorded in the ONNX metadata (``quantization.graph_variant``) when not the default
    name = "compact"
    #: value of a forgotten class's logit in the graph's output
    fill_value = MASK_VALUE
    #: name of the tensor that holds the logits before masking (the quantizer stops there)
    retained_name = RETAINED_NAME

    def deploy_module(self, model):
        """The torch part of the graph; returns (module, retained class ids)."""
        raise NotImplementedError

    def append_mask(self, graph_model, retained: list[int], num_classes: int) -> None:
        """Add the mask nodes after the torch part (renaming its input and output)."""
        raise NotImplementedError


def deploy_module_with_rows(model, rows: list[int]):
    """backbone + a Linear head holding ``rows`` of the model's head (edit its weights before exporting)."""
    import torch
    from torch import nn

    head = nn.Linear(model.feature_dim, len(rows))
    with torch.no_grad():
        head.weight.copy_(model.head.weight[rows])
        head.bias.copy_(model.head.bias[rows])

    class Deploy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = model.backbone
            self.head = head

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.backbone(x))

    return Deploy().eval()


def retained_classes(model) -> list[int]:
    forgotten = set(model.forgotten_classes)
    return [c for c in range(model.num_classes) if c not in forgotten]


class CompactMask(MaskDesign):
    """Ours: the head holds the retained rows only (forgotten rows are absent from the file); a float floor keeps every
    retained logit above the fill, a float Pad adds one MASK_VALUE column and a Gather scatters every class from it,
    after the last quantized tensor (:func:`edge_unlearn.deploy.onnx_meta.mask_graph`)."""

    def deploy_module(self, model):
        retained = retained_classes(model)
        return deploy_module_with_rows(model, retained), retained

    def append_mask(self, graph_model, retained: list[int], num_classes: int) -> None:
        graph = graph_model.graph
        check_single_io(graph)
        rename_io(graph, RETAINED_NAME)
        initializers, nodes = mask_graph(retained, num_classes)
        graph.initializer.extend(initializers)
        graph.node.extend(nodes)
        set_output(graph, num_classes)


COMPACT = CompactMask()


def check_single_io(graph) -> None:
    if len(graph.output) != 1 or len(graph.input) != 1:
        raise ModelFileError("the exported graph must have exactly one input and one output")


def set_output(graph, num_classes: int) -> None:
    """Declare OUTPUT_NAME [batch, num_classes] float as the graph's only output."""
    from onnx import TensorProto, helper

    batch = graph.output[0].type.tensor_type.shape.dim[0]
    out = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [batch.dim_param or "batch", num_classes])
    del graph.output[:]
    graph.output.append(out)


def rename_io(graph, first_out: str) -> None:
    """Name the graph's input INPUT_NAME and its (torch) output ``first_out``."""
    last = graph.output[0].name
    for node in graph.node:
        node.output[:] = [first_out if o == last else o for o in node.output]
    graph.output[0].name = first_out
    first = graph.input[0].name
    for node in graph.node:
        node.input[:] = [INPUT_NAME if i == first else i for i in node.input]
    graph.input[0].name = INPUT_NAME


def audit_module(module):
    """``module`` (backbone + head) returning (head output, penultimate features): the audit export's graph."""
    from torch import nn

    if not (
        isinstance(getattr(module, "backbone", None), nn.Module)
        and isinstance(getattr(module, "head", None), nn.Module)
    ):
        raise UsageError("--audit needs the compact mask design (a backbone and a head); export without --audit")

    class AuditDeploy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone, self.head = module.backbone, module.head

        def forward(self, x):
            features = self.backbone(x)
            return self.head(features), features

    return AuditDeploy().eval()


def detach_features_output(graph) -> Any:
    """Rename the torch graph's second output to :data:`FEATURES_NAME` and take it off the output list (so the mask
    design sees one output); returns its ValueInfo, for :func:`attach_features_output` after the mask is added."""
    if len(graph.output) != 2:
        raise ModelFileError(f"the audit graph must have two outputs (logits, features), got {len(graph.output)}")
    from onnx import helper

    old = graph.output[1].name
    if old == graph.output[0].name:
        raise ModelFileError("the audit graph returns the same tensor as logits and features; cannot export it")
    # an Identity, not a renamed tensor: the head's input stays an inner tensor, so onnxruntime fuses the quantized
    # head exactly as in the deployment export (a Q/DQ output that is also a graph output is never fused)
    graph.node.append(helper.make_node("Identity", [old], [FEATURES_NAME], name=AUDIT_NODE))
    info = type(graph.output[1])()
    info.CopyFrom(graph.output[1])
    info.name = FEATURES_NAME
    del graph.output[1]
    return info


def attach_features_output(graph, info) -> None:
    """Declare the features [batch, D] float as the graph's second output (after the logits)."""
    dims = info.type.tensor_type.shape.dim
    if len(dims) == 2 and not dims[0].dim_param:
        dims[0].dim_param = "batch"
    graph.output.append(info)


def _check_parity(
    path: Path, model, input_shape: tuple[int, ...], config: ExportConfig, design: MaskDesign = COMPACT
) -> Parity:
    import onnxruntime as ort
    import torch

    gen = torch.Generator().manual_seed(config.seed)
    x = torch.randn(config.parity_samples, *input_shape, generator=gen)
    with torch.no_grad():
        ref = model.logits(x, masked=False).numpy()
    mask = model.class_mask.numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batches = (1, config.parity_samples)
    outs, feats = [], []
    audit = any(o.name == FEATURES_NAME for o in session.get_outputs())
    names = [OUTPUT_NAME] + ([FEATURES_NAME] if audit else [])
    for bs in batches:  # batch 1 and a larger batch: proves the dynamic batch axis
        runs = [session.run(names, {INPUT_NAME: x[i : i + bs].numpy()}) for i in range(0, len(x), bs)]
        outs.append(np.concatenate([r[0] for r in runs]))
        if audit:
            feats.append(np.concatenate([r[1] for r in runs]))
    diff = max(float(np.max(np.abs(o[:, mask] - ref[:, mask]))) for o in outs)
    tol = config.parity_rtol * max(1.0, float(np.max(np.abs(ref[:, mask]))))
    ref_arg = np.where(mask, ref, -np.inf).argmax(1)
    agree = min(float(np.mean(o.argmax(1) == ref_arg)) for o in outs)
    fill = np.float32(design.fill_value)
    exact = all(bool(np.all(o[:, ~mask] == fill)) for o in outs)
    if not audit:
        return Parity(len(x), batches, diff, tol, agree, exact)
    with torch.no_grad():
        ref_feats = model.features(x).numpy()
    feat_diff = max(float(np.max(np.abs(f - ref_feats))) if f.shape == ref_feats.shape else float("inf") for f in feats)
    feat_tol = config.parity_rtol * max(1.0, float(np.max(np.abs(ref_feats))))
    return Parity(len(x), batches, diff, tol, agree, exact, feat_diff, feat_tol)


def artefact_meta(ckpt: Checkpoint, precision: str, features_name: str = "") -> OnnxMeta:
    """The edge-unlearn metadata every artefact of a checkpoint carries (ONNX props, the LiteRT/ExecuTorch
    sidecar method): classes, forgotten classes, input and its preprocessing (how raw images become the input:
    calibration applies it), provenance."""
    meta = ckpt.meta
    return OnnxMeta(
        num_classes=meta.num_classes,
        class_names=tuple(meta.class_names),
        forgotten_classes=tuple(ckpt.model.forgotten_classes),
        input_shape=tuple(meta.input_shape),  # type: ignore[arg-type]
        normalization=meta.normalization.to_json(),
        source_sha256=ckpt.sha256 or "",
        arch=meta.arch,
        preprocessing=meta.prep.to_json(),
        dataset=meta.dataset,
        precision=precision,
        version=__version__,
        features_name=features_name,
    )


def export_onnx(
    checkpoint: str | Path,
    output: str | Path,
    config: ExportConfig = ExportConfig(),
    echo: Callable[[str], None] | None = None,
    design: MaskDesign = COMPACT,
) -> ExportResult:
    """Export a checkpoint to ONNX with the class mask in the graph; raises ModelFileError on failed parity.

    ``design`` other than :data:`COMPACT` is for measuring the alternatives (benchmarks/mask_variants.py)."""
    import onnx
    import torch

    from edge_unlearn.checkpoint import load_checkpoint

    if not 17 <= config.opset <= onnx.defs.onnx_opset_version():
        raise UsageError(f"--opset must be between 17 and {onnx.defs.onnx_opset_version()}, got {config.opset}")
    check_output_path(output, [checkpoint])
    ckpt = load_checkpoint(checkpoint)
    model, meta = ckpt.model.eval(), ckpt.meta
    module, retained = design.deploy_module(model)
    if config.audit:
        module = audit_module(module)
    example = torch.zeros(2, *meta.input_shape)
    try:
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            opset_version=config.opset,
            input_names=[INPUT_NAME],
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
            verbose=False,
            optimize=True,
        )
    except Exception as exc:  # the exporter raises many types; keep the first line
        cause, seen = exc, set()
        while cause is not None and id(cause) not in seen:  # torch.export wraps a Ctrl-C in its own error
            if isinstance(cause, KeyboardInterrupt):
                raise KeyboardInterrupt from exc
            seen.add(id(cause))
            cause = cause.__cause__ or cause.__context__
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"torch.onnx.export failed for arch {meta.arch}: {first}") from exc
    proto = program.model_proto
    features = detach_features_output(proto.graph) if config.audit else None
    design.append_mask(proto, retained, model.num_classes)
    if features is not None:
        attach_features_output(proto.graph, features)
    onnx_meta = replace(
        artefact_meta(ckpt, "fp32", FEATURES_NAME if config.audit else ""),
        retained_name=design.retained_name,
        quantization={"graph_variant": design.name} if design.name != COMPACT.name else {},
    )
    write_meta(proto, onnx_meta)
    proto.producer_name, proto.producer_version = "edge-unlearn", __version__
    output = Path(output)
    with atomic_output(output) as tmp:
        onnx.save(proto, str(tmp))
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ModelFileError(f"the exported graph fails onnx.checker: {str(exc).splitlines()[0]}") from exc
        parity = _check_parity(tmp, model, meta.input_shape, config, design)
        if echo is not None:
            echo(parity.line())
        if not parity.ok:
            raise ModelFileError(f"export parity failed, nothing written: {parity.line()}")
        digest = sha256_file(tmp)
    return ExportResult(output, digest, onnx_meta, parity)


def export_from_model(
    model,
    meta,
    output: str | Path,
    config: ExportConfig = ExportConfig(),
    echo: Callable[[str], None] | None = None,
    design: MaskDesign = COMPACT,
) -> ExportResult:
    """Convenience for tests and benchmarks: save a temporary checkpoint of ``model`` and export it."""
    from edge_unlearn.checkpoint import save_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "model.safetensors"
        save_checkpoint(ckpt, model, meta)
        return export_onnx(ckpt, output, config, echo, design)
