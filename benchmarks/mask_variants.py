"""The graph designs the compact mask of ``edge_unlearn.export.onnx_export`` was measured against
(docs/design.md §4). Research only: the library exports :data:`~edge_unlearn.export.onnx_export.COMPACT`;
these plug into ``export_onnx(..., design=...)`` for ``python -m benchmarks.quantized_forgetting --variants`` and
for the tests that show the hazards a naive graph carries. A module, not a benchmark: import it as
``benchmarks.mask_variants``.

- ``where``: the full head as trained (raw logits [B, C]), then a float ``Where(class_mask, logits, -1e4)``;
- ``naive``: the full head with the forgotten rows zeroed and their bias set to -1e4 (no mask node: the mask
  value sets the INT8 range of the logits);
- ``naive_1e9``: the same with -1e9 (overflows FP16).
"""

from __future__ import annotations

import numpy as np

from edge_unlearn.deploy.onnx_meta import MASK_NODE_PREFIX, MASK_VALUE, OUTPUT_NAME, RETAINED_NAME
from edge_unlearn.export.onnx_export import (
    COMPACT,
    MaskDesign,
    check_single_io,
    deploy_module_with_rows,
    rename_io,
    retained_classes,
    set_output,
)


class WhereMask(MaskDesign):
    """Full head, then ``Where(class_mask, logits, MASK_VALUE)`` (a float node after the head)."""

    name = "where"

    def deploy_module(self, model):
        return deploy_module_with_rows(model, list(range(model.num_classes))), retained_classes(model)

    def append_mask(self, graph_model, retained: list[int], num_classes: int) -> None:
        from onnx import helper, numpy_helper

        graph = graph_model.graph
        check_single_io(graph)
        rename_io(graph, RETAINED_NAME)
        keep = np.zeros(num_classes, dtype=bool)
        keep[retained] = True
        graph.initializer.extend(
            [
                numpy_helper.from_array(keep, "edge_unlearn_class_mask"),
                numpy_helper.from_array(np.array(MASK_VALUE, dtype=np.float32), "edge_unlearn_mask_value"),
            ]
        )
        graph.node.append(
            helper.make_node(
                "Where",
                ["edge_unlearn_class_mask", RETAINED_NAME, "edge_unlearn_mask_value"],
                [OUTPUT_NAME],
                name=MASK_NODE_PREFIX + "where",
            )
        )
        set_output(graph, num_classes)


class NaiveMask(MaskDesign):
    """Forgotten rows zeroed, their bias set to ``fill_value``; no mask node (the head's output is the output)."""

    retained_name = OUTPUT_NAME

    def __init__(self, name: str, fill_value: float) -> None:
        self.name = name
        self.fill_value = fill_value

    def deploy_module(self, model):
        import torch

        module = deploy_module_with_rows(model, list(range(model.num_classes)))
        forgotten = list(model.forgotten_classes)
        with torch.no_grad():
            module.head.weight[forgotten] = 0.0
            module.head.bias[forgotten] = self.fill_value
        return module, retained_classes(model)

    def append_mask(self, graph_model, retained: list[int], num_classes: int) -> None:
        check_single_io(graph_model.graph)
        rename_io(graph_model.graph, OUTPUT_NAME)


#: every design by name, ours first
DESIGNS: dict[str, MaskDesign] = {
    "compact": COMPACT,
    "where": WhereMask(),
    "naive": NaiveMask("naive", -1e4),
    "naive_1e9": NaiveMask("naive_1e9", -1e9),
}
