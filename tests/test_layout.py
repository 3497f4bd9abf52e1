"""The package layout: one import root (``edge_unlearn``), no bare ``export``/``kernels``, the ops registered once.

Each check runs in a fresh interpreter started with ``-I`` (isolated: neither the current folder nor PYTHON*
variables on sys.path) from a folder outside the checkout, so only what is *installed* is importable.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_unlearn.cli.common import EdgeUnlearnGroup

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (
    "edge_unlearn",
    "edge_unlearn.core",
    "edge_unlearn.data",
    "edge_unlearn.models",
    "edge_unlearn.unlearn",
    "edge_unlearn.cli",
    "edge_unlearn.deploy",
    "edge_unlearn.deploy.bench",
    "edge_unlearn.deploy.rundir",
    "edge_unlearn.deploy.tensorrt",
    "edge_unlearn.export",
    "edge_unlearn.kernels",
)


def _run_isolated(code: str, cwd: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-I", "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_bare_export_and_kernels_are_not_importable(tmp_path):
    out = _run_isolated(
        f"""
        import importlib.util, json, sys
        root = {str(ROOT)!r}
        result = {{"path_has_root": any(p.rstrip("/") == root for p in sys.path)}}
        for name in ("export", "kernels"):
            spec = importlib.util.find_spec(name)
            # another distribution may own the name (Hugging Face's `kernels`); it must never be our folder
            result[name] = None if spec is None else str(spec.origin)
        import edge_unlearn.export, edge_unlearn.kernels
        result["export_file"] = edge_unlearn.export.__file__
        result["kernels_file"] = edge_unlearn.kernels.__file__
        print(json.dumps(result))
    """,
        tmp_path,
    )
    assert out["path_has_root"] is False
    for name in ("export", "kernels"):
        assert out[name] is None or not out[name].startswith(str(ROOT)), f"`import {name}` finds {out[name]}"
    assert out["export_file"] == str(ROOT / "export" / "__init__.py")
    assert out["kernels_file"] == str(ROOT / "kernels" / "__init__.py")


def test_every_module_and_the_cli_load_under_edge_unlearn_only(tmp_path):
    """Import every module of every package, run the CLI in-process; no bare name appears in sys.modules and the
    torch.library ops come from one module object (a second import under another name would register them twice
    and raise)."""
    out = _run_isolated(
        f"""
        import importlib, json, pkgutil, sys
        packages = {list(PACKAGES)!r}
        imported, missing_optional = [], {{}}
        for package in packages:
            pkg = importlib.import_module(package)
            for info in pkgutil.iter_modules(pkg.__path__, package + "."):
                try:
                    importlib.import_module(info.name)
                    imported.append(info.name)
                except ModuleNotFoundError as exc:  # an optional runtime absent here (tensorrt, pycuda, triton)
                    missing_optional[info.name] = exc.name
        from edge_unlearn.cli import main
        codes = []
        for args in (["--help"], ["models"], ["methods", "--json"], ["verify", "/nonexistent-run-dir"]):
            try:
                main(args, standalone_mode=False)
                codes.append(0)
            except SystemExit as exc:
                codes.append(exc.code)
            except Exception as exc:
                codes.append(type(exc).__name__)
        import torch
        op_modules = [m for m, mod in sys.modules.items() if getattr(mod, "__file__", None)
                      and mod.__file__.endswith("/kernels/op.py")]
        ops = [name for name in ("masked_head_logits", "masked_head_probs", "masked_head_argmax", "masked_head_topk")
               if hasattr(torch.ops.edge_unlearn, name)]
        bare = sorted(m for m in sys.modules if m.split(".")[0] in ("export", "kernels"))
        print(json.dumps({{"imported": imported, "missing_optional": missing_optional, "codes": codes,
                          "bare": bare, "op_modules": op_modules, "ops": ops}}))
    """,
        tmp_path,
    )
    assert out["bare"] == []
    assert set(out["missing_optional"].values()) <= {"tensorrt", "pycuda", "triton"}, out["missing_optional"]
    for name in (
        "edge_unlearn.cli",
        "edge_unlearn.core.formats",
        "edge_unlearn.deploy.validate",
        "edge_unlearn.deploy.bench",
        "edge_unlearn.kernels.op",
    ):
        assert name in out["imported"]
    assert out["op_modules"] == ["edge_unlearn.kernels.op"]
    assert out["ops"] == ["masked_head_logits", "masked_head_probs", "masked_head_argmax", "masked_head_topk"]
    assert out["codes"][:3] == [0, 0, 0]


@pytest.mark.parametrize(
    "module, extra",
    [
        ("matplotlib", "report"),
        ("torch", "host"),
        ("tqdm", "host"),
        ("sklearn", "host"),
        ("tensorrt", "tensorrt"),
        ("pycuda", "tensorrt"),
    ],
)
def test_a_missing_extra_is_named_in_one_line(module, extra, monkeypatch):
    """The group's one error handler turns a missing optional module into one line naming the extra, exit 2."""
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ModuleNotFoundError(name=module)
    group = EdgeUnlearnGroup("edge-unlearn")

    @group.command("needs")
    def needs() -> None:
        importlib.import_module(module)

    result = CliRunner().invoke(group, ["needs"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and f"pip install 'edge-unlearn[{extra}]'" in lines[0]


def test_an_unrelated_missing_module_is_a_bug_not_a_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "no_such_dependency_xyz", None)
    group = EdgeUnlearnGroup("edge-unlearn")

    @group.command("needs")
    def needs() -> None:
        importlib.import_module("no_such_dependency_xyz")

    result = CliRunner().invoke(group, ["needs"])
    assert isinstance(result.exception, ModuleNotFoundError) and "pip install" not in result.output


def _imported_names(path: Path, package: str) -> list[str]:
    """Every module a file imports (relative imports resolved against ``package``), lazy ones included."""
    import ast

    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return names


@pytest.mark.parametrize("folder", ["edge_unlearn/core", "edge_unlearn/deploy"])
def test_core_and_device_package_never_name_export_or_kernels(folder):
    """import-linter reads edge_unlearn/ only; export/ and kernels/ are mapped from outside it, so this check
    stands in for the contracts' ``edge_unlearn.export`` / ``edge_unlearn.kernels`` entries."""
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        package = ".".join(rel.parts[:-1]) if path.name != "__init__.py" else ".".join(rel.parts[:-1])
        for name in _imported_names(path, package):
            if name.startswith(("edge_unlearn.export", "edge_unlearn.kernels", "torch")):
                bad.append(f"{rel}: {name}")
    assert not bad, bad


def test_the_layout_check_sees_a_forbidden_import(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from ..export.onnx_export import export_onnx\n    import torch\n")
    names = _imported_names(path, "edge_unlearn.deploy")
    assert "edge_unlearn.export.onnx_export" in names and "torch" in names
