"""``edge-unlearn doctor``: what this machine offers for edge-unlearn, and what each missing piece disables.

Every probe is guarded: a missing or broken package is reported, never raised. torch is asked in a child
process and triton imported only inside ``try`` (the device package never imports torch); TensorRT and pycuda are probed through
:mod:`edge_unlearn.deploy.tensorrt.probe`. On a Jetson it also reports the DLA cores and the power mode
(``nvpmodel -q``), both of which change what an engine can do and how fast it runs.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

NV_TEGRA_RELEASE = Path("/etc/nv_tegra_release")
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")

#: L4T (Jetson Linux) major release -> JetPack generation and the TensorRT it ships
_L4T_TO_JETPACK = {
    32: ("4.x", "TensorRT 7/8 (too old for edge-unlearn)"),
    34: ("5.0 (developer preview)", "TensorRT 8.4 (too old for edge-unlearn)"),
    35: ("5.x", "TensorRT 8.5 (too old for edge-unlearn)"),
    36: ("6.x", "TensorRT 10.3 from JetPack 6.1 (L4T 36.4) on; JetPack 6.0 (L4T 36.3) ships TensorRT 8.6"),
    38: (
        "7.x",
        "TensorRT 10.x on the first JetPack 7 releases (Jetson Thor); TensorRT 11.4.1 supports JetPack 7.2.2, "
        "on AGX Orin too",
    ),
}


def parse_nv_tegra_release(text: str) -> dict[str, Any] | None:
    """'# R36 (release), REVISION: 4.3, GCID: ...' -> {'l4t': '36.4.3', 'jetpack': '6.x', ...}; None if unparsable."""
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    if not match:
        return None
    major = int(match.group(1))
    revision = match.group(2).strip(".")
    jetpack, trt = _L4T_TO_JETPACK.get(major, ("unknown", "unknown"))
    board = re.search(r"BOARD:\s*([^,\s]+)", text)
    return {
        "l4t": f"{major}.{revision}",
        "jetpack": jetpack,
        "tensorrt_shipped": trt,
        "board": board.group(1) if board else None,
    }


def jetson_info(release_file: Path = NV_TEGRA_RELEASE, model_file: Path = DEVICE_TREE_MODEL) -> dict[str, Any] | None:
    """The Jetson model and L4T/JetPack release, or None when this is not a Jetson."""
    release = None
    model = None
    try:
        if release_file.is_file():
            release = parse_nv_tegra_release(release_file.read_text(errors="replace"))
    except OSError:
        release = None
    try:
        if model_file.is_file():
            model = model_file.read_bytes().rstrip(b"\x00").decode(errors="replace").strip()
    except OSError:
        model = None
    if release is None and not (model and "jetson" in model.lower()):
        return None
    return {"model": model, **(release or {"l4t": None, "jetpack": None})}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


#: run in a child process, so the device package never imports torch itself
_TORCH_PROBE = """
import json, torch
info = {"available": True, "version": torch.__version__, "cuda_build": getattr(torch.version, "cuda", None),
        "cuda_available": False}
