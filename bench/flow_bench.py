"""Dense-flow benchmark: costack beside scikit-image's iLK, the PyPI ``gefolki`` and OpenCV's
DeepFlow and DIS (medium preset; PyPI ``opencv-contrib-python-headless``) in one run.

Prints, for each case, mean/median end-point error (EPE, pixels) and wall time of every method
on the same inputs:

1. same sensor: a real image under a known field (affine + sinusoid), EFolki-type methods;
2. inverted contrast: the same with the secondary's contrast inverted (GEFolki-type);
3. radar/optical (shared UAVSAR pair): consistency EPE of a known field added to the radar;
4. nodata: a NaN strip in the secondary, passed as it is; EPE change outside a 16 px margin;
5. speed: a 2000x2000 pair (GEFolki mode for costack), wall time on this machine;
6. the demo run's flows against their stored truth (if results/ exists).

Real images come from ../shared/data when present, else from scikit-image's bundled images.
Usage: ``python bench/flow_bench.py [--quick]`` (needs ``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage import data
from skimage.registration import optical_flow_ilk

from costack.registration.evaluation import affine_sinusoid, displace, epe, interior
from costack.registration.folki import FlowParams, estimate_flow

warnings.filterwarnings("ignore")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
UAVSAR = (
    SHARED / "radar_optical_uavsar" / "lngley_05521_09059_000_090813_L090_CX_01_pauli_x016_y020"
)

Method = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def load_images() -> dict[str, np.ndarray]:
    """Real single-band images: UAVSAR optical/radar luminance and LIDAR, or skimage's."""
    out = {}
    if UAVSAR.with_name(UAVSAR.name + "_optique.tif").exists():
        import rasterio

        with rasterio.open(f"{UAVSAR}_optique.tif") as s:
            out["optical"] = s.read().astype(np.float32).mean(0)
        with rasterio.open(f"{UAVSAR}_radar.tif") as s:
            out["radar"] = s.read().astype(np.float32).mean(0)
        import imageio.v3 as iio

        out["lidar"] = iio.imread(SHARED / "gefolki_misc" / "lidar_georef.png").astype(np.float32)
    else:
        out["optical"] = data.camera().astype(np.float32)
        out["lidar"] = data.moon().astype(np.float32)
    return out


def costack(mode: str, radii: tuple[int, ...] | None = (16, 8)) -> Method:
    def run(a: np.ndarray, b: np.ndarray, **kw) -> tuple[np.ndarray, np.ndarray]:
        r = estimate_flow(a, b, FlowParams(mode=mode, radii=radii), **kw)
        return r.dx, r.dy

    return run


#: `costack flow`'s defaults: mode auto (the local contrast decides), radii by the mode
#: (32, 8 for EFolki, 16, 8 for GEFolki)
costack_default = costack("auto", None)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """8-bit input for OpenCV: the image's own 0.5-99.5 percentile range, NaN as 0."""
    finite = img[np.isfinite(img)]
    lo, hi = np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0)
    out = np.clip((img - lo) / max(hi - lo, 1e-12) * 255.0, 0, 255)
    return np.nan_to_num(out, nan=0.0).astype(np.uint8)


