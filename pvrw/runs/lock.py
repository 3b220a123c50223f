"""The lock of a run directory: one process at a time trains, resumes or evaluates into it.

``RUN_DIR/.pvrw.lock`` names its holder (host, PID, command, start time) and, where the filesystem has them, carries
a POSIX record lock (``fcntl.lockf``; it works across the hosts of an NFSv4 share, or NFSv3 with lockd). The OS lock
is authoritative: while it is held the directory is refused, with one line naming the holder; a lock file whose OS
lock is free belongs to a process that is gone (killed, or its node lost), from this host or another, and is taken
over with a one-line note. Where the filesystem has no locks (``ENOLCK``, ``EOPNOTSUPP``), the file alone decides:
it is created with ``O_EXCL``; a holder on this host whose PID is gone is taken over, one on another host is refused
(its PID cannot be checked from here) with the file to remove once that process is known to be gone.

The lock is re-entrant in the thread that holds it (``pvrw train`` takes it before its checks, and
:func:`~pvrw.runs.training.run_training` takes it again) and refused to other threads of the same process.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import fcntl
import functools
import inspect
import json
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pvrw.runs.layout import LOCK_FILE, RunDir, RunDirError, check_run_dir

#: errors of a filesystem without record locks
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
#: (device, inode) of the run directory -> [thread id, depth] of each lock this process holds
_HELD: dict[tuple[int, int], list[int]] = {}
_HELD_GUARD = threading.Lock()
#: what a lock taken outside a click command says its holder is (set by backends, e.g. a Ray trial)
_COMMAND: contextvars.ContextVar[str | None] = contextvars.ContextVar("pvrw_lock_command", default=None)


class RunLockedError(RunDirError):
    """The run directory is in use by another process (the message names it)."""


class RunLockNotice(UserWarning):
    """A lock left by a process that is gone was taken over."""


@contextlib.contextmanager
def lock_command(name: str) -> Iterator[None]:
    """Name the holder of locks taken in this block (where no click command names it), e.g. ``pvrw sweep (Ray)``."""
    token = _COMMAND.set(name)
    try:
        yield
    finally:
        _COMMAND.reset(token)


def _command_name() -> str:
    import click

    ctx = click.get_current_context(silent=True)
    if _COMMAND.get() is not None:
        return _COMMAND.get()
    if ctx is not None and ctx.info_name:
        return f"pvrw {ctx.info_name}"
    program = Path(sys.argv[0] or "python")
    return program.parent.name if program.name == "__main__.py" else program.name


def _describe(holder: dict[str, Any]) -> str:
    """``pvrw train (pid 1234 on host h, since 15:02)``."""
    started = holder.get("started")
    if isinstance(started, (int, float)):
        today = time.strftime("%Y%m%d", time.localtime(started)) == time.strftime("%Y%m%d")
        since = f", since {time.strftime('%H:%M' if today else '%Y-%m-%d %H:%M', time.localtime(started))}"
    else:
        since = ""
    who = holder.get("command", "a pvrw process")
    return f"{who} (pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{since})"


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # unknown: assume alive, never take over blindly
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _os_lock(fd: int) -> bool | None:
    """Take the OS lock without waiting: ``True`` taken, ``False`` held by another process, ``None`` unsupported."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EACCES):
            return False
        if err.errno in _NO_LOCKS:
            return None
        raise
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (own.st_dev, own.st_ino) == (st.st_dev, st.st_ino)


def _refuse(root: Path, holder: dict[str, Any], extra: str = "") -> RunLockedError:
    return RunLockedError(f"{root} is in use by {_describe(holder)}; wait for it or stop it{extra}")


