"""Safe writes (issue #13): atomic_output never destroys a non-regular file, follows symlinks, respects the umask,
cleans its temporary file on an exception, Ctrl-C and SIGTERM, and check_output_path refuses output == input."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edge_unlearn.errors import UsageError
from edge_unlearn.fileio import atomic_output, check_output_path


def _temps(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_symlink_is_followed_and_kept(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    with atomic_output(link) as tmp:
        tmp.write_text("new")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == "new" and not _temps(tmp_path)


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="no /dev/null")
def test_character_device_is_written_through_not_replaced():
    with atomic_output("/dev/null") as tmp:
        tmp.write_text("discarded")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_full_device_is_one_line_and_stays_a_device():
    with pytest.raises(UsageError, match="disk is full"):
        with atomic_output("/dev/full") as tmp:
            tmp.write_text("x" * 10)
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_fifo_is_written_through(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = subprocess.Popen(
        [sys.executable, "-c", f"print(open({str(fifo)!r}).read(), end='')"], stdout=subprocess.PIPE, text=True
    )
    with atomic_output(fifo) as tmp:
        tmp.write_text("through the pipe")
    out, _ = reader.communicate(timeout=30)
    assert out == "through the pipe" and stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_socket_is_refused(tmp_path):
    path = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
        with pytest.raises(UsageError, match="neither a regular file"):
            check_output_path(path)
        assert stat.S_ISSOCK(os.stat(path).st_mode)
    finally:
        server.close()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_new_file_mode_follows_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        with atomic_output(tmp_path / "out.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == mode


def test_replaced_file_keeps_its_mode(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    target.chmod(0o640)
    with atomic_output(target) as tmp:
        tmp.write_text("new")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640 and target.read_text() == "new"


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_failure_and_ctrl_c_leave_no_file(tmp_path, exc):
    target = tmp_path / "out.txt"
    target.write_text("keep me")
    with pytest.raises(exc):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise exc()
    assert target.read_text() == "keep me" and not _temps(tmp_path)


def test_sigterm_removes_the_temporary_file(tmp_path):
    target = tmp_path / "out.bin"
    ready = tmp_path / "ready"
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from edge_unlearn.fileio import atomic_output
        with atomic_output({str(target)!r}) as tmp:
            tmp.write_bytes(b"x" * 1000)
            Path({str(ready)!r}).write_text("1")
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert ready.exists() and len(_temps(tmp_path)) == 1
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM
    assert not target.exists() and not _temps(tmp_path)


def test_output_equal_to_an_input_is_refused(tmp_path):
    src = tmp_path / "a.safetensors"
    src.write_bytes(b"weights")
    with pytest.raises(UsageError, match="also an input"):
        check_output_path(src, [src])
    link = tmp_path / "b.safetensors"
    link.symlink_to(src)
    with pytest.raises(UsageError, match="also an input"):
        check_output_path(link, [src])
    check_output_path(tmp_path / "c.safetensors", [src])  # a different file is fine


@pytest.mark.parametrize("case", ["no_folder", "is_folder", "empty"])
def test_bad_output_paths_fail_up_front(tmp_path, case):
    path = {"no_folder": tmp_path / "nodir" / "x.json", "is_folder": tmp_path, "empty": ""}[case]
    with pytest.raises(UsageError):
        check_output_path(path)
    assert not (tmp_path / "nodir").exists()
