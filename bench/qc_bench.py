"""The QC and tie-point stages at scale: peak memory and time in memory against by blocks (QC)
and by tiles (tie points), on one synthetic pair (a textured reference, its copy shifted by
(0.4, -0.3) px as "before" and unshifted as "after"), and whether both give the same figures.

Run: ``python bench/qc_bench.py [--size 4096]``; each case runs in its own process and reports
that process's own high-water mark (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
from costack.stages.qc import run_qc
from costack.stages.tiepoints import TiePointParams, run_tiepoints
a = json.loads(sys.argv[1])
t0 = time.perf_counter()
if a.get("tiepoints"):
    m = run_tiepoints(a["ref"], a["before"], a["out"], None, None,
                      TiePointParams(multimodal=False), max_in_memory_pixels=a["max"])
    r = {"points": m.tiepoints, "coefficients": m.data["coefficients"]}
else:
    r = run_qc(a["ref"], a["before"], a["after"], a["out"], max_in_memory_pixels=a["max"])
hwm = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM"))
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mb": hwm / 1024, "qc": r}))
"""


def make_pair(folder: Path, size: int) -> tuple[Path, Path, Path]:
    import numpy as np
    from rasterio.crs import CRS
    from rasterio.transform import Affine
    from scipy import ndimage

    from costack.io.grids import Grid
    from costack.io.rasters import write_float32

    rng = np.random.default_rng(1)
    ref = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), 2.0)
    ref = (ref / ref.std() + 4.0).astype(np.float32)
    before = ndimage.shift(ref, (-0.3, 0.4), order=3, mode="nearest").astype(np.float32)
    grid = Grid(CRS.from_epsg(32631), Affine(10, 0, 500_000, 0, -10, 5_000_000), size, size)
    paths = []
    for name, a in (("ref", ref), ("before", before), ("after", ref)):
        write_float32(folder / f"{name}.tif", a, grid)
        paths.append(folder / f"{name}.tif")
    return tuple(paths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=4096, help="grid side in pixels")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ref, before, after = make_pair(folder, args.size)
        print(f"# bench/qc_bench.py: {args.size}x{args.size} grid, points every 24 px")
        got = {}
        for mode, mx in (("in memory", 10**12), ("by blocks", 0)):
            t0 = time.perf_counter()
            step = {"ref": str(ref), "before": str(before), "after": str(after),
                    "out": str(folder / "qc.json"), "max": mx}  # fmt: skip
            proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(step)],
                                  capture_output=True, text=True, check=True)  # fmt: skip
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            got[mode] = r["qc"]
            b, a = r["qc"]["before"], r["qc"]["after"]
            print(f"qc {mode:10s} {r['seconds']:7.1f} s  peak {r['peak_mb']:7.0f} MB  before "
                  f"{b['pixels']['median']:.4f} px median on {b['points']} points, after "
                  f"{a['pixels']['median']:.4f} px on {a['points']}  (process "
                  f"{time.perf_counter() - t0:.1f} s)")  # fmt: skip
        same = all(got["in memory"][w] == got["by blocks"][w] for w in ("before", "after"))
        print(f"qc: by blocks vs in memory, identical figures {same}")
        import numpy as np

        from costack.registration.tiepoint_model import apply_model

        fits = {}
        for mode, mx in (("in memory", 10**12), ("by tiles", 16_000_000)):
            step = {"ref": str(ref), "before": str(before), "out": str(folder / "tp.csv"),
                    "max": mx, "tiepoints": True}  # fmt: skip
            proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(step)],
                                  capture_output=True, text=True, check=True)  # fmt: skip
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            rr, cc = np.mgrid[0 : args.size : 64, 0 : args.size : 64] + 0.5
            px, py = apply_model("affine", np.asarray(r["qc"]["coefficients"]), cc, rr)
            fits[mode] = np.hypot(px - cc - 0.4, py - rr + 0.3)
            print(f"tiepoints {mode:10s} {r['seconds']:7.1f} s  peak {r['peak_mb']:7.0f} MB  "
                  f"{r['qc']['points']} points, affine off the true shift by "
                  f"{float(np.sqrt(np.mean(fits[mode] ** 2))):.2e} px RMS")  # fmt: skip


if __name__ == "__main__":
    main()
