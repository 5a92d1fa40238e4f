"""Files as contracts, without raster code: atomic writes (a reader never sees half a file, a
killed job's leftovers are removed by the next write) and JSON. Every layer writes through
these; nothing here imports another costack module but :mod:`costack.errors`."""

from __future__ import annotations

import glob
import json
import os
import tempfile
from collections.abc import Iterator
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


@contextmanager
def atomic_path(path: str | Path) -> Iterator[str]:
    """Yield a temporary path beside ``path``; move it into place only on success, with the
    permissions a plain ``open`` would give (``mkstemp``'s 0600 would make every output
    unreadable to the user's group whatever the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a job killed while writing (SIGKILL, OOM) leaves its temporary files: one job writes one
    # output at a time, so any earlier temporary of this output is such a leftover
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    with scratch_path(path) as tmp:
        yield tmp
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
