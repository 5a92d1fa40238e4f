"""The numba kernels compiled once per install (src/costack/precompile.py, the Snakefile's
onstart) at the very signatures the stages call them with, and the stamp that makes later runs
skip the warm-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.workflow

#: the signatures each kernel of costack.registration._kernels was called with in this process
SIGNATURES = r"""
import json
from numba.core.registry import CPUDispatcher
from costack.registration import _kernels as K
print(json.dumps({n: sorted(str(s) for s in d.signatures) for n, d in vars(K).items()
                  if isinstance(d, CPUDispatcher) and d.signatures}))
"""

#: every kernel call of the stages, on small real-looking inputs
STAGES = r"""
import numpy as np
from scipy import ndimage
from skimage import data
from costack.registration.evaluation import displace
from costack.registration.folki import FlowParams, estimate_flow
from costack.registration.imaging import warp_array
from costack.registration.matching import lsm, prepare
img = ndimage.gaussian_filter(data.camera().astype(np.float32), 1.0)[:160, :160]
sec, _ = displace(img, lambda c, r: (0.6 + 0 * c, -0.4 + 0 * r), order=5)
sec[:, :8] = np.nan
for mode in ("efolki", "gefolki", "folki", "auto"):
    for interp in ("bspline", "cubic", "bilinear"):
        estimate_flow(img, sec, FlowParams(mode=mode, interpolation=interp))
estimate_flow(img, -sec, FlowParams(mode="auto"))
ok1, ok2 = np.isfinite(img), np.isfinite(sec)
for multimodal in (False, True):
    m = prepare(img, ok1, np.where(ok2, sec, 0), ok2, multimodal)
    lsm(m, (80.5, 80.5), (80.5, 80.5), 17)
warp_array(sec, np.zeros_like(sec), np.zeros_like(sec))
"""

WARM_UP = r"""
from costack.precompile import SHARES, compile_share
compile_share(tuple(n for share in SHARES for n in share))
"""


def _signatures(code: str) -> dict[str, list[str]]:
    proc = subprocess.run([sys.executable, "-c", code + SIGNATURES], capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_warm_up_compiles_every_signature_the_stages_call():
    """The flow in every mode and interpolation, LSM on intensities and on CFOG descriptors,
    and the warp call each top-level kernel only with signatures the warm-up compiles (in
    numba's cache of this checkout: loads, after the demo, not compilations)."""
    stages, warm = _signatures(STAGES), _signatures(WARM_UP)
    assert {"window_solve", "lsm_point", "rank_transform", "clahe", "warp_bspline",
            "masked_blur"} <= set(stages)  # fmt: skip
    for name, signatures in stages.items():
        assert set(signatures) <= set(warm.get(name, [])), (name, signatures, warm.get(name))


def test_the_warm_up_leaves_a_stamp_and_runs_once(tmp_path, monkeypatch):
    """In a new numba cache (two small kernels, one per process): the first call compiles and
    stamps, the second finds the stamp and does nothing. masked_blur and upsample_flow are the
    kernels quickest to compile (about 1.9 CPU-s each; warp_bilinear 2.8, window_solve more)."""
    from costack import precompile

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))
    monkeypatch.setattr(precompile, "SHARES", (("masked_blur",), ("upsample_flow",)))
    assert precompile.ensure_compiled(processes=2, quiet=True) is True
    assert precompile.stamp_path().exists()
    assert list((tmp_path / "numba").rglob("*masked_blur*.nbi"))
    assert list((tmp_path / "numba").rglob("*upsample_flow*.nbi"))
    assert precompile.ensure_compiled(processes=2, quiet=True) is False


