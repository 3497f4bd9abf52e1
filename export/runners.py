"""Concrete runners (onnxruntime; torch eager and torch with the fused masked head) and :func:`open_runner`, the
one place engines are chosen by suffix.

Imports no torch at module level: the torch runners import it inside their methods, so this module loads on a
device with only numpy + onnxruntime (a checkpoint then fails on entry with a DependencyError naming the fix).
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np

from edge_unlearn import __version__
from edge_unlearn.errors import DependencyError, ModelFileError, UsageError

from .onnx_meta import MASK_VALUE, OnnxMeta, read_meta
from .runner import Runner

ONNX_SUFFIXES = (".onnx",)
TORCH_SUFFIXES = (".safetensors",)
TENSORRT_SUFFIXES = (".plan", ".engine")
#: ONNX metadata key that names the quantization layout (e.g. "s8s8-qdq", "u8s8-qoperator", "fp16")
QUANT_LAYOUT_KEY = "edge_unlearn_quant_layout"
#: --provider choices for onnxruntime (None/"auto": CUDA when onnxruntime has it, else CPU)
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def _base_env() -> dict[str, Any]:
    return {"python": platform.python_version(), "numpy": np.__version__, "edge_unlearn": __version__,
            "machine": platform.machine(), "system": platform.system(), "host": platform.node()}


class OnnxRuntimeRunner(Runner):
    """onnxruntime InferenceSession on the CPU, CUDA or TensorRT execution provider."""

    runtime = "onnxruntime"

    def __init__(self, path: str | Path, provider: str | None = None, name: str | None = None,
                 threads: int | None = None) -> None:
        super().__init__(str(path), name)
        self.provider = provider or "auto"
        self.threads = threads
        self.meta: OnnxMeta = read_meta(path)  # fails early (one line) for a foreign model
        self._session = None

    def _providers(self) -> list[str]:
        import onnxruntime as ort

        available = ort.get_available_providers()
        if self.provider == "auto":
            return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]
        if self.provider not in PROVIDERS:
            raise UsageError(f"unknown provider {self.provider!r}; choose auto, {', '.join(PROVIDERS)}")
        wanted = PROVIDERS[self.provider]
        if wanted not in available:
            raise DependencyError(f"onnxruntime here has no {wanted} (available: {', '.join(available)}); "
                                  "install onnxruntime-gpu with CUDA/TensorRT, or use --provider cpu")
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
            hint = (" (this runtime has no kernel for an op in this precision; FP16 on CPU often lacks them: "
                    "validate FP16 on a GPU provider)" if "NOT_IMPLEMENTED" in first else "")
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
        layout = (self._session.get_modelmeta().custom_metadata_map.get(QUANT_LAYOUT_KEY)
                  if self._session is not None else None)
        return {"provider": used or self.provider, "precision": self.meta.precision, "quant_layout": layout,
                "device": ort.get_device(), "num_classes": self.meta.num_classes,
                "forgotten_classes": list(self.meta.forgotten_classes), "source_sha256": self.meta.source_sha256,
                "versions": {**_base_env(), "onnxruntime": ort.__version__}}


class TorchRunner(Runner):
    """A checkpoint run in PyTorch (the reference): raw head logits, forgotten classes = MASK_VALUE."""

    runtime = "torch"

    def __init__(self, path: str | Path, device: str | None = None, name: str | None = None,
                 threads: int | None = None) -> None:
        super().__init__(str(path), name)
        self.device = device or "cpu"
        #: torch intra-op threads while active (None: torch's own); restored on exit
        self.threads = threads
        self._previous_threads: int | None = None
        self._model = None
        self.meta: dict[str, Any] = {}

    def activate_impl(self) -> None:
        try:
            from edge_unlearn.checkpoint import load_checkpoint
        except ImportError as exc:
            raise DependencyError(f"the torch runner needs PyTorch, which is not importable here ({exc}); "
                                  "validate the exported .onnx with onnxruntime instead, or install "
                                  "pip install 'edge-unlearn[host]'") from exc

        if self.threads is not None:
            import torch

            self._previous_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        ckpt = load_checkpoint(self.path)
        self._model = ckpt.model.to(self.device).eval()
        self.meta = {"num_classes": ckpt.meta.num_classes, "forgotten_classes": list(ckpt.meta.forgotten_classes),
                     "source_sha256": ckpt.sha256}

    def infer_impl(self, inputs: np.ndarray) -> np.ndarray:
        import torch

        assert self._model is not None
        with torch.no_grad():
            x = torch.from_numpy(inputs).to(self.device)
            out = self._model.logits(x, masked=False).masked_fill(~self._model.class_mask, MASK_VALUE)
        return out.float().cpu().numpy()

    def deactivate_impl(self) -> None:
        self._model = None
        if self._previous_threads is not None:
            import torch

            torch.set_num_threads(self._previous_threads)
            self._previous_threads = None

    def gpu_memory_hook(self) -> "TorchCudaMemory | None":
        """The bench's GPU memory probe: torch's peak allocation on CUDA; None on the CPU."""
        return TorchCudaMemory(self.device) if str(self.device).startswith("cuda") else None

    def describe_impl(self) -> dict[str, Any]:
        import torch

        return {"provider": self.device, "precision": "fp32", "device": self.device, **self.meta,
                "versions": {**_base_env(), "torch": torch.__version__}}


class TorchFusedHeadRunner(TorchRunner):
    """A checkpoint in PyTorch with the fused masked head of ``edge_unlearn.kernels`` (Triton on CUDA): the backbone
    in eager mode, then ``model.predict(output="logits")`` with ``head_impl="fused"``, which never reads the
    forgotten rows of the head. Same contract as every runner: logits [B, C], forgotten = MASK_VALUE."""

    runtime = "torch-fused"

    def activate_impl(self) -> None:
        super().activate_impl()
        self._model.head_impl = "fused"

    def infer_impl(self, inputs: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self._model.predict(torch.from_numpy(inputs).to(self.device), output="logits")
            out = out.masked_fill(~self._model.class_mask, MASK_VALUE)
        return out.float().cpu().numpy()

    def describe_impl(self) -> dict[str, Any]:
        return {**super().describe_impl(), "provider": f"{self.device}-fused"}


def fused_head_runner(path: str | Path, device: str = "cuda") -> Runner:
    """:class:`TorchFusedHeadRunner` for a checkpoint (the ``cuda-fused`` provider of the bench)."""
    return TorchFusedHeadRunner(str(path), device=device)


class TorchCudaMemory:
    """``torch.cuda`` max allocated memory of a torch runner on CUDA (imports torch when used)."""

    def __init__(self, device: str = "cuda") -> None:
        self.device = device

    def reset(self) -> None:
        import torch

        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mib(self) -> float | None:
        import torch

        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) / 2**20


def torch_cuda_available() -> bool:
    """Whether torch is installed and sees a GPU (False on a base install)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def open_runner(path: str | Path, provider: str | None = None) -> Runner:
    """The runner for a model file, chosen by suffix: .onnx -> onnxruntime, .safetensors -> torch,
    .plan/.engine -> TensorRT. Nothing is loaded until the runner is entered."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ModelFileError(f"model {path} not found; give an .onnx from `edge-unlearn export`/`quantize`, "
                             "or a .safetensors checkpoint")
    if suffix in ONNX_SUFFIXES:
        return OnnxRuntimeRunner(path, provider=provider)
    if suffix in TORCH_SUFFIXES:
        if provider not in (None, "auto", "cpu", "cuda"):
            raise UsageError(f"--provider {provider} does not apply to a torch checkpoint; use cpu or cuda")
        return TorchRunner(path, device=None if provider in (None, "auto") else provider)
    if suffix in TENSORRT_SUFFIXES:
        from .tensorrt import TensorRTRunner  # checks the sidecar and imports TensorRT only on entry

        return TensorRTRunner(str(path))
    raise UsageError(f"cannot tell the engine of {path.name} from its suffix; use one of "
                     f"{', '.join(ONNX_SUFFIXES + TORCH_SUFFIXES + TENSORRT_SUFFIXES)}")
