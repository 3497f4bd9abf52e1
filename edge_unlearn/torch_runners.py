"""The torch runners (a checkpoint in eager PyTorch, and with the fused masked head), registered with the device
package's :func:`edge_unlearn.deploy.runners.open_runner` on import. Host side: imports torch lazily inside methods.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge_unlearn.deploy.onnx_meta import MASK_VALUE
from edge_unlearn.deploy.runner import Runner
from edge_unlearn.deploy.runners import HostRuntime, base_environment, register_host_runtime
from edge_unlearn.errors import DependencyError


class TorchRunner(Runner):
    """A checkpoint run in PyTorch (the reference): raw head logits, forgotten classes = MASK_VALUE."""

    runtime = "torch"

    def __init__(
        self, path: str | Path, device: str | None = None, name: str | None = None, threads: int | None = None
    ) -> None:
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
            raise DependencyError(
                f"the torch runner needs PyTorch, which is not importable here ({exc}); "
                "validate the exported .onnx with onnxruntime instead, or install "
                "pip install 'edge-unlearn[host]'"
            ) from exc

        if self.threads is not None:
            import torch

            self._previous_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        ckpt = load_checkpoint(self.path)
        self._model = ckpt.model.to(self.device).eval()
        self.meta = {
            "num_classes": ckpt.meta.num_classes,
            "forgotten_classes": list(ckpt.meta.forgotten_classes),
            "source_sha256": ckpt.sha256,
        }

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

    def gpu_memory_hook(self) -> TorchCudaMemory | None:
        """The bench's GPU memory probe: torch's peak allocation on CUDA; None on the CPU."""
        return TorchCudaMemory(self.device) if str(self.device).startswith("cuda") else None

    def describe_impl(self) -> dict[str, Any]:
        import torch

        return {
            "provider": self.device,
            "precision": "fp32",
            "device": self.device,
            **self.meta,
            "versions": {**base_environment(), "torch": torch.__version__},
        }


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
    """Whether torch is installed and sees a GPU."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def fused_head_runner(path: str | Path, device: str = "cuda") -> Runner:
    """:class:`TorchFusedHeadRunner` for a checkpoint (the ``cuda-fused`` provider of the bench)."""
    return TorchFusedHeadRunner(str(path), device=device)


def open_program(path: Path) -> Runner:
    """The ExecuTorch runner of a ``.pte`` (executorch is imported when it is entered)."""
    from edge_unlearn.pte.runner import ExecuTorchRunner

    return ExecuTorchRunner(path)


register_host_runtime(
    HostRuntime(
        open_checkpoint=lambda path, device: TorchRunner(path, device=device),
        open_fused=fused_head_runner,
        cuda_available=torch_cuda_available,
        open_program=open_program,
    )
)
