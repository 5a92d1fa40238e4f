"""Files as contracts, without raster code: atomic writes (a reader never sees half a file, a
killed job's leftovers are removed by the next write) and JSON. Every layer writes through
these; nothing here imports another costack module but :mod:`costack.errors`."""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from costack.errors import CostackError


def current_umask() -> int:
    """The process's umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def scratch_path(beside: str | Path) -> Iterator[str]:
    """A temporary file beside ``beside``, removed on exit. Named ``.NAME.XXXX.tmp``, so a
    killed job's leftover is removed by the next :func:`atomic_path` of ``beside``."""
    beside = Path(beside)
    fd, tmp = tempfile.mkstemp(prefix=f".{beside.name}.", suffix=".tmp", dir=beside.parent)
    os.close(fd)
    try:
        yield tmp
    finally:
        Path(tmp).unlink(missing_ok=True)


#: Bytes written to probe whether a folder's device is full after a failed write (more than
#: any one tile or strip GDAL writes at a time).
PROBE_BYTES = 1 << 20


def _out_of_space(err: BaseException, folder: Path) -> bool:
    """Whether ``err``, raised while writing into ``folder``, is a full disk: ENOSPC/EDQUOT in
    its chain or its messages, or, since GDAL reports a full disk as "Write error" or "Seek
    error", a probe: writing :data:`PROBE_BYTES` there now fails with ENOSPC/EDQUOT."""
    seen: BaseException | None = err
    while seen is not None:
        if getattr(seen, "errno", None) in {errno.ENOSPC, errno.EDQUOT}:
            return True
        if "no space left" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        with tempfile.TemporaryFile(dir=folder) as fh:
            fh.write(bytes(PROBE_BYTES))
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as probe:
        return probe.errno in {errno.ENOSPC, errno.EDQUOT}
    return False


class NoSpaceError(OSError):
    """A write that failed on a full disk (ENOSPC), whatever GDAL called it; its text is one
    line naming the folder and the fix (front ends add the job or step's name)."""

    def __str__(self) -> str:
        try:
            free = f" ({shutil.disk_usage(self.filename).free // 1000} kB free)"
        except OSError:
            free = ""
        return (f"no space left on the device of {self.filename}{free}; free some space there "
                "(or put the results on a larger disk), then rerun: nothing was kept of the "
                "failed write")  # fmt: skip


def no_space_error(folder: Path) -> NoSpaceError:
    """The error of a write into ``folder`` that failed on a full disk."""
    return NoSpaceError(errno.ENOSPC, "No space left on device", str(folder))


def _sync(path: str) -> None:
    """Flush ``path`` to its device: a disk that fills as the kernel writes it back (delayed
    allocation, network file systems) fails here, before the file is moved into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, verify: Callable[[str], None] | None = None) -> Iterator[str]:
    """Yield a temporary path beside ``path``; move it into place only on success, with the
    permissions a plain ``open`` would give (``mkstemp``'s 0600 would make every output
    unreadable to the user's group whatever the umask).

    Success means: the block ended without an error, the file reached its device (``fsync``)
    and ``verify(tmp)`` (when given: e.g. re-open the raster and read it whole) raised nothing.
    Otherwise the temporary file is removed and nothing is left; a failure on a full disk is
    one line saying so (:func:`no_space_error`), whatever GDAL called it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a job killed while writing (SIGKILL, OOM) leaves its temporary files: one job writes one
    # output at a time, so any earlier temporary of this output is such a leftover
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    with scratch_path(path) as tmp:
        try:
            yield tmp
            _sync(tmp)
            if verify is not None:
                verify(tmp)
        except (CostackError, NoSpaceError):
            raise
        except Exception as err:
            if _out_of_space(err, path.parent):  # the partial file still takes its space
                raise no_space_error(path.parent) from err
            raise
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically (a reader never sees half a file)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def read_json(path: str | Path, parameter: str, what: str, fix: str) -> Any:
    """Read a JSON file; a missing or unreadable file, or one that is not JSON, is a one-line
    error naming ``parameter`` (``what`` says what the file should be, ``fix`` how to mend)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise CostackError(parameter, f"{path} does not exist", fix) from err
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CostackError(parameter, f"{path} is not {what} ({err})", fix) from err
