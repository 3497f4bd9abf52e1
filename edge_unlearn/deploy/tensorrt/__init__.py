"""TensorRT on the device: plan, probe, run and time engines with pycuda (building them is
:mod:`edge_unlearn.export.engine`). Split along its seams:

- :mod:`.plan` -- pure decisions (version dispatch, profiles and static shapes, DLA plan validation, timing-cache
  outcome, DLA placement verdict, engine-inspector summary, the equivalent trtexec command); no TensorRT.
- :mod:`.probe` -- environment and version detection (TensorRT, pycuda, GPU, Jetson power mode, DLA cores).
- :mod:`.logger` -- TensorRT's log routed to stderr.
- :mod:`.runner` -- :class:`TensorRTRunner` and GPU-only timing.

Only :mod:`.runner` and :mod:`.probe` (and the builder) touch tensorrt/pycuda, always lazily inside functions, so
``import edge_unlearn.deploy.tensorrt`` works on machines without them (our CI).
"""

from __future__ import annotations

from .plan import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MIN_BATCH,
    DEFAULT_OPT_BATCH,
    DEFAULT_WORKSPACE_MIB,
    ENGINE_SUFFIXES,
    HARDWARE_COMPAT,
    INSTALL_TENSORRT,
    PRECISIONS,
    BuildConfig,
    BuildPlan,
    api_generation,
    compute_profile,
    default_engine_path,
    hazard_target,
    is_engine_path,
    load_calibration_inputs,
    onnx_input_shape,
    parse_version,
    plan_build,
    refuse_cpu_layout,
    trtexec_command,
)
from .probe import (
    INSTALL_PYCUDA,
    current_environment,
    dla_cores,
    gpu_info,
    import_pycuda,
    import_tensorrt,
    jetson_power_mode,
    pycuda_status,
    tensorrt_status,
)
from .runner import TensorRTRunner

__all__ = [
    "BuildConfig",
    "BuildPlan",
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MIN_BATCH",
    "DEFAULT_OPT_BATCH",
    "DEFAULT_WORKSPACE_MIB",
    "ENGINE_SUFFIXES",
    "HARDWARE_COMPAT",
    "INSTALL_PYCUDA",
    "INSTALL_TENSORRT",
    "PRECISIONS",
    "TensorRTRunner",
    "api_generation",
    "compute_profile",
    "current_environment",
    "default_engine_path",
    "dla_cores",
    "gpu_info",
    "hazard_target",
    "import_pycuda",
    "import_tensorrt",
    "is_engine_path",
    "jetson_power_mode",
    "load_calibration_inputs",
    "onnx_input_shape",
    "parse_version",
    "plan_build",
    "pycuda_status",
    "refuse_cpu_layout",
    "tensorrt_status",
    "trtexec_command",
]