def _acquire(rd: RunDir, command: str, note: Callable[[str], None]) -> int:
    """Create or take over the lock file; return its open descriptor (the OS lock held on it where supported)."""
    path = rd.root / LOCK_FILE
    me = {"host": socket.gethostname(), "pid": os.getpid(), "command": command, "started": time.time()}
    for _ in range(20):  # retries only when another process removed or replaced the file meanwhile
        try:
            fd, created = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), True
        except FileExistsError:
            try:
                fd, created = os.open(path, os.O_RDWR), False
            except FileNotFoundError:
                continue
            except PermissionError:
                raise RunLockedError(
                    f"{rd.root} has a lock file you may not write ({path}); it belongs to another user's pvrw process"
                ) from None
        try:
            locked = _os_lock(fd)
            if locked is False:
                holder = _read_holder(fd)
                for _ in range(20):  # the holder may not have written its name yet
                    if holder:
                        break
                    time.sleep(0.05)
                    holder = _read_holder(fd)
                raise _refuse(rd.root, holder)
            if locked and not _same_file(fd, path):  # the holder removed it as we opened it: start again
                os.close(fd)
                continue
            previous = {} if created else _read_holder(fd)
            if locked is None and not created:
                here = previous.get("host") == me["host"]
                if not previous or not here or _pid_alive(previous.get("pid")):
                    raise _refuse(
                        rd.root, previous, f" (this filesystem has no locks: remove {path} once that process is gone)"
                    )
                if _same_file(fd, path):  # a dead holder of this host: remove its file, then create ours
                    path.unlink(missing_ok=True)
                note(_takeover_line(rd.root, previous))
                os.close(fd)
                continue
            if previous:
                note(_takeover_line(rd.root, previous))
            data = (json.dumps(me) + "\n").encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
            return fd
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
    raise RunLockedError(f"{rd.root}: could not take the lock {path}: other processes keep replacing it")


def _takeover_line(root: Path, previous: dict[str, Any]) -> str:
    return f"{root}: taking over the lock of {_describe(previous)}, which is no longer running"


def _warn(line: str) -> None:
    frame, level = sys._getframe(1), 2  # point the warning at the code that asked for the lock
    while frame is not None and frame.f_code.co_filename in (__file__, contextlib.__file__):
        frame, level = frame.f_back, level + 1
    warnings.warn(line, RunLockNotice, stacklevel=level)


@contextlib.contextmanager
def run_lock(
    run_dir: str | os.PathLike | RunDir, command: str | None = None, note: Callable[[str], None] = _warn
) -> Iterator[RunDir]:
    """Hold the lock of ``run_dir`` (created if missing) for the block; release it on exit, error or Ctrl-C.

    :param command: who holds it, shown to a process that is refused (default: the running ``pvrw`` command).
    :param note: called with one line when a lock left by a dead process is taken over (default: a
        :class:`RunLockNotice` warning).
    :raises RunLockedError: another process (or another thread of this one) holds it; the message names it.
    """
    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    created_root = not rd.root.exists()
    rd.root.mkdir(parents=True, exist_ok=True)
    st = rd.root.stat()
    key = (st.st_dev, st.st_ino)
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None and held[0] != threading.get_ident():
            raise RunLockedError(f"{rd.root} is in use by another thread of this process; wait for it")
        if held is not None:
            held[1] += 1
    if held is not None:
        try:
            yield rd
        finally:
            with _HELD_GUARD:
                held[1] -= 1
        return
    try:
        fd = _acquire(rd, command or _command_name(), note)
    except BaseException:
        if created_root:
            with contextlib.suppress(OSError):
                rd.root.rmdir()
        raise
    with _HELD_GUARD:
        _HELD[key] = [threading.get_ident(), 1]
    try:
        yield rd
    finally:
        with _HELD_GUARD:
            del _HELD[key]
        # remove the file while the OS lock is still held, so that no one takes a lock on a file about to vanish
        with contextlib.suppress(OSError):
            if _same_file(fd, rd.root / LOCK_FILE):
                (rd.root / LOCK_FILE).unlink()
        os.close(fd)  # releases the OS lock
        if created_root:  # a directory made only for this lock (e.g. a run refused before it wrote anything)
            with contextlib.suppress(OSError):
                rd.root.rmdir()


def holding_run_lock(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a function taking a ``run_dir`` argument: it runs holding that directory's lock, and refuses a
    directory of files pvrw did not write (:func:`~pvrw.runs.layout.check_run_dir`)."""
    signature = inspect.signature(func)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        run_dir = signature.bind(*args, **kwargs).arguments["run_dir"]
        with run_lock(run_dir) as rd:
            check_run_dir(rd)
            return func(*args, **kwargs)

    return wrapper
