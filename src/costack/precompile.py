"""Compile the numba kernels once per install, before the first jobs, on every core.

Numba compiles a kernel on its first call and caches it (``cache=True``) beside the source;
without this step, the first run of a fresh install compiles inside its jobs: the two tie-point
jobs compile the same kernels side by side, the flow job (two threads) compiles the rest while
everything waits for it (the demo in a fresh clone: 72 s, of which about 40 s compiling).

:func:`ensure_compiled`, called by the Snakefile's ``onstart`` (not on dry runs, not inside
cluster jobs), compiles every kernel at the signature the library calls it with, split over
``processes`` processes, and leaves a stamp keyed by the kernels' source, numba's and Python's
versions and the machine, so that later runs only look for the stamp (about a millisecond).
A kernel compiled here is loaded from the cache by the jobs; the test
``test_the_warm_up_compiles_every_signature_the_stages_call`` holds the stages' signatures
among the warm-up's.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

#: the package whose bytecode the warm-up writes, and the kernels module numba caches
_PACKAGE = Path(__file__).parent
_KERNELS = _PACKAGE / "registration" / "_kernels.py"

#: the kernels, in two shares of about equal compile time (seconds measured on 2 cores:
#: window_solve 6.4, lsm_point 5, warp_bspline 3.9, pyramid_down 3.2, clahe 3, rank 2.8, ...)
SHARES = (
    ("window_solve", "rank_transform", "gradient5", "upsample_flow", "weighted_trace", "clahe",
     "confidence_map", "cfog_channels", "bspline_prefilter"),
    ("lsm_point", "warp_bspline", "pyramid_down", "warp_bilinear", "symmetric_gradient",
     "warp_cubic", "masked_blur", "finish_flow", "cfog_mix", "cfog_normalise"),
)  # fmt: skip


def cache_dir() -> Path:
    """Where numba caches the kernels: ``NUMBA_CACHE_DIR`` if set, else beside the source."""
    env = os.environ.get("NUMBA_CACHE_DIR")
    return Path(env) if env else _KERNELS.parent / "__pycache__"


def stamp_path() -> Path:
    """The stamp of a compiled cache for these kernels, this numba, Python and machine."""
    key = hashlib.sha256(_KERNELS.read_bytes())
    for part in (metadata.version("numba"), sys.version, platform.machine(), str(cache_dir())):
        key.update(part.encode())
    return cache_dir() / f"costack-kernels-{key.hexdigest()[:16]}.compiled"


def compile_share(names: tuple[str, ...]) -> None:
    """Call each named kernel once on tiny inputs of the types :mod:`costack.registration.folki` and
    :mod:`costack.registration.matching` give it, so that numba compiles and caches that
    signature."""
    import numpy as np

    from costack.registration import _kernels as K

    f32, u8 = np.float32, np.uint8
    a = np.zeros((8, 8), f32)
    ok = np.ones((8, 8), u8)

    def planes(n: int) -> np.ndarray:
        return np.zeros((n, 8, 8), f32)

    calls = {
        "window_solve": lambda: K.window_solve(
            kind=K.SOLVE_FLOW, i1=a, i2w=a, a=a, b=a, wt=a, u=a, v=a, r=1, eps=f32(0),
            step=f32(0), nmin=f32(0), out1=a.copy(), out2=a.copy(), support=a.copy(), nbands=1,
        ),
        "rank_transform": lambda: K.rank_transform(a, ok, 1),
        "gradient5": lambda: K.gradient5(a, ok),
        "upsample_flow": lambda: K.upsample_flow(a, 16, 16),
        "weighted_trace": lambda: K.weighted_trace(a, a, a),
        "clahe": lambda: K.clahe(a, ok.astype(bool), 8, 256, 0.01),
        "lsm_point": lambda: K.lsm_point(
            np.zeros((1, 9)), np.zeros((1, 8, 8), f32), np.zeros((1, 8, 8), f32),
            np.zeros((1, 8, 8), f32), np.ones((1, 8, 8), f32), np.zeros(9), np.zeros(9),
            np.full(2, 4.0), 1, 3, 0, True, 1,
        ),
        "bspline_prefilter": lambda: K.bspline_prefilter(a, a.copy()),
        "warp_bspline": lambda: K.warp_bspline(a, ok, a, a, a.copy(), a.copy()),
        "pyramid_down": lambda: K.pyramid_down(a, a, np.zeros(6, f32)),
        "warp_bilinear": lambda: K.warp_bilinear(a, ok, a, a, a.copy(), a.copy()),
        "symmetric_gradient": lambda: K.symmetric_gradient(a, a, a, a, a, *planes(3)),
        "warp_cubic": lambda: K.warp_cubic(a, ok, a, a, a.copy(), a.copy()),
        "masked_blur": lambda: K.masked_blur(a, ok, np.ones(3)),
        "confidence_map": lambda: K.confidence_map(a, a, ok, 1.0, 1.0),
        "finish_flow": lambda: K.finish_flow(a, a, a, a, 0.0, 0.0, a, a.copy(), 24.0),
        "cfog_channels": lambda: K.cfog_channels(a, a, np.ones(8), np.ones(8)),
        "cfog_mix": lambda: K.cfog_mix(np.zeros((8, 8, 8), f32)),
        "cfog_normalise": lambda: K.cfog_normalise(np.zeros((8, 8, 8), f32), a, ok),
    }  # fmt: skip
    for name in names:
        calls[name]()


def prune_stale_cache() -> int:
    """Remove this Python's cache files of the kernels' earlier sources; return how many.

    Numba names a kernel's cache files by its qualified name and the line it starts on
    (``_kernels.window_solve-583.py311.nbi`` and ``.1.nbc``), so an edit that moves a kernel
    leaves its old files behind, unreachable: an editable install that follows the repository
    gathers megabytes per update (this checkout: 21 MB, 370 files, for 20 kernels). Files of
    the current sources and of other Python versions are kept. Relies on numba's cache
    attributes; with a numba that lays its cache out otherwise, nothing is removed."""
    import glob

    import numba

    from costack.registration import _kernels as K

    current: dict[Path, set[str]] = {}  # cache folder -> the current kernels' file stems
    pytag = None
    for disp in vars(K).values():
        if not isinstance(disp, numba.core.registry.CPUDispatcher):
            continue
        try:
            folder = Path(disp._cache._cache_path)
            stem = disp._cache._cache_file._index_name.removesuffix(".nbi")
        except AttributeError:  # not cached, or another numba's layout
            continue
        current.setdefault(folder, set()).add(stem)
        pytag = stem.rpartition("-")[2].partition(".")[2]  # "py311"
    if not pytag:
        return 0
    removed = 0
    for folder, stems in current.items():
        # this Python's files of the module, kernels renamed or removed since included
        for path in folder.glob(f"{glob.escape(_KERNELS.stem)}.*-*.{pytag}.*"):
            stem = path.name.partition(f".{pytag}.")[0] + f".{pytag}"
            if path.suffix in (".nbi", ".nbc") and stem not in stems:
                path.unlink(missing_ok=True)
                removed += 1
    return removed


def write_bytecode() -> None:
    """Byte-compile the package's modules where Python will not (``PYTHONDONTWRITEBYTECODE``
    set, as in many container images and on this project's machine): every process would
    otherwise compile costack's source again on import (``import costack.stages.flow``: 0.84 ->
    0.72 s
    measured). Files already compiled are only checked (a few milliseconds); a folder that is
    not writable is left as it is."""
    if not sys.dont_write_bytecode:
        return
    import compileall

    try:
        compileall.compile_dir(str(_PACKAGE), quiet=2, workers=1)
    except OSError:
        pass


def ensure_compiled(processes: int = 2, quiet: bool = False) -> bool:
    """Compile every kernel into numba's cache unless this install's stamp is there; returns
    whether it compiled. Nothing happens when the cache folder is not writable (numba then
    compiles in the jobs, as without this step).

    Runs that start together on one install (two terminals, a test suite's workers) take turns
    on a lock file beside the stamp: the first compiles, the others wait for it and then find
    the stamp, instead of compiling the same kernels side by side on the same cores."""
    write_bytecode()
    stamp = stamp_path()
    if stamp.exists():
        return False
    folder = stamp.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / "costack-kernels.lock", "a")  # held until compiled
    except OSError:
        return False
    with lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        except (ImportError, OSError):  # no POSIX locks here: compile without waiting
            pass
        if stamp.exists():  # another run compiled while this one waited
            return False
        if not quiet:
            print("costack: compiling the numba kernels once for this install (about 20 s)",
                  file=sys.stderr)  # fmt: skip
        shares = [SHARES[i::processes] for i in range(min(processes, len(SHARES)))]
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "costack.precompile", *(n for share in part for n in share)]
            )  # fmt: skip
            for part in shares
        ]
        if all(p.wait() == 0 for p in procs):
            stamp.write_text("numba kernels compiled into this folder's cache\n", encoding="utf-8")
            prune_stale_cache()
            return True
    return False


if __name__ == "__main__":
    compile_share(tuple(sys.argv[1:]))
