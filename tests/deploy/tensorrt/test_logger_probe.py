"""TensorRT's log goes to stderr (never stdout, which carries --json), and the Jetson probes (power mode, DLA)."""

from __future__ import annotations

import io
import sys
import threading

import pytest

from edge_unlearn.deploy.tensorrt.logger import StderrLogSink
from edge_unlearn.deploy.tensorrt.probe import count_dla_sysfs, parse_nvpmodel


def test_sink_writes_warnings_to_stderr_not_stdout(capsys):
    sink = StderrLogSink()
    sink.emit(2, "Using an engine plan file across different models of devices is not recommended")
    sink.emit(3, "an info line")  # below WARNING: dropped
    sink.emit(4, "a verbose line")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "[TensorRT warning] Using an engine plan file across different models of devices is not recommended\n"
    )


def test_verbose_sink_keeps_everything_and_remembers_errors(capsys):
    sink = StderrLogSink(verbose=True)
    for severity in range(5):
        sink.emit(severity, f"m{severity}")
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "[TensorRT internal error] m0",
        "[TensorRT error] m1",
        "[TensorRT warning] m2",
        "[TensorRT info] m3",
        "[TensorRT verbose] m4",
    ]
    assert sink.errors == ["m0", "m1"] and sink.last_error() == "m1"


def test_sink_follows_a_redirected_stderr():
    """The stream is looked up at each message, so click's runner and pytest capture see it."""
    sink = StderrLogSink()
    buffer = io.StringIO()
    old, sys.stderr = sys.stderr, buffer
    try:
        sink.emit(1, "parse failed")
    finally:
        sys.stderr = old
    assert buffer.getvalue() == "[TensorRT error] parse failed\n"


def test_sink_lines_do_not_interleave_across_threads():
    buffer = io.StringIO()
    sink = StderrLogSink(stream=buffer)
    threads = [threading.Thread(target=lambda i=i: [sink.emit(2, f"t{i}-{k}") for k in range(50)]) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 200 and all(line.startswith("[TensorRT warning] t") for line in lines)


# ---------------------------------------------------------------- nvpmodel


@pytest.mark.parametrize(
    "text, expected",
    [
        ("NV Power Mode: MAXN\n0\n", {"name": "MAXN", "id": 0}),
        ("NVPM WARN: fan mode is not set!\nNV Power Mode: 15W\n2\n", {"name": "15W", "id": 2}),
        ("NV Power Mode: MAXN_SUPER\r\n2\r\n", {"name": "MAXN_SUPER", "id": 2}),
        ("NV Power Mode: 7W", {"name": "7W", "id": None}),
    ],
)
def test_parse_nvpmodel(text, expected):
    assert parse_nvpmodel(text) == expected


def test_parse_nvpmodel_without_a_mode():
    assert parse_nvpmodel("nvpmodel: command not supported\n") is None


def test_count_dla_from_sysfs(tmp_path):
    assert count_dla_sysfs(tmp_path / "absent") is None
    for name in ("15880000.nvdla0", "158c0000.nvdla1", "13e00000.host1x", "nvdla-notes"):
        (tmp_path / name).mkdir()
    assert count_dla_sysfs(tmp_path) == 2
