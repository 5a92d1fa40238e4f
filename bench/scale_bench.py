"""Scale benchmark: a 10980x10980 pair (one Sentinel-2 tile at 10 m) through flow and warp.

Builds a co-located pair from a real image (the LIDAR image of ../shared/data, mirrored to the
tile size, else scikit-image's moon) under a known field (affine + sinusoid), then runs
``costack flow`` and ``costack warp`` as separate processes and prints their wall time, peak
resident memory (each step's own VmHWM) and the
flow's EPE on a sample of the tile.

Usage: ``python bench/scale_bench.py [--size 10980] [--workdir /tmp/costack-scale]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine
from scipy import ndimage

from costack.registration.evaluation import affine_sinusoid

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def base_image() -> np.ndarray:
    lidar = SHARED / "gefolki_misc" / "lidar_georef.png"
    if lidar.exists():
        import imageio.v3 as iio

        return iio.imread(lidar).astype(np.float32)
    from skimage import data

    return data.moon().astype(np.float32)


def build(workdir: Path, size: int) -> tuple[Path, Path]:
    """Write ref.tif and sec.tif (the reference under a known field), block by block."""
    img = base_image()
    reps = int(np.ceil(size / img.shape[0])) + 1
    tiled = np.block([[img if (i + j) % 2 == 0 else img[:, ::-1] for j in range(reps)]
                      for i in range(reps)])[:size, :size]  # fmt: skip
    field = affine_sinusoid((size, size), amplitude=1.5, wavelength=400.0,
                            linear=(2e-4, -1e-4, 1.5e-4, 1e-4))  # fmt: skip
    profile = dict(driver="GTiff", dtype="float32", count=1, height=size, width=size,
                   crs=CRS.from_epsg(32631), transform=Affine(10, 0, 500_000, 0, -10, 6_000_000),
                   tiled=True, blockxsize=512, blockysize=512, nodata=np.nan)  # fmt: skip
    ref_path, sec_path = workdir / "ref.tif", workdir / "sec.tif"
    with rasterio.open(ref_path, "w", **profile) as dst:
        dst.write(tiled, 1)
    block = 512
    coef = ndimage.spline_filter(tiled, order=3, output=np.float32)
    with rasterio.open(sec_path, "w", **profile) as dst:
        for r0 in range(0, size, block):
            rows = np.arange(r0, min(size, r0 + block), dtype=np.float64)
            rr, cc = np.meshgrid(rows, np.arange(size, dtype=np.float64), indexing="ij")
            ex, ey = field(cc + 0.5, rr + 0.5)
            vals = ndimage.map_coordinates(coef, [rr - ey, cc - ex], order=3, mode="constant",
                                           cval=np.nan, prefilter=False)  # fmt: skip
            dst.write(vals.astype(np.float32)[None],
                      window=rasterio.windows.Window(0, r0, size, rows.size))  # fmt: skip
    return ref_path, sec_path


#: Runs ``costack`` and writes the process's own peak resident set (VmHWM, kB) to a file: a
#: child's ``ru_maxrss`` would carry the driver's high-water mark over fork and exec.
_WRAP = """
import runpy, sys
out, sys.argv = sys.argv[1], ["costack", *sys.argv[2:]]
try:
    runpy.run_module("costack.cli", run_name="__main__")
finally:
    hwm = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM"))
    open(out, "w").write(str(hwm))
"""


def run(args: list[str], work: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (GiB, the child's own VmHWM) of ``costack ARGS``."""
    hwm = work / "hwm.txt"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", _WRAP, str(hwm), *args], check=True)
    wall = time.perf_counter() - t0
    return wall, int(hwm.read_text()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=10980)
    parser.add_argument("--workdir", default="/tmp/costack-scale")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ref, sec = build(work, args.size)
    print(f"built a {args.size}x{args.size} pair in {time.perf_counter() - t0:.0f} s")
    # costack flow's defaults (radii by the mode: 32, 8 here)
    flow_s, flow_gb = run(["-v", "flow", str(ref), str(sec), str(work / "flow.tif")], work)
    warp_s, warp_gb = run(["-v", "warp", str(sec), str(work / "flow.tif"),
                           str(work / "warped.tif")], work)  # fmt: skip
    print(f"flow: {flow_s:.1f} s wall, peak RSS {flow_gb:.2f} GiB (the process's own)")
    print(f"warp: {warp_s:.1f} s wall, peak RSS {warp_gb:.2f} GiB (the process's own)")
    print(f"flow + warp: {flow_s + warp_s:.1f} s wall (target <= 90 s, <= 2.0 GiB)")
    # accuracy on a sample window of the tile
    field = affine_sinusoid((args.size, args.size), amplitude=1.5, wavelength=400.0,
                            linear=(2e-4, -1e-4, 1.5e-4, 1e-4))  # fmt: skip
    win = rasterio.windows.Window(args.size // 2, args.size // 2, 512, 512)
    with rasterio.open(work / "flow.tif") as f:
        d = f.read(window=win)
    rr, cc = np.mgrid[0:512, 0:512].astype(np.float64) + args.size // 2 + 0.5
    dx, dy = np.zeros_like(rr), np.zeros_like(cc)
    for _ in range(50):
        dx, dy = field(cc + dx, rr + dy)
    err = np.hypot(d[0] - dx, d[1] - dy)
    print(f"EPE on a 512x512 sample at the centre: mean {np.nanmean(err):.4f} px")


if __name__ == "__main__":
    main()
