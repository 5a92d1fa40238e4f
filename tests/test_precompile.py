"""The numba kernels compiled once per install (src/costack/precompile.py, the Snakefile's
onstart) at the very signatures the stages call them with: after the warm-up, the flow in
every mode and interpolation, the tie points, the QC re-matching and the warp compile nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.workflow

#: every kernel call of the stages, on small real-looking inputs; prints the kernels numba
#: compiled (their names), which must be none after the warm-up
STAGES = r"""
import json, numpy as np
from numba.core import event
compiled = []
class Rec(event.Listener):
    def on_start(self, ev):
        d = ev.data["dispatcher"]
        if d.py_func.__module__ == "costack._kernels":
            compiled.append(d.py_func.__name__)
    def on_end(self, ev):
        pass
event.register("numba:compile", Rec())
from scipy import ndimage
from skimage import data
from costack.evaluation import displace
from costack.folki import FlowParams, estimate_flow
from costack.imaging import warp_array
from costack.matching import lsm, prepare
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
print(json.dumps(sorted(set(compiled))))
"""


def test_precompiled_kernels_serve_every_stage(tmp_path):
    """In a new numba cache: the warm-up compiles (and stamps), a second warm-up does nothing,
    and the stages then compile no kernel of their own."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))

    def python(code: str) -> str:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=env, timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout.strip()

    warm = "from costack.precompile import ensure_compiled; print(ensure_compiled(quiet=True))"
    assert python(warm) == "True"
    assert list((tmp_path / "numba").glob("costack-kernels-*.compiled"))
    assert python(warm) == "False"
    assert json.loads(python(STAGES).splitlines()[-1]) == []


def test_without_the_warm_up_the_stages_would_compile(tmp_path):
    """The recorder of the test above sees compilations when there was no warm-up (so an
    empty list there is evidence, not a listener that never fires); the warp alone, the
    cheapest kernel to compile."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    body = STAGES.index("for mode in (")
    code = STAGES[:body] + STAGES[STAGES.index("warp_array(sec,") :]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == ["warp_bilinear"]
