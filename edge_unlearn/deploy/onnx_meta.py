"""The metadata an edge-unlearn ONNX model carries in ``metadata_props``, and the graph facts around the mask.

Imports no torch (only ``onnx`` and numpy), so the deployment side can read a model's contract on the device.

The deployed graph (see docs/deployment.md for why this design):

    input [B, C, H, W] float32
      -> backbone -> compact head Linear(D, R), R = retained classes only   (quantizable)
      -> "retained_logits" [B, R]
      -> Where(Greater(r, RETAINED_FLOOR), r, RETAINED_FLOOR)                 (the floor; kept in float)
      -> Pad(+1 column = MASK_VALUE) -> Gather(axis=1, index map [C])        (kept in float)
      -> "logits" [B, C]: retained classes in their original positions, forgotten ones = MASK_VALUE

The forgotten rows of the head are not in the file at all; the mask is the constant index map. The floor makes
every retained logit at least RETAINED_FLOOR > MASK_VALUE for *every* input (NaN included: NaN > x is false, so a
NaN becomes the floor), so no input can make a forgotten class the argmax (:mod:`edge_unlearn.deploy.structure`
proves it from the graph).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_unlearn.core.formats import PRECISIONS
from edge_unlearn.errors import ModelFileError

if TYPE_CHECKING:
    from .preprocessing import ImagePreprocessing

FORMAT = "edge-unlearn.onnx/1"
PREFIX = "edge_unlearn."
#: Value of a forgotten class's logit: finite in FP16 (max 65504), far below any trained logit.
MASK_VALUE = -1.0e4
#: Lowest value a retained logit can take in the deployed graph (the floor node): above MASK_VALUE in FP32 and FP16,
#: far below any trained logit (export parity shows it never binds on ordinary inputs).
RETAINED_FLOOR = -5.0e3
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
RETAINED_NAME = "retained_logits"
#: the audit export's second output: the penultimate features [B, D] (``edge-unlearn export --audit``; docs/audit.md)
FEATURES_NAME = "features"
#: names of the nodes that place the retained logits and fill the forgotten ones (never quantized)
MASK_NODE_PREFIX = "edge_unlearn_mask/"


@dataclass(frozen=True)
class OnnxMeta:
    """What an exported model says about itself (``metadata_props`` under the ``edge_unlearn.`` prefix)."""

    num_classes: int
    class_names: tuple[str, ...]
    forgotten_classes: tuple[int, ...]
    input_shape: tuple[int, int, int]
    normalization: dict[str, list[float]]
    source_sha256: str
    arch: str = ""
    dataset: str = ""
    precision: str = "fp32"
    mask_value: float = MASK_VALUE
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    retained_name: str = RETAINED_NAME
    #: the checkpoint's full preprocessing record (``edge_unlearn.data.Preprocessing.to_json()``: channels,
    #: resize, crop, interpolation, mean, std); empty in files exported before it was recorded: read it with
    #: :attr:`prep`, which falls back to the plain record of ``input_shape`` + ``normalization``
    preprocessing: dict[str, Any] = field(default_factory=dict)
    #: name of the penultimate-features output of an audit export; "" for a deployment export (logits only)
    features_name: str = ""
    quantization: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    format: str = FORMAT

    @property
    def prep(self) -> ImagePreprocessing:
        """How raw uint8 images become this model's input (torch-free, :mod:`.preprocessing`): the recorded
        preprocessing, or for an older file the plain one (no resize; ``input_shape`` + ``normalization``)."""
        from .preprocessing import ImagePreprocessing

        if self.preprocessing:
            return ImagePreprocessing.from_json(self.preprocessing)
        return ImagePreprocessing.plain(self.input_shape, self.normalization)

    @property
    def retained_classes(self) -> list[int]:
        gone = set(self.forgotten_classes)
        return [c for c in range(self.num_classes) if c not in gone]

    def to_props(self) -> dict[str, str]:
        data = asdict(self)
        data["class_names"] = list(self.class_names)
        data["forgotten_classes"] = list(self.forgotten_classes)
        data["input_shape"] = list(self.input_shape)
        return {PREFIX + k: (v if isinstance(v, str) else json.dumps(v)) for k, v in data.items()}

    @classmethod
    def from_props(cls, props: dict[str, str], where: str) -> OnnxMeta:
        ours = {k[len(PREFIX) :]: v for k, v in props.items() if k.startswith(PREFIX)}
        if ours.get("format") != FORMAT:
            raise ModelFileError(
                f"{where} has no edge-unlearn metadata ({PREFIX}format = {FORMAT}); it was not produced by "
                "`edge-unlearn export`: export your checkpoint with `edge-unlearn export CHECKPOINT -o model.onnx`"
            )
        try:
            text = {
                "source_sha256",
                "arch",
                "dataset",
                "precision",
                "input_name",
                "output_name",
                "retained_name",
                "features_name",
                "version",
                "format",
            }
            values = {k: (v if k in text else json.loads(v)) for k, v in ours.items() if k in cls.__dataclass_fields__}
            meta = cls(**values)
            meta = replace(
                meta,
                num_classes=int(meta.num_classes),
                class_names=tuple(str(n) for n in meta.class_names),
                forgotten_classes=tuple(int(c) for c in meta.forgotten_classes),
                input_shape=tuple(int(v) for v in meta.input_shape),  # type: ignore[arg-type]
                mask_value=float(meta.mask_value),
            )
        except (TypeError, ValueError, KeyError) as exc:
            raise ModelFileError(f"{where}: edge-unlearn metadata is damaged ({exc}); re-export the model") from exc
        if meta.precision not in PRECISIONS or len(meta.class_names) != meta.num_classes:
            raise ModelFileError(f"{where}: edge-unlearn metadata is inconsistent; re-export the model")
        forgotten = meta.forgotten_classes
        if (
            meta.num_classes < 1
            or any(not 0 <= c < meta.num_classes for c in forgotten)
            or len(set(forgotten)) != len(forgotten)
            or len(meta.input_shape) != 3
            or any(v < 1 for v in meta.input_shape)
            or math.prod(meta.input_shape) > (1 << 24)
            or not math.isfinite(meta.mask_value)
            or not isinstance(meta.normalization, dict)
            or not all(
                isinstance(getattr(meta, k), str)
                for k in ("input_name", "output_name", "retained_name", "features_name")
            )
        ):
            raise ModelFileError(
                f"{where}: edge-unlearn metadata is out of range (classes {meta.num_classes}, forgotten "
                f"{list(forgotten)}, input shape {list(meta.input_shape)}, mask value "
                f"{meta.mask_value}); the metadata was edited: re-export the model"
            )
        if meta.preprocessing:
            _check_preprocessing(meta, where)
        return meta


def _check_preprocessing(meta: OnnxMeta, where: str) -> None:
    """The recorded preprocessing parses and agrees with the input shape and normalisation keys."""
    if not isinstance(meta.preprocessing, dict):
        raise ModelFileError(
            f"{where}: edge-unlearn metadata is damaged (preprocessing is not a record); re-export the model"
        )
    try:
        prep = meta.prep
    except ModelFileError as exc:
        raise ModelFileError(f"{where}: {exc}") from exc
    norm = meta.normalization
    if tuple(prep.input_shape) != tuple(meta.input_shape) or [
        list(map(float, norm.get(k, []))) for k in ("mean", "std")
    ] != [list(prep.mean), list(prep.std)]:
        raise ModelFileError(
            f"{where}: the preprocessing record {prep.to_json()} disagrees with the input shape "
            f"{list(meta.input_shape)} / normalization {norm}; the metadata was edited: re-export the model"
        )


def load_onnx(path: str | Path, load_weights: bool = True):
    """Load an ONNX file with a one-line error when it is missing or not ONNX."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model {path} not found; export one with `edge-unlearn export CHECKPOINT -o {path.name}`")
    try:
        return onnx.load(str(path), load_external_data=load_weights)
    except Exception as exc:  # onnx raises DecodeError / google.protobuf errors / OSError
        raise ModelFileError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}); re-export it with `edge-unlearn export`"
        ) from exc


