"""What this machine has: TensorRT and pycuda (imported lazily), the GPU, the Jetson power mode and DLA cores.

Every ``*_status`` function never raises (``doctor`` calls them); the ``import_*`` functions raise
:class:`DependencyError` with the install line. ``import edge_unlearn.deploy.tensorrt.probe`` imports neither
library.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from edge_unlearn.errors import DependencyError

from .plan import INSTALL_TENSORRT, api_generation, numpy_tensorrt_problem

INSTALL_PYCUDA = (
    "install pycuda>=2025.1.2 on the device (numpy 2 needs 2024.1.1, CUDA 13 needs 2025.1.2): "
    "`pip install 'pycuda>=2025.1.2'` (it compiles against CUDA: put nvcc on PATH and set "
    "CUDA_HOME=/usr/local/cuda); see docs/jetson.md"
)
#: where the kernel lists the Orin DLA engines (platform devices ``<addr>.nvdla0`` / ``.nvdla1``)
DLA_SYSFS = Path("/sys/bus/platform/devices")


def import_tensorrt() -> Any:
    """``import tensorrt`` or :class:`DependencyError` with the install line."""
    import numpy

    try:
        import tensorrt  # noqa: PLC0415 - lazily, by design
    except ImportError as exc:  # also OSError-derived failures of its shared libraries surface as ImportError
        numpy_problem = numpy_tensorrt_problem(numpy.__version__, None, str(exc))
        if numpy_problem:
            raise DependencyError(numpy_problem) from exc
        raise DependencyError(f"TensorRT is not available ({str(exc).splitlines()[0]}); {INSTALL_TENSORRT}") from exc
    if not (hasattr(tensorrt, "Builder") and hasattr(tensorrt, "Runtime") and hasattr(tensorrt, "__version__")):
        where = getattr(tensorrt, "__file__", None) or list(getattr(tensorrt, "__path__", []))
        raise DependencyError(
            f"the module named tensorrt at {where} is not NVIDIA TensorRT (a folder named "
            f"'tensorrt' on sys.path shadows it?); {INSTALL_TENSORRT}"
        )
    return tensorrt


def import_pycuda() -> Any:
    """``import pycuda.driver`` (initialised) or :class:`DependencyError` with the install line.

    ``cuda.init()`` and ``Device.count()`` per pycuda's doc/driver.rst; failures raise ``pycuda.driver.Error``."""
    try:
        import pycuda.driver as cuda  # noqa: PLC0415
    except ImportError as exc:
        raise DependencyError(f"pycuda is not available ({str(exc).splitlines()[0]}); {INSTALL_PYCUDA}") from exc
    try:
        cuda.init()
        if cuda.Device.count() < 1:
            raise DependencyError("pycuda sees no CUDA device; TensorRT engines need an NVIDIA GPU")
    except cuda.Error as exc:
        raise DependencyError(
            f"CUDA could not start ({exc}); check the NVIDIA driver with `nvidia-smi` (on a Jetson: `sudo tegrastats`)"
        ) from exc
    return cuda


def tensorrt_status() -> dict[str, Any]:
    """For ``doctor``: is TensorRT importable, which version, which API generation. Never raises."""
    status: dict[str, Any] = {"available": False, "version": None}
    try:
        trt = import_tensorrt()
    except DependencyError as exc:
        status["error"] = str(exc)
        lean = [m for m in ("tensorrt_lean", "tensorrt_dispatch") if importlib.util.find_spec(m) is not None]
        if lean:
            status["lean_runtime_only"] = lean
        return status
    version = str(getattr(trt, "__version__", "unknown"))
    status.update(available=True, version=version)
    import numpy

    numpy_problem = numpy_tensorrt_problem(numpy.__version__, version)
    if numpy_problem:
        status["warning"] = numpy_problem
    try:
        gen = api_generation(version)
        status["api"] = (
            "TensorRT 11: strongly typed, precision from the ONNX"
            if gen >= 11
            else "TensorRT 10: FP16 by builder flag, INT8 from Q/DQ (implicit calibration deprecated)"
        )
    except DependencyError as exc:
        status["available"] = False
        status["error"] = str(exc)
    return status


