"""Small file helpers shared by the host and the deployment side (no torch imports).

:func:`atomic_output` is how every command writes a file. Its promises (issue #13):

- all or nothing: the bytes go to a temporary file beside the target, renamed onto it only when the block
  succeeds; an exception, Ctrl-C or SIGTERM removes the temporary file;
- never destroys what is not a regular file: a symlink is followed to its real target (the link stays), a
  character device or FIFO (``/dev/null``, ``/dev/stdout``, a pipe) is written *through* instead of replaced, a
  socket or folder is refused;
- the new file gets the mode a plain ``open()`` would give (0666 minus the umask), or the mode of the file it
  replaces; a full disk is one line, not a traceback.

:func:`check_output_path` runs the same checks up front, so a command can refuse a bad ``-o``/``--json-out``
before any work, and refuses an output that is one of the command's inputs.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import UsageError

#: temporary files of the atomic writes in progress (removed on SIGTERM and at interpreter exit)
_PENDING: set[str] = set()
_LOCK = threading.Lock()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _real_target(path: str | os.PathLike) -> Path:
    """``path`` with symlinks resolved (a dangling link resolves to where it points)."""
    return Path(os.path.realpath(os.fspath(path)))


def _is_write_through(target: Path) -> bool:
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def check_output_path(
    path: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (), option: str = "-o"
) -> Path:
    """Fail (UsageError, one line) before any work when ``path`` cannot be written or is one of ``inputs``.

    Returns the real target (symlinks followed)."""
    given = Path(path)
    if not str(path).strip():
        raise UsageError(f"{option} is empty; give a file path")
    target = _real_target(given)
    parent = target.parent
    if not parent.is_dir():
        shown = given.parent if str(given.parent) else Path(".")
        raise UsageError(
            f"cannot write {given}: folder {shown} does not exist; create it or choose another {option} path"
        )
    if target.is_dir():
        raise UsageError(f"cannot write {given}: it is a folder; give a file path to {option}")
    if target.exists() and not (target.is_file() or _is_write_through(target)):
        raise UsageError(
            f"cannot write {given}: it is neither a regular file nor a device/pipe; choose another {option} path"
        )
    if _is_write_through(target):
        if not os.access(target, os.W_OK):
            raise UsageError(f"cannot write {given}: permission denied")
    elif not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {given}: folder {parent} is not writable; choose another {option} path")
    elif target.exists() and not os.access(target, os.W_OK):
        raise UsageError(f"cannot write {given}: the file is read-only; choose another {option} path")
    for item in inputs:
        if item is None:
            continue
        source = _real_target(item)
        same = source == target or (source.exists() and target.exists() and os.path.samefile(source, target))
        if same and target.is_file():
            raise UsageError(
                f"{option} {given} is also an input ({item}); writing it would destroy the input: "
                "choose another output path"
            )
    return target


def _cleanup_pending() -> None:
    with _LOCK:
        names = list(_PENDING)
        _PENDING.clear()
    for name in names:
        with contextlib.suppress(OSError):
            os.unlink(name)


def _on_sigterm(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    """Remove pending temporary files, then die of SIGTERM as the default action would."""
    _cleanup_pending()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


@contextlib.contextmanager
def _sigterm_cleanup() -> Iterator[None]:
    """While the block runs, SIGTERM removes pending temporary files first (main thread, default handler only)."""
    installed = False
    if threading.current_thread() is threading.main_thread():
        try:
            if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
                signal.signal(signal.SIGTERM, _on_sigterm)
                installed = True
        except (ValueError, OSError):
            installed = False
    try:
        yield
    finally:
        if installed and signal.getsignal(signal.SIGTERM) is _on_sigterm:
            with _LOCK:
                busy = bool(_PENDING)
            if not busy:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _disk_error(target: Path, exc: OSError) -> UsageError:
    reason = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
    }.get(exc.errno or 0, exc.strerror or type(exc).__name__)
    return UsageError(f"cannot write {target}: {reason}; nothing was written (free space or choose another path)")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``'s real target; move it there only if the block succeeds.

    See the module docstring for symlinks, devices/FIFOs, modes, SIGTERM and full disks."""
    target = check_output_path(path)
    through = _is_write_through(target)
    folder = Path(tempfile.gettempdir()) if through else target.parent
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise _disk_error(target, exc) from exc
    os.close(fd)
    with _LOCK:
        _PENDING.add(tmp_name)
    tmp = Path(tmp_name)
    try:
        with _sigterm_cleanup():
            yield tmp
            try:
                if through:  # a device or FIFO: write the bytes into it, never replace the node
                    with open(tmp, "rb") as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                else:
                    mode = stat.S_IMODE(os.stat(target).st_mode) if target.is_file() else 0o666 & ~_umask()
                    os.chmod(tmp, mode)
                    os.replace(tmp, target)
            except OSError as exc:
                raise _disk_error(target, exc) from exc
    except OSError as exc:  # the block's own write failed (ENOSPC while writing the temporary file, ...)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise _disk_error(target, exc) from exc
        raise
    finally:
        with _LOCK:
            _PENDING.discard(tmp_name)
        with contextlib.suppress(OSError):
            if tmp.exists():
                tmp.unlink()


import atexit  # noqa: E402 - registered once the helpers exist

atexit.register(_cleanup_pending)
