"""Glue for the Snakemake rule scripts: logging to the rule's log file, one-line errors."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from costack.errors import CostackError, describe, file_errors, printable


def setup_logging(log_path: str | None = None, level: int = logging.INFO) -> None:
    """Log to ``log_path`` (the rule's ``log:``) and to stderr."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        try:
            handlers.append(logging.FileHandler(log_path, mode="w", encoding="utf-8"))
        except OSError as err:  # a read-only logs folder: log to stderr only
            print(f"costack: warning: cannot write the log {log_path} ({err.strerror})",
                  file=sys.stderr)  # fmt: skip
    formatter = PrintableFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in handlers:
        handler.setFormatter(formatter)
    logging.basicConfig(level=level, handlers=handlers, force=True)


class PrintableFormatter(logging.Formatter):
    """A log line whose message has its control characters escaped (item text logged as data
    cannot forge a line or drive the terminal); a traceback below it keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's API)
        record.message = printable(record.message)
        return super().formatMessage(record)


#: A folder with less free space than this, when a write fails, is taken to be why.
FULL_BELOW_BYTES = 16_000_000


def _full_folder(outputs) -> tuple[str, int] | None:
    """(folder, free kB) of the first output folder that is (nearly) full, else None: GDAL
    reports a full disk as "Write failed", which does not say why."""
    import shutil

    for out in outputs:
        folder = Path(str(out)).parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            continue
        if free < FULL_BELOW_BYTES:
            return str(folder), free // 1000
    return None


def freeze_heap() -> None:
    """Move every object alive now out of the garbage collector's reach (``gc.freeze``), for a
    process that is about to end: the interpreter's shutdown collections then skip the
    ~150,000 objects that numba, SciPy and rasterio leave (0.4 s of every ``costack flow``
    process measured at 2000x2000; nothing else changes, memory is returned at exit)."""
    import gc

    gc.freeze()


def peak_rss_mb() -> float:
    """The process's peak resident memory (MB): the kernel's high-water mark (VmHWM), or the
    largest of its children's if one of them went higher."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def run_step(snakemake: Any, step: Callable[[], Any]) -> None:
    """Run a rule's step with logging; a CostackError becomes one line and exit status 1.

    The log's last line gives the step's wall and CPU time (their ratio: the cores it kept
    busy, against the rule's ``threads``) and the job's peak resident memory (for a profile's
    ``mem_mb``); ``bench/stack_bench.py`` reads it."""
    import time

    setup_logging(snakemake.log[0] if len(snakemake.log) else None)
    _inject_failure(snakemake.rule)
    _follow_threads(getattr(snakemake, "threads", None))
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        step()
        logging.getLogger("costack.jobs").info(
            "%s: done in %.1f s (CPU %.1f s), peak RSS %.0f MB", snakemake.rule,
            time.perf_counter() - t0, time.process_time() - c0, peak_rss_mb(),
        )  # fmt: skip
        freeze_heap()
    except CostackError as err:
        _fail(str(err))
    except file_errors() as err:
        # a read-only or full results folder, a vanished input: one line, and the job fails
        # (Snakemake then removes its outputs, so nothing half-written is marked complete)
        full = _full_folder(getattr(snakemake, "output", []))
        if full is not None:
            _fail(f"{snakemake.rule}: no space left on the device of {full[0]} ({full[1]} kB "
                  "free); free some space there (or put the working directory on a larger "
                  "disk), then rerun")  # fmt: skip
        text = describe(err)
        _fail(f"{snakemake.rule}: {text}; check that the input files are readable and that the "
              "results and logs folders are writable and have free space, then rerun")  # fmt: skip


def _follow_threads(threads: int | None) -> None:
    """numba's parallel loops on the rule's ``threads`` (numba's default is every core of the
    machine: two one-core jobs side by side would each run two threads). Set for the job's
    main thread, which runs the flow's and the warp's kernels; the results do not depend on
    it (each loop's rows are independent)."""
    if not threads or "numba" not in sys.modules:
        if threads:
            os.environ["NUMBA_NUM_THREADS"] = str(max(1, int(threads)))
        return
    import numba

    numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))


#: Fault injection for tests of retries (e.g. on SLURM): ``COSTACK_FAIL_ONCE=RULE`` makes the
#: first job of RULE in this working directory fail, once.
FAIL_ONCE = "COSTACK_FAIL_ONCE"


def _inject_failure(rule: str) -> None:
    if os.environ.get(FAIL_ONCE) != rule:
        return
    marker = Path(".snakemake") / "costack" / f"failed-once-{rule}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("1", encoding="ascii")
    _fail(f"{rule}: failure injected by {FAIL_ONCE} (the retry must succeed)")


def _fail(message: str) -> None:
    logging.getLogger("costack").error("%s", message)
    print(f"costack: error: {message}", file=sys.stderr)
    sys.exit(1)


def record_run(pid_file: str | Path) -> None:
    """Note the pid of the running workflow (Snakefile ``onstart``)."""
    Path(pid_file).parent.mkdir(parents=True, exist_ok=True)
    Path(pid_file).write_text(str(os.getpid()), encoding="ascii")


def forget_run(pid_file: str | Path) -> None:
    """Remove the note when the run ends (``onsuccess`` / ``onerror``)."""
    Path(pid_file).unlink(missing_ok=True)


def live_run(pid_file: str | Path) -> int | None:
    """The pid of a Snakemake run of this folder that is still alive (not this process), or
    None: ``--unlock`` must not remove the lock of a run that is working."""
    try:
        pid = int(Path(pid_file).read_text(encoding="ascii"))
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    alive = b"snakemake" in cmdline or b"costack" in cmdline  # snakemake or costack run
    return pid if pid != os.getpid() and alive else None
