"""The JSON sidecar beside every TensorRT engine, and the check that it may be loaded here. No TensorRT, no torch.

A TensorRT engine runs only on the TensorRT version and the GPU model it was built with; loading it elsewhere
fails deep inside ``deserialize_cuda_engine`` (or, worse, works badly). So ``build-engine`` writes
``model.plan.json`` beside ``model.plan`` and the TensorRT runner reads it *before* deserialising, comparing the
TensorRT version, GPU name and compute capability with the device it runs on -- and, on a Jetson, the module
model: every Orin module reports GPU "Orin" and compute capability 8.7, so only the device-tree model tells an AGX
Orin engine (tuned for 2048 CUDA cores and 2 DLAs) from an Orin Nano. Version-compatible engines may run on a newer
TensorRT (same major, or a TensorRT 10 engine on 11: TensorRT 11.4.1 support matrix, "Engine Portability");
hardware-compatible ones on other GPUs of the level. The current environment is measured by
:func:`edge_unlearn.deploy.tensorrt.current_environment`; everything here is pure and tested without TensorRT.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edge_unlearn.errors import ModelFileError
from edge_unlearn.fileio import atomic_output, sha256_file

FORMAT = "edge-unlearn.engine/1"
SUFFIX = ".json"


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """``model.plan`` -> ``model.plan.json``."""
    p = Path(engine_path)
    return p.with_name(p.name + SUFFIX)


@dataclass(frozen=True)
class EngineSidecar:
    """What an engine was built from, with what, and for which device."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    source_onnx: str
    source_onnx_sha256: str
    engine_sha256: str
    forgotten_classes: tuple[int, ...]
    num_classes: int | None = None
    source_checkpoint_sha256: str = ""
    input_name: str = "input"
    output_name: str = "logits"
    input_shape: tuple[int, ...] = ()
    profile: dict[str, list[int]] = field(default_factory=dict)
    strongly_typed: bool = False
    builder_flags: tuple[str, ...] = ()
    dla_core: int | None = None
    workspace_mib: int | None = None
    jetson: dict[str, Any] | None = None
    power_mode: dict[str, Any] | None = None
    version_compatible: bool = False
    hardware_compatibility: str | None = None
    optimization_level: int | None = None
    dla_placement: dict[str, Any] | None = None
    #: the exact GPU: streaming multiprocessors and total memory (a Jetson family spans modules that differ in both)
    gpu_sm_count: int | None = None
    gpu_memory_mib: int | None = None
    created_utc: str = ""
    edge_unlearn_version: str = ""
    format: str = FORMAT

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["forgotten_classes"] = list(self.forgotten_classes)
        data["input_shape"] = list(self.input_shape)
        data["builder_flags"] = list(self.builder_flags)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "the sidecar") -> EngineSidecar:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ModelFileError(
                f"{where} is not an edge-unlearn engine sidecar (format {FORMAT}); rebuild the engine with "
                "`edge-unlearn build-engine MODEL.onnx -o MODEL.plan`"
            )
        known = {f.name for f in fields(cls)}
        try:
            values = {k: v for k, v in data.items() if k in known}
            values["forgotten_classes"] = tuple(int(c) for c in values.get("forgotten_classes", ()))
            values["input_shape"] = tuple(int(v) for v in values.get("input_shape", ()))
            values["builder_flags"] = tuple(str(v) for v in values.get("builder_flags", ()))
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise ModelFileError(
                f"{where} is damaged ({exc}); rebuild the engine with `edge-unlearn build-engine`"
            ) from exc


def write_sidecar(engine_path: str | os.PathLike, sidecar: EngineSidecar) -> Path:
    """Write ``<engine>.json`` atomically; returns its path."""
    path = sidecar_path(engine_path)
    with atomic_output(path) as tmp:
        tmp.write_text(sidecar.to_json() + "\n", encoding="utf-8")
    return path


