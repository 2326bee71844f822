"""
One run per OUTPUT_DIR: two runs writing there at once would interleave their checkpoints,
metrics and logs. The lock is an flock on OUTPUT_DIR/.lock, which the system releases when the
process ends, however it ends (kill -9 included): a killed run leaves no stale lock.
"""
import fcntl
import os
import sys
import time

_held = {}


class OutputDirInUseError(RuntimeError):
    """Another run holds the OUTPUT_DIR; the message names it."""


class OutputDirNotWritableError(OSError):
    """OUTPUT_DIR cannot be created or written; the message names it and why."""


def lock_output_dir(path):
    """Hold OUTPUT_DIR `path` for this process, or raise OutputDirInUseError naming its holder
    (OutputDirNotWritableError when it cannot be written: said at start, before anything is built)."""
    path = os.path.abspath(path)
    if path in _held:
        return
    try:
        os.makedirs(path, exist_ok=True)
        fd = os.open(os.path.join(path, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise OutputDirNotWritableError(
            f"OUTPUT_DIR {path} cannot be written ({e.strerror or e}): the run would lose its "
            f"checkpoints and metrics. Choose a writable OUTPUT_DIR (for example OUTPUT_DIR "
            f"./output/run on the command line), or fix the folder's permissions."
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "a process that did not say"
        os.close(fd)
        raise OutputDirInUseError(
            f"OUTPUT_DIR {path} is in use by another run ({holder}): two runs there would "
            f"interleave their checkpoints and metrics. Wait for it to end, stop it, or choose "
            f"another OUTPUT_DIR."
        ) from None
    os.ftruncate(fd, 0)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    os.pwrite(fd, f"pid {os.getpid()}, started {started}: {' '.join(sys.argv)}".encode(), 0)
    _held[path] = fd  # kept open, so held, until the process ends


def release_output_dir(path):
    fd = _held.pop(os.path.abspath(path), None)
    if fd is not None:
        os.close(fd)