try:
    info["cuda_available"] = bool(torch.cuda.is_available())
    if info["cuda_available"]:
        major, minor = torch.cuda.get_device_capability(0)
        info["gpu"] = {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
except Exception as exc:
    info["cuda_error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
print(json.dumps(info))
"""


def _probe_torch(timeout_s: float = 120.0) -> dict[str, Any]:
    """torch and CUDA as the host side sees them, asked in a child process (absent: not installed)."""
    if importlib.util.find_spec("torch") is None:
        return {"available": False, "error": "ModuleNotFoundError: No module named 'torch'"}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _TORCH_PROBE], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"available": False, "error": _first_line(exc)}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or ["torch failed to import"])[-1]
        return {"available": False, "error": last}
    return json.loads(lines[-1])


def _probe_module(name: str) -> dict[str, Any]:
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001
        return {"available": False, "error": _first_line(exc)}
    return {"available": True, "version": getattr(module, "__version__", None)}


def _probe_onnxruntime() -> dict[str, Any]:
    info = _probe_module("onnxruntime")
    if info["available"]:
        import onnxruntime  # noqa: PLC0415

        try:
            info["providers"] = list(onnxruntime.get_available_providers())
        except Exception as exc:  # noqa: BLE001
            info["providers_error"] = _first_line(exc)
    return info


#: other edge runtimes: report key -> (import name, distribution, what it enables); found without importing them
#: (ExecuTorch's import loads torch)
RUNTIMES = {
    "openvino": ("openvino", "openvino", "validate/bench .xml IRs and .onnx with --provider openvino"),
    "litert": ("ai_edge_litert", "ai-edge-litert", "the LiteRT interpreter for .tflite"),
    "executorch": ("executorch", "executorch", "the ExecuTorch runtime for .pte (host: needs torch)"),
}


def _probe_runtime(extra: str, module: str, distribution: str) -> dict[str, Any]:
    from importlib import metadata, util

    if util.find_spec(module) is None:
        return {"available": False, "error": f"pip install 'edge-unlearn[{extra}]'"}
    try:
        return {"available": True, "version": metadata.version(distribution)}
    except metadata.PackageNotFoundError:
        return {"available": True, "version": None}


def probe() -> dict[str, Any]:
    """Everything ``doctor`` reports, as a JSON-ready dict."""
    from .tensorrt import probe as trt_mod

    report: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": f"{platform.system()} {platform.machine()}",
        "numpy": _probe_module("numpy"),
        "torch": _probe_torch(),
        "triton": _probe_module("triton"),
        "onnx": _probe_module("onnx"),
        "onnxruntime": _probe_onnxruntime(),
        "tensorrt": trt_mod.tensorrt_status(),
        "pycuda": trt_mod.pycuda_status(),
        "jetson": jetson_info(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "runtimes": {key: _probe_runtime(key, module, dist) for key, (module, dist, _) in RUNTIMES.items()},
    }
    if report["jetson"] is not None:
        report["jetson"] = {**report["jetson"], "power_mode": trt_mod.jetson_power_mode(), "dla": trt_mod.dla_cores()}
    gpu = report["pycuda"].get("gpu") or (report["torch"].get("gpu") if report["torch"].get("available") else None)
    report["gpu"] = gpu
    report["missing"] = missing_features(report)
    return report


def missing_features(report: dict[str, Any]) -> list[dict[str, str]]:
    """What each absent piece disables, and how to get it."""
    out: list[dict[str, str]] = []

    def add(piece: str, disables: str, fix: str) -> None:
        out.append({"missing": piece, "disables": disables, "fix": fix})

    torch = report.get("torch", {})
    if not torch.get("available"):
        add(
            "torch",
            "training, unlearning, `export` to ONNX, the torch runner",
            "pip install edge-unlearn (host side); the device needs only numpy + onnxruntime or TensorRT",
        )
    elif not torch.get("cuda_available"):
        add(
            "CUDA for torch",
            "GPU training and the Triton fused-head kernel (CPU paths still work)",
            "install a CUDA build of torch on a machine with an NVIDIA GPU",
        )
    if not report.get("triton", {}).get("available"):
        add(
            "triton",
            "the fused masked-head kernel (the pure-PyTorch reference is used instead)",
            "pip install triton (Linux + NVIDIA GPU)",
        )
    ort = report.get("onnxruntime", {})
    if not ort.get("available"):
        add(
            "onnxruntime",
            "INT8/FP16 quantization and validating/benchmarking .onnx files",
            "pip install onnxruntime (or onnxruntime-gpu)",
        )
    elif "CUDAExecutionProvider" not in ort.get("providers", []):
        add(
            "onnxruntime CUDA provider",
            "GPU runs of .onnx files (CPU runs still work)",
            "pip install onnxruntime-gpu on a machine with CUDA",
        )
    if not report.get("tensorrt", {}).get("available"):
        add(
            "tensorrt",
            "`build-engine`, and `validate`/`bench` of .plan/.engine files",
            "pip install edge-unlearn[tensorrt] on a server, or JetPack's TensorRT on a Jetson (docs/jetson.md)",
        )
    if not report.get("pycuda", {}).get("available"):
        add(
            "pycuda (with a CUDA GPU)",
            "running TensorRT engines (`validate`/`bench` of .plan/.engine)",
            "pip install 'pycuda>=2025.1.2' on the device (numpy 2 and CUDA 13 need it; it compiles against the CUDA "
            "toolkit headers; docs/jetson.md)",
        )
    return out


def _status(entry: dict[str, Any] | None, extra: str = "") -> str:
    if not entry:
        return "absent"
    if entry.get("available"):
        version = entry.get("version") or "present"
        return f"{version}{extra}"
    return f"absent ({entry.get('error', 'not installed')})"


def render(report: dict[str, Any]) -> str:
    """Human-readable ``doctor`` output."""
    torch = report.get("torch", {})
    torch_extra = ""
    if torch.get("available"):
        torch_extra = f", CUDA {'yes' if torch.get('cuda_available') else 'no'}"
        if torch.get("cuda_build"):
            torch_extra += f" (built for {torch['cuda_build']})"
    ort = report.get("onnxruntime", {})
    ort_extra = f", providers: {', '.join(ort.get('providers', []))}" if ort.get("available") else ""
    trt = report.get("tensorrt", {})
    trt_extra = f" -- {trt['api']}" if trt.get("api") else ""
    gpu = report.get("gpu")
    jetson = report.get("jetson")
    lines = [
        f"python       {report.get('python')} on {report.get('platform')}",
        f"numpy        {_status(report.get('numpy'))}",
        f"torch        {_status(torch, torch_extra)}",
        f"triton       {_status(report.get('triton'))}",
        f"onnx         {_status(report.get('onnx'))}",
        f"onnxruntime  {_status(ort, ort_extra)}",
        f"tensorrt     {_status(trt, trt_extra)}",
        f"pycuda       {_status(report.get('pycuda'))}",
        "runtimes     "
        + "; ".join(
            f"{key} {_status(report.get('runtimes', {}).get(key))}"
            + (f": {RUNTIMES[key][2]}" if report.get("runtimes", {}).get(key, {}).get("available") else "")
            for key in RUNTIMES
        ),
        "gpu          " + (f"{gpu['name']} (compute capability {gpu['compute_capability']})" if gpu else "none found"),
        "jetson       "
        + (
            f"{jetson.get('model') or 'unknown model'}, L4T {jetson.get('l4t') or '?'}, "
            f"JetPack {jetson.get('jetpack') or '?'}"
            if jetson
            else "no (not a Jetson)"
        ),
    ]
    if jetson:
        power = jetson.get("power_mode")
        dla = jetson.get("dla") or {}
        cores = dla.get("cores")
        lines.append(
            "power mode   "
            + (f"{power['name']} (nvpmodel mode {power['id']})" if power else "unknown (`nvpmodel -q` not available)")
        )
        lines.append(
            "DLA cores    "
            + (f"{cores} (from {dla.get('source')})" if cores is not None else "unknown")
            + ("; DLA is on AGX Orin and Orin NX only" if cores == 0 else "")
        )
    if trt.get("lean_runtime_only"):
        lines.append(
            f"             (only {', '.join(trt['lean_runtime_only'])} found: it runs version-compatible "
            "engines but cannot build)"
        )
    missing = report.get("missing", [])
    if missing:
        lines.append("")
        lines.append("missing, and what it disables:")
        for item in missing:
            lines.append(f"  - {item['missing']}: disables {item['disables']}; fix: {item['fix']}")
    else:
        lines.append("")
        lines.append("everything edge-unlearn can use is present")
    return "\n".join(lines)
