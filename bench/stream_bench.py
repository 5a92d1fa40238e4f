"""Streaming co-location and band math at scale: peak memory and time, in memory against
streamed, on one synthetic Sentinel-2-like scene (UInt16 DN with a scale, a nodata border)
reprojected from UTM 32 onto a UTM 31 grid, and an NDVI-like expression on the result.
Peak memory is each step's own process's high-water mark (VmHWM).

Run: ``python bench/stream_bench.py [--size 12000]``; each case runs in its own process so its
peak RSS is its own. Prints one line per case and whether the outputs are the same bytes.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
from costack.io.grids import Grid
from costack.stages.colocate import colocate_array, colocate_asset
from costack.io.rasters import write_float32
from costack.stages.bandmath import run_bandmath
args = json.loads(sys.argv[1])
t0 = time.perf_counter()
if args["step"] == "colocate":
    grid = Grid.load(args["grid"])
    radiometry = dict(scale=0.0001, offset=-0.1, nodata=0.0)
    if args["max"]:  # the whole source and grid in memory (colocate_array)
        write_float32(args["out"], *colocate_array(args["src"], grid, **radiometry)[:1], grid)
    else:
        colocate_asset(args["src"], grid, args["out"], **radiometry)
else:
    run_bandmath(args["expr"], args["rasters"], args["out"], max_in_memory_bytes=args["max"])
# VmHWM: this process's own peak (ru_maxrss would carry the parent's over fork and exec)
hwm = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM"))
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mb": hwm / 1024}))
"""


def make_scene(folder: Path, size: int) -> tuple[Path, Path, Path]:
    """Two UInt16 bands (nodata 0 border) in UTM 32 and a 10 m grid over them in UTM 31."""
    import numpy as np
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import Affine
    from rasterio.warp import transform_bounds

    from costack.io.grids import Grid

    t = Affine(10, 0, 300_000, 0, -10, 5_100_000)
    profile = dict(driver="GTiff", dtype="uint16", count=1, width=size, height=size,
                   crs=CRS.from_epsg(32632), transform=t, nodata=0, tiled=True,
                   compress="zstd", BIGTIFF="IF_SAFER")  # fmt: skip
    rng = np.random.default_rng(0)
    paths = []
    for name, base in (("nir", 3000), ("red", 800)):
        path = folder / f"{name}.tif"
        with rasterio.open(path, "w", **profile) as dst:
            for r0 in range(0, size, 1024):
                h = min(1024, size - r0)
                r, c = np.mgrid[r0 : r0 + h, 0:size]
                block = base + 500 * np.sin(c / 300.0) * np.cos(r / 200.0)
                block += rng.normal(0, 50, block.shape)
                block = np.clip(block, 1, 65535).astype("uint16")
                block[:, :64] = 0
                dst.write(block, 1, window=rasterio.windows.Window(0, r0, size, h))
        paths.append(path)
    b = transform_bounds(CRS.from_epsg(32632), CRS.from_epsg(32631),
                         *rasterio.transform.array_bounds(size, size, t))  # fmt: skip
    w, h = int((b[2] - b[0]) // 10) // 2, int((b[3] - b[1]) // 10) // 2
    cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    grid = Grid(CRS.from_epsg(32631), Affine(10, 0, cx - w * 5, 0, -10, cy + h * 5), w, h)
    grid.save(folder / "grid.json")
    return paths[0], paths[1], folder / "grid.json"


def run(step: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(step)], capture_output=True,
                          text=True, check=True)  # fmt: skip
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=12000, help="source side in pixels")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        nir, red, grid = make_scene(folder, args.size)
        g = json.loads(grid.read_text())
        print(
            f"scene {args.size}x{args.size} UInt16 in UTM 32 -> grid {g['width']}x"
            f"{g['height']} in UTM 31 (made in {time.perf_counter() - t0:.0f} s)"
        )
        import numpy as np
        import rasterio

        outs = {}
        for mode, mx in (("in memory", 10**13), ("streamed", 0)):
            for name, src in (("nir", nir), ("red", red)):
                out = folder / f"{name}.{mode[:2]}.tif"
                r = run({"step": "colocate", "src": str(src), "grid": str(grid),
                         "out": str(out), "max": mx})  # fmt: skip
                outs[(name, mode)] = out
                print(
                    f"colocate {name:4s} {mode:10s} {r['seconds']:7.1f} s  peak "
                    f"{r['peak_mb']:7.0f} MB"
                )
        for name in ("nir", "red"):
            with (
                rasterio.open(outs[(name, "in memory")]) as a,
                rasterio.open(outs[(name, "streamed")]) as b,
            ):
                x, y = a.read(1), b.read(1)
            same = np.array_equal(x, y, equal_nan=True)
            d = float(np.nanmax(np.abs(x - y)))
            print(
                f"colocate {name}: streamed vs in memory: identical {same}, max |difference| "
                f"{d:.3g} (mean value {np.nanmean(x):.3f}), nodata masks equal "
                f"{bool((np.isnan(x) == np.isnan(y)).all())}"
            )
        rasters = {"1.nir": str(outs[("nir", "streamed")]), "1.red": str(outs[("red", "streamed")])}
        expr = "nd:(/ (- 1.nir (mean 1.nir)) (+ 1.nir 1.red))"
        res = {}
        for mode, mx in (("in memory", 10**13), ("by strips", 0)):
            out = folder / f"nd.{mode[:2]}.tif"
            r = run({"step": "bandmath", "expr": expr, "rasters": rasters, "out": str(out),
                     "max": mx})  # fmt: skip
            res[mode] = out
            print(f"bandmath {mode:10s} {r['seconds']:7.1f} s  peak {r['peak_mb']:7.0f} MB")
        with rasterio.open(res["in memory"]) as a, rasterio.open(res["by strips"]) as b:
            diff = float(np.nanmax(np.abs(a.read(1) - b.read(1))))
        print(f"bandmath: by strips vs in memory, max |difference| {diff:.3g}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak of this driver process {peak:.0f} MB")


if __name__ == "__main__":
    main()
