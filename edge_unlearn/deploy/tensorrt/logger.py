"""TensorRT's log, routed to stderr so that ``build-engine --json`` keeps stdout pure JSON.

``trt.Logger`` (the default logger) writes to stdout. TensorRT lets Python subclass ``trt.ILogger``: the binding's
``PyLogger`` trampoline forwards ``log(severity, msg)`` to the override (``PYBIND11_OVERLOAD_PURE_NAME(void,
ILogger, "log", log, severity, msg)`` in python/src/infer/pyCore.cpp, v10.3.0 and v11.1), and ``ILogger.__init__``
must be called (``baseLoggerBinding.def(py::init<>())``). Severities are ``ILogger.Severity`` INTERNAL_ERROR(0),
ERROR(1), WARNING(2), INFO(3), VERBOSE(4) -- the C++ enum's order, so ``int(severity)`` compares.

The filtering and writing is :class:`StderrLogSink`, pure Python and tested without TensorRT; :func:`make_logger`
wraps it in the ``trt.ILogger`` subclass (the only part needing the library).
"""

from __future__ import annotations

import sys
import threading
from typing import Any, TextIO

SEVERITY_NAMES = ("internal error", "error", "warning", "info", "verbose")
WARNING = 2
VERBOSE = 4


class StderrLogSink:
    """Writes TensorRT messages at or above ``min_severity`` (lower number = more severe) to ``stream``, default
    the *current* ``sys.stderr`` (so test capture and click's runner see it), one line per message, thread-safe.
    Keeps the errors it saw, so a failed build can name TensorRT's own reason."""

    def __init__(self, verbose: bool = False, stream: TextIO | None = None) -> None:
        self.min_severity = VERBOSE if verbose else WARNING
        self._stream = stream
        self._lock = threading.Lock()
        self.errors: list[str] = []

    def emit(self, severity: int, message: str) -> None:
        severity = int(severity)
        text = str(message).rstrip()
        if severity <= 1:
            self.errors.append(text)
        if severity > self.min_severity:
            return
        name = SEVERITY_NAMES[severity] if 0 <= severity < len(SEVERITY_NAMES) else str(severity)
        stream = self._stream if self._stream is not None else sys.stderr
        with self._lock:
            stream.write(f"[TensorRT {name}] {text}\n")
            stream.flush()

    def last_error(self) -> str | None:
        return self.errors[-1] if self.errors else None


def make_logger(trt: Any, verbose: bool = False, sink: StderrLogSink | None = None) -> Any:
    """A ``trt.ILogger`` forwarding to a :class:`StderrLogSink`; the sink is reachable as ``logger.sink``."""
    chosen = sink if sink is not None else StderrLogSink(verbose)

    class _StderrLogger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.sink = chosen

        def log(self, severity: Any, msg: str) -> None:
            self.sink.emit(int(severity), msg)

    return _StderrLogger()
