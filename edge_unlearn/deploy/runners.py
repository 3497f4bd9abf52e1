"""The onnxruntime runner and :func:`open_runner`, the one place engines are chosen by suffix.

A ``.safetensors`` checkpoint runs in PyTorch: the host side registers its runners here
(:func:`register_host_runtime`, from :mod:`edge_unlearn.torch_runners`); on a device without it a checkpoint is a
one-line DependencyError naming the fix.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_unlearn import __version__
from edge_unlearn.errors import DependencyError, ModelFileError, UsageError

from .onnx_meta import OnnxMeta, read_meta
from .runner import Runner

ONNX_SUFFIXES = (".onnx",)
TORCH_SUFFIXES = (".safetensors",)
TENSORRT_SUFFIXES = (".plan", ".engine")
OPENVINO_SUFFIXES = (".xml",)
LITERT_SUFFIXES = (".tflite",)
EXECUTORCH_SUFFIXES = (".pte",)
#: ONNX metadata key that names the quantization layout (e.g. "s8s8-qdq", "u8s8-qoperator", "fp16")
QUANT_LAYOUT_KEY = "edge_unlearn_quant_layout"
#: --provider choices for onnxruntime (None/"auto": CUDA when onnxruntime has it, else CPU)
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
#: --provider choices that run an .onnx file on another runtime than onnxruntime
RUNTIME_PROVIDERS = ("openvino",)


def base_environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "edge_unlearn": __version__,
        "machine": platform.machine(),
        "system": platform.system(),
        "host": platform.node(),
    }


class OnnxRuntimeRunner(Runner):
    """onnxruntime InferenceSession on the CPU, CUDA or TensorRT execution provider."""

    runtime = "onnxruntime"

    def __init__(
        self, path: str | Path, provider: str | None = None, name: str | None = None, threads: int | None = None
    ) -> None:
        super().__init__(str(path), name)
        self.provider = provider or "auto"
        self.threads = threads
        self.meta: OnnxMeta = read_meta(path)  # fails early (one line) for a foreign model
        self._session = None

    def _providers(self) -> list[str]:
        import onnxruntime as ort

        available = ort.get_available_providers()
        if self.provider == "auto":
            return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + [
                "CPUExecutionProvider"
            ]
        if self.provider not in PROVIDERS:
            raise UsageError(f"unknown provider {self.provider!r}; choose auto, {', '.join(PROVIDERS)}")
        wanted = PROVIDERS[self.provider]
        if wanted not in available:
            raise DependencyError(
                f"onnxruntime here has no {wanted} (available: {', '.join(available)}); "
                "install onnxruntime-gpu with CUDA/TensorRT, or use --provider cpu"
            )
        return [wanted] + (["CPUExecutionProvider"] if wanted != "CPUExecutionProvider" else [])

    def activate_impl(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(self.path, sess_options=options, providers=self._providers())
        except (DependencyError, UsageError):
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises Fail/NotImplemented/InvalidGraph
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            hint = (
                " (this runtime has no kernel for an op in this precision; FP16 on CPU often lacks them: "
                "validate FP16 on a GPU provider)"
                if "NOT_IMPLEMENTED" in first
                else ""
            )
            raise ModelFileError(f"onnxruntime cannot load {self.path}: {first}{hint}") from exc

    def infer_impl(self, inputs: np.ndarray) -> np.ndarray:
        assert self._session is not None
        out = self._session.run([self.meta.output_name], {self.meta.input_name: inputs})[0]
        return np.asarray(out, dtype=np.float32)

    def deactivate_impl(self) -> None:
        self._session = None

    def describe_impl(self) -> dict[str, Any]:
        import onnxruntime as ort

        used = self._session.get_providers()[0] if self._session is not None else None
        layout = (
            self._session.get_modelmeta().custom_metadata_map.get(QUANT_LAYOUT_KEY)
            if self._session is not None
            else None
        )
        return {
            "provider": used or self.provider,
            "precision": self.meta.precision,
            "quant_layout": layout,
            "device": ort.get_device(),
            "num_classes": self.meta.num_classes,
            "forgotten_classes": list(self.meta.forgotten_classes),
            "source_sha256": self.meta.source_sha256,
            "versions": {**base_environment(), "onnxruntime": ort.__version__},
        }


@dataclass(frozen=True)
class HostRuntime:
    """What the host side (torch) adds to the device package's runners, registered by
    :mod:`edge_unlearn.torch_runners`: the device package itself never imports torch or a host module."""

    open_checkpoint: Callable[[Path, str | None], Runner]
    open_fused: Callable[[Path, str], Runner]
    cuda_available: Callable[[], bool]
    #: an ExecuTorch ``.pte`` (its Python runtime needs torch: host side only)
    open_program: Callable[[Path], Runner] | None = None


_host_runtime: HostRuntime | None = None


def register_host_runtime(runtime: HostRuntime) -> None:
    """Called by :mod:`edge_unlearn.torch_runners` on import (the CLI and the Python API import it)."""
    global _host_runtime
    _host_runtime = runtime


def host_runtime() -> HostRuntime | None:
    """The registered torch runtime, or None on a device (base install) or before registration."""
    return _host_runtime


def torch_cuda_available() -> bool:
    """Whether the registered torch runtime sees a GPU (False on a base install)."""
    return _host_runtime is not None and _host_runtime.cuda_available()


def fused_head_runner(path: str | Path, device: str = "cuda") -> Runner:
    """A checkpoint with the fused masked head (the ``cuda-fused`` provider of the bench); needs the host side."""
    if _host_runtime is None:
        raise DependencyError(NEEDS_TORCH)
    return _host_runtime.open_fused(Path(path), device)


NEEDS_EXECUTORCH = (
    "a .pte program runs in ExecuTorch's Python runtime, which needs torch: validate it on the host "
    "(pip install 'edge-unlearn[executorch]'), then ship it to the device's ExecuTorch runtime unchanged"
)
NEEDS_TORCH = (
    "a .safetensors checkpoint runs in PyTorch, which this install does not have; validate the exported "
    ".onnx with onnxruntime instead, or install pip install 'edge-unlearn[host]'"
)


def open_runner(path: str | Path, provider: str | None = None) -> Runner:
    """The runner for a model file, chosen by suffix: .onnx -> onnxruntime (or OpenVINO with provider
    ``openvino``), .xml (OpenVINO IR) -> OpenVINO, .tflite -> LiteRT, .pte -> ExecuTorch
    (host: its Python runtime needs torch), .safetensors -> torch, .plan/.engine ->
    TensorRT. Nothing is compiled until the runner is entered."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ModelFileError(
            f"model {path} not found; give an .onnx from `edge-unlearn export`/`quantize`, or a .safetensors checkpoint"
        )
    if suffix in ONNX_SUFFIXES and provider == "openvino":
        from .runners_openvino import OpenVinoRunner

        return OpenVinoRunner(path)
    if suffix in ONNX_SUFFIXES:
        return OnnxRuntimeRunner(path, provider=provider)
    if suffix in OPENVINO_SUFFIXES:
        if provider not in (None, "auto", "cpu", "openvino"):
            raise UsageError(f"--provider {provider} does not apply to an OpenVINO IR; it runs on OpenVINO's CPU")
        from .runners_openvino import OpenVinoRunner

        return OpenVinoRunner(path)
    if suffix in LITERT_SUFFIXES:
        if provider not in (None, "auto", "cpu"):
            raise UsageError(f"--provider {provider} does not apply to a .tflite file; it runs on LiteRT's CPU")
        from .runners_litert import LiteRtRunner

        return LiteRtRunner(path)
    if suffix in EXECUTORCH_SUFFIXES:
        if provider not in (None, "auto", "cpu"):
            raise UsageError(f"--provider {provider} does not apply to a .pte file; it runs on ExecuTorch's CPU")
        if _host_runtime is None or _host_runtime.open_program is None:
            raise DependencyError(NEEDS_EXECUTORCH)
        return _host_runtime.open_program(path)
    if suffix in TORCH_SUFFIXES:
        if provider not in (None, "auto", "cpu", "cuda"):
            raise UsageError(f"--provider {provider} does not apply to a torch checkpoint; use cpu or cuda")
        if _host_runtime is None:
            raise DependencyError(NEEDS_TORCH)
        return _host_runtime.open_checkpoint(path, None if provider in (None, "auto") else provider)
    if suffix in TENSORRT_SUFFIXES:
        from .tensorrt import TensorRTRunner  # checks the sidecar and imports TensorRT only on entry

        return TensorRTRunner(str(path))
    raise UsageError(
        f"cannot tell the engine of {path.name} from its suffix; use one of "
        f"{', '.join(ONNX_SUFFIXES + TORCH_SUFFIXES + TENSORRT_SUFFIXES + OPENVINO_SUFFIXES + LITERT_SUFFIXES)}, "
        f"{', '.join(EXECUTORCH_SUFFIXES)}"
    )