def read_sidecar(engine_path: str | os.PathLike) -> EngineSidecar:
    """Read ``<engine>.json``; :class:`ModelFileError` naming the fix when it is missing or damaged."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise ModelFileError(
            f"{engine_path} has no sidecar {path.name}, so it cannot be checked against this device's TensorRT and "
            f"GPU; rebuild on this device with `edge-unlearn build-engine MODEL.onnx -o {Path(engine_path).name}`"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(
            f"{path} is not readable JSON ({exc}); rebuild the engine with `edge-unlearn build-engine`"
        ) from exc
    return EngineSidecar.from_dict(data, str(path))


def _version_key(version: str) -> tuple[int, ...]:
    """'10.3.0.26' -> (10, 3, 0): TensorRT engines are tied to major.minor.patch."""
    parts: list[int] = []
    for piece in str(version).split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


#: Jetson module families, most specific first (device-tree models read e.g. "NVIDIA Jetson AGX Orin Developer Kit",
#: "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super")
JETSON_FAMILIES = ("AGX Thor", "AGX Orin", "Orin NX", "Orin Nano", "AGX Xavier", "Xavier NX", "TX2", "Nano")


def jetson_module(model: str | None) -> str | None:
    """'NVIDIA Jetson AGX Orin Developer Kit' -> 'AGX Orin'; the whole model text when no family matches; None
    when there is no model. Carrier boards differ (developer kit vs production carrier), the module must not."""
    if not model:
        return None
    text = " ".join(str(model).split())
    low = text.lower()
    for family in JETSON_FAMILIES:
        if family.lower() in low:
            return family
    return text


def _jetson_model(jetson: Any) -> str | None:
    if isinstance(jetson, dict) and jetson.get("model"):
        return jetson_module(str(jetson["model"]))
    return None


def _version_problem(built: str, here: str | None, version_compatible: bool) -> str | None:
    if not here:
        return f"TensorRT {built} (here: unknown)"
    b, h = _version_key(built), _version_key(here)
    if not version_compatible:
        return None if b == h else f"TensorRT {built} (here: {here})"
    if not b or not h:
        return f"TensorRT {built} (here: {here})"
    same_major_newer = b[0] == h[0] and h >= b
    ten_on_eleven = b[0] == 10 and h[0] == 11
    if same_major_newer or ten_on_eleven:
        return None
    return f"TensorRT {built} or a newer runtime it is version-compatible with (here: {here})"


def _capability(text: Any) -> tuple[int, int] | None:
    try:
        major, minor = str(text).split(".")[:2]
        return int(major), int(minor)
    except (ValueError, TypeError):
        return None


def compatibility_problems(sidecar: EngineSidecar, env: dict[str, Any]) -> list[str]:
    """What differs between where the engine was built and ``env`` (keys ``tensorrt_version``, ``gpu_name``,
    ``compute_capability``, ``jetson``); empty when it may be loaded. A value missing from ``env`` counts as a
    mismatch (fail closed). An engine built on a Jetson needs the same Jetson module (AGX Orin vs Orin Nano report
    the same GPU name and compute capability; :func:`module_problems` tells the memory sizes of a family apart)."""
    problems: list[str] = []
    version_problem = _version_problem(
        sidecar.tensorrt_version, env.get("tensorrt_version"), sidecar.version_compatible
    )
    if version_problem:
        problems.append(version_problem)
    here_cc = env.get("compute_capability")
    level = sidecar.hardware_compatibility
    if level == "ampere-plus":
        cc = _capability(here_cc)
        if cc is None or cc < (8, 0):
            problems.append(f"an Ampere or newer GPU, compute capability >= 8.0 (here: {here_cc or 'unknown'})")
    elif not here_cc or str(here_cc) != str(sidecar.compute_capability):
        problems.append(f"compute capability {sidecar.compute_capability} (here: {here_cc or 'unknown'})")
    if level is None:
        here_gpu = env.get("gpu_name")
        if not here_gpu or str(here_gpu).strip().lower() != str(sidecar.gpu_name).strip().lower():
            problems.append(f"GPU {sidecar.gpu_name!r} (here: {here_gpu or 'unknown'!r})")
    built_model = _jetson_model(sidecar.jetson)
    here_model = _jetson_model(env.get("jetson"))
    if (built_model or here_model) and (built_model or "").lower() != (here_model or "").lower():
        problems.append(
            f"Jetson model {built_model or 'none (not a Jetson)'!r} (here: {here_model or 'none (not a Jetson)'!r})"
        )
    if level is None:
        problems += module_problems(sidecar, env, jetson=bool(built_model or here_model))
    return problems


#: total memory within this fraction counts as the same module (firmware carve-outs move it by a few per cent;
#: the modules of one family differ by a factor of two: Orin Nano 4/8 GB, Orin NX 8/16 GB, AGX Orin 32/64 GB)
MEMORY_TOLERANCE = 0.10


def same_memory_class(built_mib: int, here_mib: int) -> bool:
    """Whether two total-memory figures are the same module size (within :data:`MEMORY_TOLERANCE`)."""
    return abs(built_mib - here_mib) <= MEMORY_TOLERANCE * max(built_mib, here_mib)


def module_problems(sidecar: EngineSidecar, env: dict[str, Any], jetson: bool) -> list[str]:
    """The exact module, not only its family: every Orin reports GPU "Orin" and compute capability 8.7, and the
    device-tree model names the carrier ("Jetson AGX Orin Developer Kit" for the 32 and the 64 GB module), so the
    streaming-multiprocessor count (AGX Orin 64 GB: 16, 32 GB: 14; Orin Nano 8 GB: 8, 4 GB: 4) and, on a Jetson, the
    total memory (Orin NX 8 vs 16 GB share 8 SMs) decide. Values the sidecar lacks (older engines) are not compared;
    a value missing here is a mismatch (fail closed)."""
    problems: list[str] = []
    built_sm, here_sm = sidecar.gpu_sm_count, env.get("gpu_sm_count")
    if built_sm is not None and (here_sm is None or int(here_sm) != int(built_sm)):
        problems.append(f"a GPU with {built_sm} streaming multiprocessors (here: {here_sm or 'unknown'})")
    built_mem, here_mem = sidecar.gpu_memory_mib, env.get("gpu_memory_mib")
    if jetson and built_mem is not None and (here_mem is None or not same_memory_class(int(built_mem), int(here_mem))):
        problems.append(f"a module with {built_mem} MiB of memory (here: {here_mem or 'unknown'} MiB)")
    return problems


def rebuild_hint(sidecar: EngineSidecar | None, engine_path: str | os.PathLike) -> str:
    source = sidecar.source_onnx if sidecar and sidecar.source_onnx else "MODEL.onnx"
    return f"rebuild on this device with `edge-unlearn build-engine {source} -o {engine_path}`"


def check_compatible(
    engine_path: str | os.PathLike, env: dict[str, Any], sidecar: EngineSidecar | None = None, verify_hash: bool = True
) -> EngineSidecar:
    """Refuse (``ModelFileError``) an engine built for another TensorRT version or GPU, or whose sidecar belongs
    to another engine file; returns the sidecar when the engine may be deserialised here."""
    sidecar = sidecar if sidecar is not None else read_sidecar(engine_path)
    if verify_hash and sidecar.engine_sha256:
        actual = sha256_file(engine_path)
        if actual != sidecar.engine_sha256:
            raise ModelFileError(
                f"{engine_path} does not match its sidecar (sha256 {actual[:12]}... vs {sidecar.engine_sha256[:12]}...):"
                f" the engine was replaced or the sidecar is stale; {rebuild_hint(sidecar, engine_path)}"
            )
    problems = compatibility_problems(sidecar, env)
    if problems:
        raise ModelFileError(
            f"{engine_path} was built for {'; '.join(problems)}; TensorRT engines do not move between TensorRT "
            f"versions or GPUs: {rebuild_hint(sidecar, engine_path)}"
        )
    return sidecar