def read_meta(model_or_path) -> OnnxMeta:
    """The :class:`OnnxMeta` of an ONNX ModelProto or file; ModelFileError for a foreign model."""
    if isinstance(model_or_path, (str, Path)):
        model = load_onnx(model_or_path, load_weights=False)
        where = str(model_or_path)
    else:
        model, where = model_or_path, "the ONNX model"
    return OnnxMeta.from_props({p.key: p.value for p in model.metadata_props}, where)


def write_meta(model, meta: OnnxMeta) -> None:
    """Replace the edge-unlearn entries of ``model.metadata_props`` (others are kept)."""
    keep = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    for key, value in keep + sorted(meta.to_props().items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def mask_graph(
    retained: list[int], num_classes: int, retained_name: str = RETAINED_NAME, output_name: str = OUTPUT_NAME
) -> tuple[list[Any], list[Any]]:
    """(initializers, nodes) of the deployed mask: the floor on the retained logits, then Pad + Gather.

    ``retained_name`` [B, R] -> floor -> Pad(+1 column = MASK_VALUE) -> Gather(index map) -> ``output_name`` [B, C];
    the one definition the exporter and the tests share (:mod:`edge_unlearn.deploy.structure` reads it back)."""
    import numpy as np
    from onnx import helper, numpy_helper

    index = np.full(num_classes, len(retained), dtype=np.int64)  # forgotten -> the pad column
    index[list(retained)] = np.arange(len(retained), dtype=np.int64)
    initializers = [
        numpy_helper.from_array(np.array(RETAINED_FLOOR, dtype=np.float32), "edge_unlearn_retained_floor"),
        numpy_helper.from_array(np.array([0, 0, 0, 1], dtype=np.int64), "edge_unlearn_mask_pads"),
        numpy_helper.from_array(np.array(MASK_VALUE, dtype=np.float32), "edge_unlearn_mask_value"),
        numpy_helper.from_array(index, "edge_unlearn_class_index"),
    ]
    nodes = [
        helper.make_node(
            "Greater",
            [retained_name, "edge_unlearn_retained_floor"],
            ["edge_unlearn_above_floor"],
            name=MASK_NODE_PREFIX + "above_floor",
        ),
        helper.make_node(
            "Where",
            ["edge_unlearn_above_floor", retained_name, "edge_unlearn_retained_floor"],
            ["edge_unlearn_floored"],
            name=MASK_NODE_PREFIX + "floor",
        ),
        helper.make_node(
            "Pad",
            ["edge_unlearn_floored", "edge_unlearn_mask_pads", "edge_unlearn_mask_value"],
            ["edge_unlearn_padded"],
            name=MASK_NODE_PREFIX + "fill",
            mode="constant",
        ),
        helper.make_node(
            "Gather",
            ["edge_unlearn_padded", "edge_unlearn_class_index"],
            [output_name],
            name=MASK_NODE_PREFIX + "scatter",
            axis=1,
        ),
    ]
    return initializers, nodes


def mask_node_names(model) -> list[str]:
    """Names of every node downstream of the retained logits (the mask/scatter): excluded from quantization."""
    meta = read_meta(model)
    tainted = {meta.retained_name}
    names: list[str] = []
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        if tainted.intersection(node.input):
            names.append(node.name)
            tainted.update(node.output)
    if not names:
        raise ModelFileError(f"the ONNX model has no node reading {meta.retained_name!r}; re-export it")
    return names


def graph_hazards(model) -> list[str]:
    """Static hazard lines under onnxruntime's rules (zero/non-finite Q/DQ scales, FP16 overflow, non-finite
    constants); empty when clean. Kept for callers: the one checker is :func:`export.onnx_hazards.check_model`."""
    from .onnx_hazards import graph_hazards as _graph_hazards

    return _graph_hazards(model)


def topological_sort(model) -> None:
    """Reorder ``model.graph.node`` so every node comes after the producers of its inputs (in place).

    The FP16 converter appends its input/output Cast nodes at the end, which ``onnx.checker`` rejects."""
    graph = model.graph
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ModelFileError(f"the graph has a cycle or a dangling input at node {rest[0].name}")
        pending = rest
    copies = [type(n)() for n in ordered]
    for dst, src in zip(copies, ordered):
        dst.CopyFrom(src)
    del graph.node[:]
    graph.node.extend(copies)


def check_output_path(path: str | Path, inputs=(), option: str = "-o") -> None:
    """Fail before any expensive work when ``path`` cannot be written or is one of ``inputs``
    (same rules as ``atomic_output``; see :func:`edge_unlearn.fileio.check_output_path`)."""
    from edge_unlearn.fileio import check_output_path as _check

    _check(path, inputs, option)
