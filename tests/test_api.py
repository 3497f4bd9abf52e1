"""The Python API (edge_unlearn.api): docs/python-api.md's example runs as written and forgets, the API loads no
torch until a host function runs, and forget() on a model in memory or a checkpoint behaves as documented."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edge_unlearn import api
from edge_unlearn.errors import UsageError
from tests.conftest import forget_set, one_thread

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "python-api.md"


def _example() -> str:
    blocks = re.findall(r"^```python\n(.*?)^```", GUIDE.read_text(), flags=re.S | re.M)
    assert len(blocks) == 1, f"{GUIDE.name} should hold exactly one ```python block, found {len(blocks)}"
    return blocks[0]


def test_the_guide_example_forgets_exports_and_passes_the_gate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with one_thread():
        exec(compile(_example(), str(GUIDE), "exec"), namespace)
    forgotten, figures, reports = namespace["forgotten"], namespace["figures"], namespace["reports"]
    assert forgotten["forget_acc"] == 0.0 and forgotten["forget_acc_unmasked"] <= 0.02
    assert forgotten["forget_classes"] == [3]
    assert figures["forget_acc"] == 0.0 and figures["retain_drop"] <= 0.01
    assert namespace["trained"]["test_accuracy"] > 0.9
    assert set(reports) == {"model.onnx", "model.int8.onnx"}
    for path, report in reports.items():
        assert report.passed, f"{path}: {[c.name for c in report.failed]}"
        assert report.figure("forget_acc") == 0.0
    assert reports["model.int8.onnx"].environment["precision"] == "int8"
    assert namespace["quantized"].meta.precision == "int8"
    assert (tmp_path / "forgotten.safetensors").is_file() and (tmp_path / "eval.npz").is_file()


def test_importing_the_api_loads_no_torch():
    code = (
        "import sys, edge_unlearn, edge_unlearn.api; "
        "assert edge_unlearn.validate is edge_unlearn.api.validate; print('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"


def test_top_level_serves_the_api_but_export_stays_the_subpackage():
    import edge_unlearn
    import edge_unlearn.export

    assert edge_unlearn.forget is api.forget and edge_unlearn.bundle is api.bundle
    assert edge_unlearn.export.__name__ == "edge_unlearn.export"
    with pytest.raises(AttributeError):
        edge_unlearn.no_such_function  # noqa: B018


def test_forget_a_model_in_memory_returns_an_unlearned_copy(digits, digits_checkpoint):
    from edge_unlearn.checkpoint import load_checkpoint

    model = load_checkpoint(digits_checkpoint).model
    one = forget_set(digits, [3], 8)
    with one_thread():
        result = api.forget(model, [3], samples=one.inputs)
        pair = forget_set(digits, [3, 5], 8)
        both = api.forget(model, ["3", 5], samples=(pair.inputs, pair.labels))
    assert result.model.forgotten_classes == [3] and result.samples_used == 8
    assert both.model.forgotten_classes == [3, 5]
    assert model.forgotten_classes == []  # the input model is left untouched
    with torch.no_grad():
        assert not result.model.predict(one.inputs).eq(3).any()


def test_forget_says_what_it_needs(digits, digits_checkpoint, tmp_path):
    from edge_unlearn.checkpoint import load_checkpoint

    with pytest.raises(UsageError, match="out="):
        api.forget(digits_checkpoint, [3])
    with pytest.raises(UsageError, match="samples=N"):
        api.forget(digits_checkpoint, [3], samples=torch.zeros(1, 1, 8, 8), out=tmp_path / "f.safetensors")
    model = load_checkpoint(digits_checkpoint).model
    with pytest.raises(UsageError, match="samples="):
        api.forget(model, [3], samples=32)
    with pytest.raises(UsageError, match="indices"):
        api.forget(model, ["three"], samples=torch.zeros(1, 1, 8, 8))
    pair = forget_set(digits, [3, 5], 2)
    with pytest.raises(UsageError, match="labels"):
        api.forget(model, [3, 5], samples=pair.inputs)