def pycuda_status() -> dict[str, Any]:
    """For ``doctor``: pycuda version and the GPU it sees. Never raises."""
    status: dict[str, Any] = {"available": False, "version": None}
    try:
        import pycuda  # noqa: PLC0415
    except ImportError as exc:
        status["error"] = f"pycuda is not available ({str(exc).splitlines()[0]}); {INSTALL_PYCUDA}"
        return status
    status["version"] = getattr(pycuda, "VERSION_TEXT", None)
    try:
        status["gpu"] = _gpu_info_pycuda()
        status["available"] = True
    except DependencyError as exc:
        status["error"] = str(exc)
    return status


def _gpu_info_pycuda(device: int = 0) -> dict[str, Any]:
    cuda = import_pycuda()
    try:
        dev = cuda.Device(device)
        major, minor = dev.compute_capability()
        return {
            "name": str(dev.name()),
            "compute_capability": f"{major}.{minor}",
            "total_memory_mib": int(dev.total_memory()) >> 20,
            "sm_count": int(dev.get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT)),
            "driver_cuda_version": _cuda_version_text(cuda.get_driver_version()),
        }
    except cuda.Error as exc:
        raise DependencyError(f"cannot query CUDA device {device} ({exc}); check `nvidia-smi`") from exc


def _cuda_version_text(value: int) -> str:
    return f"{value // 1000}.{(value % 1000) // 10}"


def gpu_info(device: int = 0) -> dict[str, Any]:
    """Name, compute capability and memory of CUDA device ``device``, through pycuda (the tensorrt extra)."""
    return _gpu_info_pycuda(device)


# ------------------------------------------------------------------------------------ Jetson


def parse_nvpmodel(text: str) -> dict[str, Any] | None:
    """``nvpmodel -q`` output ('NV Power Mode: MAXN' then the mode id on the next line; 'NVPM WARN' lines may
    precede it) -> {'name': 'MAXN', 'id': 0}; None if there is no power-mode line."""
    match = re.search(r"NV Power Mode:\s*(\S[^\r\n]*)", text)
    if not match:
        return None
    after = text[match.end() :]
    ident = re.match(r"\s*[\r\n]+\s*(\d+)\s*(?:$|[\r\n])", after)
    return {"name": match.group(1).strip(), "id": int(ident.group(1)) if ident else None}


def jetson_power_mode(timeout_s: float = 5.0) -> dict[str, Any] | None:
    """The Jetson power mode from ``nvpmodel -q`` (None off a Jetson or when nvpmodel is absent or fails).

    Latency on a Jetson depends on it (MAXN vs 15 W differ several-fold), so bench results and engine sidecars
    record it. Never raises."""
    exe = shutil.which("nvpmodel")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, "-q"], capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_nvpmodel(done.stdout + "\n" + done.stderr)


def count_dla_sysfs(root: Path = DLA_SYSFS) -> int | None:
    """DLA engines the kernel lists (``*.nvdla0``, ``*.nvdla1``); None when the folder is absent."""
    try:
        if not root.is_dir():
            return None
        return sum(1 for entry in root.iterdir() if re.search(r"\.nvdla\d+$", entry.name))
    except OSError:
        return None


def dla_cores() -> dict[str, Any]:
    """DLA cores: TensorRT's ``Builder.num_DLA_cores`` ("the number of DLA engines available to this builder",
    pyCoreDoc.h BuilderDoc) when TensorRT is importable, else the kernel's list. Never raises."""
    try:
        trt = import_tensorrt()
        from .logger import make_logger

        builder = trt.Builder(make_logger(trt))
        return {"cores": int(builder.num_DLA_cores), "source": "tensorrt"}
    except Exception:  # noqa: BLE001 - no TensorRT, no GPU: fall back to sysfs
        cores = count_dla_sysfs()
        return {"cores": cores, "source": "sysfs" if cores is not None else None}


def current_environment(device: int = 0) -> dict[str, Any]:
    """TensorRT version, GPU name, compute capability, Jetson model/release and power mode of this machine."""
    from ..doctor import jetson_info

    trt = import_tensorrt()
    gpu = gpu_info(device)
    jetson = jetson_info()
    env: dict[str, Any] = {
        "tensorrt_version": str(trt.__version__),
        "gpu_name": gpu["name"],
        "compute_capability": gpu["compute_capability"],
        "gpu_sm_count": gpu["sm_count"],
        "gpu_memory_mib": gpu["total_memory_mib"],
        "jetson": jetson,
    }
    if jetson is not None:
        env["power_mode"] = jetson_power_mode()
    return env