def test_runs_that_start_together_compile_once(tmp_path):
    """Two runs starting at once on a new cache: one compiles, the other waits on the lock and
    then finds the stamp (both finish, and only one says it compiled)."""
    script = (
        "import sys; from costack import precompile; "
        "precompile.SHARES = (('masked_blur',), ('upsample_flow',)); "
        "print(precompile.ensure_compiled(processes=2, quiet=True))"
    )
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    procs = [
        subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    said = sorted(p.communicate(timeout=300)[0].strip() for p in procs)
    assert [p.returncode for p in procs] == [0, 0]
    assert said == ["False", "True"], said


def test_bytecode_is_written_where_python_would_not(tmp_path, monkeypatch):
    """With PYTHONDONTWRITEBYTECODE (sys.dont_write_bytecode) every process would compile the
    package's source again; the warm-up writes the bytecode once, where Python reads it."""
    import importlib.util

    from costack import precompile

    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "_kernels.py").write_text("X = 1\n", encoding="utf-8")
    (pkg / "stage.py").write_text("Y = 2\n", encoding="utf-8")
    monkeypatch.setattr(precompile, "_KERNELS", pkg / "_kernels.py")
    monkeypatch.setattr(precompile, "_PACKAGE", pkg)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    precompile.write_bytecode()
    for name in ("_kernels.py", "stage.py"):
        assert Path(importlib.util.cache_from_source(str(pkg / name))).exists(), name


def test_idle_kernel_threads_wait_passively_unless_the_user_says():
    """The kernels' OpenMP threads do not spin-wait between parallel regions (the package
    sets OMP_WAIT_POLICY=PASSIVE before numba loads libgomp), unless the user chose a policy;
    checked in fresh processes by the spin count libgomp itself reports (OMP_DISPLAY_ENV): 0
    passive, 300000 by default (it reports that as "PASSIVE" too), 3e10 active."""
    code = (
        "import numpy as np; from costack.registration import _kernels as K; "
        "K.rank_transform(np.zeros((8, 8), np.float32), np.ones((8, 8), np.uint8), 1)"
    )
    for given, expected in ((None, "0"), ("ACTIVE", "30000000000")):
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        env["OMP_DISPLAY_ENV"] = "VERBOSE"
        if given:
            env["OMP_WAIT_POLICY"] = given
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert f"GOMP_SPINCOUNT = '{expected}'" in proc.stderr, proc.stderr[-2000:]


def test_stale_cache_files_are_pruned_and_current_ones_kept():
    """The cache files of kernels' earlier sources (another start line, a kernel since removed)
    go once the kernels are compiled; the current kernels' files and another Python's stay."""
    import numba

    from costack.precompile import compile_share, prune_stale_cache
    from costack.registration import _kernels as K

    compile_share(("weighted_trace",))  # at least one current kernel in the cache
    folder = Path(K.window_solve._cache._cache_path)
    folder.mkdir(parents=True, exist_ok=True)
    tag = f"{sys.version_info.major}{sys.version_info.minor}"
    other = "py310" if tag != "310" else "py312"
    n = os.getpid()
    stale = [folder / f"_kernels.window_solve-{n}.py{tag}.nbi",
             folder / f"_kernels.window_solve-{n}.py{tag}.1.nbc",
             folder / f"_kernels.kernel_gone_{n}-12.py{tag}.nbi"]  # fmt: skip
    kept = folder / f"_kernels.window_solve-{n}.{other}.nbi"
    for path in (*stale, kept):
        path.write_bytes(b"")
    current = {p for p in folder.glob(f"_kernels.*.py{tag}.*")
               if p.suffix in (".nbi", ".nbc") and p not in stale}  # fmt: skip
    dispatchers = [d for d in vars(K).values() if isinstance(d, numba.core.registry.CPUDispatcher)]
    trace = K.weighted_trace._cache._cache_file._index_name
    assert (folder / trace).exists()
    try:
        assert prune_stale_cache() >= len(stale)
        assert not any(p.exists() for p in stale)
        assert kept.exists() and (folder / trace).exists()
        # every file of the current sources is still there (nothing to recompile)
        assert all(p.exists() for p in current if any(
            p.name.startswith(d._cache._cache_file._index_name.removesuffix(".nbi") + ".")
            for d in dispatchers))  # fmt: skip
    finally:
        for path in (*stale, kept):
            path.unlink(missing_ok=True)