def opencv_method(name: str) -> Method | None:
    """OpenCV DeepFlow (Weinzaepfel et al. 2013) or DIS (Kroeger et al. 2016, medium preset);
    ``flow`` such that ``b`` at (x + flow) matches ``a`` at x, as costack's convention."""
    try:
        import cv2
    except ImportError:
        return None

    def run(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if name == "deepflow":
            algo = cv2.optflow.createOptFlow_DeepFlow()
        else:
            algo = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        flow = algo.calc(_to_uint8(a), _to_uint8(b), None)
        return flow[..., 0].astype(np.float32), flow[..., 1].astype(np.float32)

    return run


def ilk(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v, u = optical_flow_ilk(a, b, radius=8, num_warp=10)
    return u, v


def _restore_old_rescale_intensity() -> None:
    """pip gefolki's CLAHE indexes a lookup table with the output of scikit-image's
    ``rescale_intensity(uint16 image, out_range=(0, 4095))``, which older scikit-image returned
    in the input's integer type and today's returns as float (IndexError: arrays used as
    indices must be of integer type). Give gefolki's module the old behaviour (round and keep
    an integer input's type) so that the peer runs as its authors ran it."""
    import gefolki.adapthist as adapthist
    from skimage.exposure import rescale_intensity

    if getattr(adapthist.rescale_intensity, "costack_compat", False):
        return

    def compat(image, in_range="image", out_range="dtype"):
        out = rescale_intensity(image, in_range=in_range, out_range=out_range)
        if np.issubdtype(np.asarray(image).dtype, np.integer):
            out = np.round(out).astype(np.asarray(image).dtype)
        return out

    compat.costack_compat = True
    adapthist.rescale_intensity = compat


def gefolki_method(name: str, levels: int = 5) -> Method | None:
    try:
        import gefolki
    except ImportError:
        return None
    fn = getattr(gefolki, name)
    if name == "GEFolki":
        _restore_old_rescale_intensity()

    def run(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        kw = {"iteration": 2, "radius": list(range(32, 4, -4)), "levels": levels}
        if name != "Folki":
            kw["rank"] = 4
        u, v = fn(a, b, **kw)
        return np.asarray(u, np.float32), np.asarray(v, np.float32)

    return run


def timed(method: Method, a: np.ndarray, b: np.ndarray):
    t0 = time.perf_counter()
    try:
        dx, dy = method(a, b)
        return dx, dy, time.perf_counter() - t0, None
    except Exception as err:  # a peer failing is a result to print
        return None, None, time.perf_counter() - t0, f"{type(err).__name__}: {str(err)[:60]}"


def report(case: str, rows: list[tuple[str, str]]) -> None:
    print(f"\n## {case}")
    for name, text in rows:
        print(f"  {name:<22} {text}")


def score(method: Method, a, b, truth, mask) -> str:
    dx, dy, dt, err = timed(method, a, b)
    if err:
        return f"failed ({err}) after {dt:.1f} s"
    e = epe(dx, dy, truth, mask)
    return f"mean EPE {e.mean():.4f} px  median {np.median(e):.4f} px  time {dt:.2f} s"


DIS_SCRIPT = """
import sys, numpy as np, rasterio, cv2
def u8(p):
    with rasterio.open(p) as s:
        a = s.read(1).astype(np.float32); prof = s.profile
    lo, hi = np.percentile(a, [0.5, 99.5])
    return np.clip((a - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8), prof
a, prof = u8(sys.argv[1]); b, _ = u8(sys.argv[2])
f = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(a, b, None)
prof.update(count=2, dtype="float32")
with rasterio.open(sys.argv[3], "w", **prof) as d:
    d.write(np.moveaxis(f, -1, 0))
"""


def whole_process(ref: np.ndarray, sec: np.ndarray) -> list[tuple[str, str]]:
    """Wall time of `costack flow` (defaults) and of a Python process running OpenCV DIS on the
    same GeoTIFF pair, each start to end (imports, numba cache loading, reading, writing);
    the median of three."""
    import subprocess
    import sys
    import tempfile

    import rasterio
    from rasterio.transform import Affine

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        prof = dict(driver="GTiff", dtype="float32", count=1, height=ref.shape[0],
                    width=ref.shape[1], crs="EPSG:32631", tiled=True,
                    transform=Affine(10, 0, 500000, 0, -10, 5000000))  # fmt: skip
        for name, arr in (("ref", ref), ("sec", sec)):
            with rasterio.open(f"{tmp}/{name}.tif", "w", **prof) as dst:
                dst.write(arr.astype(np.float32), 1)
        commands = {
            "costack flow": [sys.executable, "-m", "costack.cli", "flow", f"{tmp}/ref.tif",
                             f"{tmp}/sec.tif", f"{tmp}/out.tif"],
            "OpenCV DIS medium": [sys.executable, "-c", DIS_SCRIPT, f"{tmp}/ref.tif",
                                  f"{tmp}/sec.tif", f"{tmp}/dis.tif"],
        }  # fmt: skip
        for name, cmd in commands.items():
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True)
                times.append(time.perf_counter() - t0)
                if proc.returncode != 0:
                    rows.append((name, f"failed: {proc.stderr.strip().splitlines()[-1][:80]}"))
                    break
            else:
                times.sort()
                rows.append((name, f"process {times[1]:.2f} s (median of 3: "
                                   f"{', '.join(f'{t:.2f}' for t in times)})"))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller images, no 2000x2000")
    args = parser.parse_args()
    size = 512 if args.quick else 1024
    imgs = load_images()
    field = {"shift": (2.3, -1.6), "amplitude": 1.5, "wavelength": 400.0}
    print("field: affine (shift 2.3, -1.6 px; linear terms 1e-3) + sinusoid 1.5 px / 400 px;")
    print("secondary made with a quintic spline; EPE over pixels >= 16 px from the border")
    for mode in ("efolki", "gefolki"):  # compile the kernels, import CLAHE
        estimate_flow(imgs["optical"][:64, :64], imgs["optical"][:64, :64], FlowParams(mode=mode))

    opencv = [("OpenCV DeepFlow", opencv_method("deepflow")),
              ("OpenCV DIS medium", opencv_method("dis"))]  # fmt: skip
    peers_same = [("costack defaults", costack_default), ("costack EFolki 16,8", costack("efolki")),
                  ("skimage iLK", ilk), ("gefolki EFolki", gefolki_method("EFolki")),
                  *opencv]  # fmt: skip
    for name in ("optical", "lidar"):
        img = imgs[name][:size, :size]
        sec, truth = displace(img, affine_sinusoid(img.shape, **field), order=5)
        mask = interior(img.shape, 16) & np.isfinite(sec)
        sec_filled = np.where(np.isfinite(sec), sec, 0).astype(np.float32)
        report(
            f"1. same sensor, {name} {size}x{size}",
            [(n, score(m, img, sec_filled, truth, mask)) for n, m in peers_same if m],
        )
        if name == "optical":  # an affine alone (no sinusoid): the smooth case
            sec_a, truth_a = displace(img, affine_sinusoid(img.shape, shift=field["shift"],
                                                           amplitude=0.0), order=5)  # fmt: skip
            mask_a = interior(img.shape, 16) & np.isfinite(sec_a)
            sec_a = np.where(np.isfinite(sec_a), sec_a, 0).astype(np.float32)
            report(
                f"1b. affine only (shift 2.3, -1.6 px; linear terms 1e-3), {name} {size}x{size}",
                [(n, score(m, img, sec_a, truth_a, mask_a))
                 for n, m in [("costack defaults", costack_default), *opencv] if m],
            )  # fmt: skip
        inv = (img.max() - sec_filled).astype(np.float32)
        peers_inv = [("costack defaults", costack_default),
                     ("costack GEFolki 16,8", costack("gefolki")), ("skimage iLK", ilk),
                     ("gefolki EFolki", gefolki_method("EFolki")),
                     ("gefolki GEFolki", gefolki_method("GEFolki")), *opencv]  # fmt: skip
        report(
            f"2. inverted contrast, {name} {size}x{size}",
            [(n, score(m, img, inv, truth, mask)) for n, m in peers_inv if m],
        )

    if "radar" in imgs:
        opt, radar = imgs["optical"][:size, :size], imgs["radar"][:size, :size]
        moved, truth = displace(radar, affine_sinusoid(opt.shape, **field), order=5)
        moved = np.where(np.isfinite(moved), moved, 0).astype(np.float32)
        mask = interior(opt.shape, 32)
        rows = []
        for n, m in [("costack defaults", costack_default),
                     ("costack GEFolki 16,8", costack("gefolki")), ("skimage iLK", ilk),
                     ("gefolki GEFolki", gefolki_method("GEFolki")), *opencv]:  # fmt: skip
            if m is None:
                continue
            d0 = timed(m, opt, radar)
            d1 = timed(m, opt, moved)
            if d0[3] or d1[3]:
                rows.append((n, f"failed ({d0[3] or d1[3]})"))
                continue
            err = np.hypot(d1[0] - d0[0] - truth[0], d1[1] - d0[1] - truth[1])[mask]
            err = err[np.isfinite(err)]
            rows.append((n, f"consistency EPE median {np.median(err):.4f} px  mean "
                            f"{err.mean():.4f} px  time {d1[2]:.2f} s"))  # fmt: skip
        report(f"3. radar/optical UAVSAR {size}x{size}, known field added to the radar", rows)

    img = imgs["optical"][:size, :size]
    sec, truth = displace(img, affine_sinusoid(img.shape, **field), order=5)
    sec = np.where(np.isfinite(sec), sec, 0).astype(np.float32)
    strip = np.zeros(img.shape, bool)
    strip[:, size // 2 : size // 2 + 12] = True
    far = interior(img.shape, 16) & ~ndimage.binary_dilation(strip, iterations=16)
    holed = sec.copy()
    holed[strip] = np.nan
    filled = sec.copy()
    filled[strip] = -9999.0
    rows = []
    for n, m in peers_same:
        if m is None:
            continue
        base = timed(m, img, sec)
        e0 = epe(base[0], base[1], truth, far).mean()
        for label, arr in (("NaN", holed), ("-9999", filled)):
            if n.startswith("costack") and label == "-9999":  # told the fill value
                got = (*m(img, arr, sec_nodata=-9999.0), 0.0, None)
            else:
                got = timed(m, img, arr)
            if got[3]:
                rows.append((f"{n} {label}", f"failed ({got[3]})"))
                continue
            e1 = epe(got[0], got[1], truth, far)
            e1m = float(e1.mean()) if e1.size else float("nan")
            rows.append((f"{n} {label}", f"EPE outside the strip {e0:.4f} -> {e1m:.4f} px "
                                         f"(change {e1m - e0:+.4f})"))  # fmt: skip
    report("4. nodata strip in the secondary, passed as it is", rows)

    if not args.quick:
        big = imgs["lidar"][:2000, :2000]
        if big.shape != (2000, 2000):
            big = np.tile(big, (4, 4))[:2000, :2000]
        sec, truth = displace(big, affine_sinusoid(big.shape, **field), order=3)
        sec = np.where(np.isfinite(sec), sec, 0).astype(np.float32)
        mask = interior(big.shape, 16)
        rows = []
        for n, m in [("costack defaults", costack_default),
                     ("costack GEFolki 16,8", costack("gefolki")),
                     ("costack EFolki 16,8", costack("efolki")), ("skimage iLK", ilk),
                     ("gefolki EFolki", gefolki_method("EFolki")), *opencv]:  # fmt: skip
            if m is None:
                continue
            text = score(m, big, sec, truth, mask)  # timed without tracing (it slows numpy)
            if n.startswith(("costack", "OpenCV DIS")):  # speed drifts: three runs, the median
                times = sorted([timed(m, big, sec)[2] for _ in range(2)] +
                               [float(text.split("time ")[1].split(" s")[0])])  # fmt: skip
                text = text.split("  time")[0] + (
                    f"  time {times[1]:.2f} s (median of 3: {', '.join(f'{t:.2f}' for t in times)})"
                )
            if not n.startswith(("gefolki", "OpenCV")):  # a second, traced run for the memory
                tracemalloc.start()
                timed(m, big, sec)
                text += f"  peak traced {tracemalloc.get_traced_memory()[1] / 2**20:.0f} MiB"
                tracemalloc.stop()
            rows.append((n, text))
        report("5. speed, 2000x2000 pair on 2 cores (time untraced)", rows)
        report("5b. whole process on the 2000x2000 pair as GeoTIFFs (read, flow, write)",
               whole_process(big, sec))  # fmt: skip

    demo = Path("results/flow")
    if demo.exists():
        from costack.io.rasters import read_flow_and_truth
        from costack.registration.evaluation import flow_metrics

        rows = []
        for n, truth_tif in (("2", "resources/demo/l8/truth.tif"),
                             ("3", "resources/demo/s1/truth.tif")):  # fmt: skip
            if (demo / f"{n}.tif").exists():
                m = flow_metrics(*read_flow_and_truth(demo / f"{n}.tif", truth_tif))
                rows.append(
                    (
                        f"dataset {n}",
                        f"mean EPE {m['mean_epe']:.3f} px  median "
                        f"{m['median_epe']:.3f} px  p90 {m['p90_epe']:.3f}",
                    )
                )
        report("6. demo run (results/flow) against resources/demo/*/truth.tif", rows)


if __name__ == "__main__":
    main()
