"""Same-sensor flow figures and the 2000x2000 whole-process time of this checkout against another
source tree (e.g. main's ``src``), in one run, alternating, so that both are measured under the
same load.

Each measurement is a fresh process with ``PYTHONPATH`` set to the tree's ``src``:

- accuracy: ``costack``'s defaults (``estimate_flow`` mode ``auto``) on the same-sensor cases of
  bench/flow_bench.py sections 1 and 1b (optical and LIDAR 1024x1024, the affine alone), mean
  EPE;
- time: ``python -m costack.cli flow REF SEC OUT`` (defaults, untagged GeoTIFFs, as section 5b)
  on the 2000x2000 LIDAR pair, wall time start to end; ``--rounds`` rounds, each running the
  trees in turn (the order swapped every round), the median per tree.

Usage: ``python bench/ab_flow_bench.py --baseline-src /path/to/main/src [--rounds 5]`` from the
repository root (the baseline tree's numba cache is warmed by a first, unscored run).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]

ACCURACY = r"""
import sys, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, sys.argv[1])
import numpy as np
from flow_bench import load_images
from costack.registration.evaluation import affine_sinusoid, displace, interior
from costack.registration.folki import FlowParams, estimate_flow
imgs = load_images()
field = {"shift": (2.3, -1.6), "amplitude": 1.5, "wavelength": 400.0}
for name, amp in (("optical", 1.5), ("optical affine", 0.0), ("lidar", 1.5)):
    img = imgs[name.split()[0]][:1024, :1024]
    sec, truth = displace(img, affine_sinusoid(img.shape, **dict(field, amplitude=amp)), order=5)
    mask = interior(img.shape, 16) & np.isfinite(sec)
    sec = np.where(np.isfinite(sec), sec, 0).astype(np.float32)
    r = estimate_flow(img, sec, FlowParams(mode="auto"))
    err = np.hypot(r.dx - truth[0], r.dy - truth[1])[mask]
    print(f"{name}\t{np.nanmean(err):.5f}")
"""


def write_pair(folder: Path) -> tuple[Path, Path]:
    """flow_bench's 2000x2000 LIDAR pair (section 5) as untagged GeoTIFFs."""
    import rasterio
    from flow_bench import load_images
    from rasterio.transform import Affine

    from costack.registration.evaluation import affine_sinusoid, displace

    big = load_images()["lidar"][:2000, :2000]
    if big.shape != (2000, 2000):
        big = np.tile(big, (4, 4))[:2000, :2000]
    field = {"shift": (2.3, -1.6), "amplitude": 1.5, "wavelength": 400.0}
    sec, _ = displace(big, affine_sinusoid(big.shape, **field), order=3)
    sec = np.where(np.isfinite(sec), sec, 0).astype(np.float32)
    prof = dict(driver="GTiff", dtype="float32", count=1, height=2000, width=2000,
                crs="EPSG:32631", tiled=True,
                transform=Affine(10, 0, 500000, 0, -10, 5000000))  # fmt: skip
    paths = []
    for name, arr in (("ref", big), ("sec", sec)):
        paths.append(folder / f"{name}.tif")
        with rasterio.open(paths[-1], "w", **prof) as dst:
            dst.write(arr.astype(np.float32), 1)
    return paths[0], paths[1]


def run(src: Path, args: list[str]) -> tuple[float, str]:
    env = dict(os.environ, PYTHONPATH=str(src), PYTHONWARNINGS="ignore")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          cwd=ROOT)  # fmt: skip
    dt = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return dt, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--baseline-src", required=True, type=Path)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    trees = {"this checkout": ROOT / "src", "baseline": a.baseline_src.resolve()}
    bench = str(Path(__file__).resolve().parent)
    print("## same-sensor accuracy, costack defaults (mean EPE, px)")
    acc = {k: run(src, ["-c", ACCURACY, bench])[1] for k, src in trees.items()}
    rows = {k: dict(line.split("\t") for line in v.strip().splitlines()) for k, v in acc.items()}
    for case in rows["baseline"]:
        b, c = float(rows["baseline"][case]), float(rows["this checkout"][case])
        print(f"  {case:<16} baseline {b:.5f}  this checkout {c:.5f}  change "
              f"{100 * (c / b - 1):+.2f} %")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        ref, sec = write_pair(Path(tmp))
        cmd = ["-m", "costack.cli", "flow", str(ref), str(sec), f"{tmp}/out.tif"]
        for src in trees.values():  # warm each tree's numba cache, unscored
            run(src, cmd)
        times: dict[str, list[float]] = {k: [] for k in trees}
        for i in range(a.rounds):
            order = list(trees) if i % 2 == 0 else list(trees)[::-1]
            for k in order:
                times[k].append(run(trees[k], cmd)[0])
    print(f"\n## whole process, costack flow on the 2000x2000 pair ({a.rounds} rounds, "
          "alternating)")  # fmt: skip
    med = {k: float(np.median(v)) for k, v in times.items()}
    for k, v in times.items():
        print(f"  {k:<14} median {med[k]:.2f} s  ({', '.join(f'{t:.2f}' for t in v)})")
    print(f"  ratio this checkout / baseline: {med['this checkout'] / med['baseline']:.3f} "
          f"(target <= 1.3)")  # fmt: skip


if __name__ == "__main__":
    main()
