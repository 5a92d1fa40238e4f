"""Benchmark of the tie-point step (Yan et al. 2016) against known geometry, in one run.

Cases:
1. the demo's optical pair (10 m reference, 30 m secondary, known affine; ``results/colocated``
   of a demo run) and its SAR/optical pair: tie points, their error against the stored truth,
   and the fitted affine's error against the truth over the whole grid;
2. same-resolution real images (UAVSAR optical 1024x1024 and the LIDAR DEM 2000x2000 from
   ../shared/data, else scikit-image's) moved by a known affine: fitted affine against it;
3. the step's wall time and peak memory (RSS of a ``costack tiepoints`` process) on the
   2000x2000 pair.

Each case also runs a peer of the field: scikit-image ORB features, descriptor matching and a
RANSAC affine (``skimage.feature.ORB`` + ``skimage.measure.ransac``).
Usage: ``python bench/tiepoints_bench.py`` (from the repository root).
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from costack.registration.evaluation import displace
from costack.registration.tiepoint_model import apply_model, fit_models
from costack.stages.tiepoints import TiePointParams, match_tiepoints

warnings.filterwarnings("ignore")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
UAVSAR = (
    SHARED
    / "radar_optical_uavsar"
    / ("lngley_05521_09059_000_090813_L090_CX_01_pauli_x016_y020_optique.tif")
)
LIDAR = SHARED / "gefolki_misc" / "lidar_georef.png"
#: known affine about the image centre: shift (px) and linear terms (dx/dcol, dx/drow, ...)
SHIFT, LIN = (2.3, -1.6), (0.002, -0.001, 0.0015, 0.001)


def affine_field(shape: tuple[int, int]):
    h, w = shape

    def e(c: np.ndarray, r: np.ndarray):
        return (SHIFT[0] + LIN[0] * (c - w / 2) + LIN[1] * (r - h / 2),
                SHIFT[1] + LIN[2] * (c - w / 2) + LIN[3] * (r - h / 2))  # fmt: skip

    return e


def grid_error(name: str, coef, truth: np.ndarray) -> float:
    """RMSE over the grid of a model's displacement against a truth field (2, H, W)."""
    h, w = truth.shape[1:]
    rr, cc = np.mgrid[0:h, 0:w] + 0.5
    px, py = apply_model(name, np.asarray(coef), cc, rr)
    err = np.hypot(px - cc - truth[0], py - rr - truth[1])
    return float(np.sqrt(np.nanmean(err**2)))


def costack_case(ref, sec, truth, params: TiePointParams) -> str:
    t0 = time.perf_counter()
    df = match_tiepoints(ref, sec, params)
    dt = time.perf_counter() - t0
    if len(df) == 0:
        return f"0 tie points ({dt:.1f} s)"
    r = (df.ref_row.to_numpy() - 0.5).astype(int)
    c = (df.ref_col.to_numpy() - 0.5).astype(int)
    e = np.hypot(df.dx.to_numpy() - truth[0, r, c], df.dy.to_numpy() - truth[1, r, c])
    model, df = fit_models(df)
    aff = model.data["models"].get("affine")
    aff_err = grid_error("affine", aff["coefficients"], truth) if aff else float("nan")
    return (f"{len(df):4d} tie points ({model.data['outliers']} outliers)  tie-point RMSE "
            f"{np.sqrt(np.mean(e**2)):.3f} px  affine vs truth {aff_err:.3f} px  "
            f"model {model.chosen}  {dt:.1f} s")  # fmt: skip


def orb_case(ref, sec, truth) -> str:
    """Peer: ORB keypoints, cross-checked descriptor matches, RANSAC affine (scikit-image)."""
    from skimage.feature import ORB, match_descriptors
    from skimage.measure import ransac
    from skimage.transform import AffineTransform

    def prep(a):
        ok = np.isfinite(a)
        lo, hi = np.percentile(a[ok], [1, 99])
        return np.clip((np.where(ok, a, lo) - lo) / max(hi - lo, 1e-9), 0, 1)

    t0 = time.perf_counter()
    try:
        orb = ORB(n_keypoints=2000, fast_threshold=0.05)
        orb.detect_and_extract(prep(ref))
        k1, d1 = orb.keypoints, orb.descriptors
        orb.detect_and_extract(prep(sec))
        k2, d2 = orb.keypoints, orb.descriptors
        m = match_descriptors(d1, d2, cross_check=True, max_ratio=0.8)
        src, dst = k1[m[:, 0]][:, ::-1] + 0.5, k2[m[:, 1]][:, ::-1] + 0.5  # (col, row)
        model, inl = ransac((src, dst), AffineTransform, min_samples=3, residual_threshold=1.0,
                            max_trials=2000, rng=0)  # fmt: skip
    except Exception as err:  # a peer failing is a result to print
        return f"failed ({type(err).__name__}: {str(err)[:50]})"
    dt = time.perf_counter() - t0
    if model is None:
        return f"no model ({len(m)} matches, {dt:.1f} s)"
    coef = np.array([[model.params[0, 2], model.params[0, 0], model.params[0, 1]],
                     [model.params[1, 2], model.params[1, 0], model.params[1, 1]]])  # fmt: skip
    return (
        f"{int(inl.sum()):4d} inliers of {len(m)} matches  affine vs truth "
        f"{grid_error('affine', coef, truth):.3f} px  {dt:.1f} s"
    )


def report(case: str, rows: list[tuple[str, str]]) -> None:
    print(f"\n## {case}")
    for name, text in rows:
        print(f"  {name:<18} {text}")


def demo_cases() -> None:
    col = Path("results/colocated")
    if not (col / "1.nir.tif").exists():
        print("\n## 1. demo: run `snakemake --cores 2` first (results/colocated is missing)")
        return
    import rasterio
    from rasterio.windows import from_bounds

    from costack.io.rasters import read_float32
    from costack.registration.imaging import resolution_sigma

    ref, grid, _ = read_float32(col / "1.nir.tif")
    for key, truth_tif, multimodal, ratio in (
        ("2.nir", "resources/demo/l8/truth.tif", False, 3.0),
        ("3.s0_db_c_vv", "resources/demo/s1/truth.tif", True, 2.0),
    ):
        sec, _, _ = read_float32(col / f"{key}.tif")
        with rasterio.open(truth_tif) as t:
            win = from_bounds(*grid.bounds, transform=t.transform).round_offsets().round_lengths()
            truth = t.read(window=win).astype(np.float64)
        params = TiePointParams(
            multimodal=multimodal, reference_blur=0.0 if multimodal else resolution_sigma(ratio)
        )
        rows = [("costack (Yan)", costack_case(ref, sec, truth, params))]
        if not multimodal:
            rows.append(("skimage ORB+RANSAC", orb_case(ref, sec, truth)))
        report(f"1. demo {key} against 1.nir ({ref.shape[1]}x{ref.shape[0]} grid)", rows)


def load(path: Path, fallback) -> np.ndarray:
    if not path.exists():
        return fallback().astype(np.float32)
    if path.suffix == ".png":
        import imageio.v3 as iio

        return iio.imread(path).astype(np.float32)
    import rasterio

    with rasterio.open(path) as s:
        return s.read().astype(np.float32).mean(0)


def step_timing(img: np.ndarray, sec: np.ndarray) -> str:
    """Wall time and peak RSS of `costack tiepoints` on the pair written as GeoTIFFs."""
    import rasterio
    from rasterio.transform import from_origin

    with tempfile.TemporaryDirectory() as tmp:
        prof = dict(driver="GTiff", width=img.shape[1], height=img.shape[0], count=1,
                    dtype="float32", crs="EPSG:32631", transform=from_origin(0, 0, 10, 10),
                    nodata=float("nan"))  # fmt: skip
        for name, a in (("ref", img), ("sec", sec)):
            with rasterio.open(f"{tmp}/{name}.tif", "w", **prof) as dst:
                dst.write(a.astype(np.float32), 1)
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "costack.cli", "tiepoints", f"{tmp}/ref.tif",
             f"{tmp}/sec.tif", f"{tmp}/out.csv"],
            check=True, capture_output=True,
        )  # fmt: skip
        dt = time.perf_counter() - t0
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return f"wall {dt:.1f} s (process, I/O and plot included)  peak RSS {rss:.0f} MB"


def main() -> None:
    from skimage import data

    print("# bench/tiepoints_bench.py: Yan et al. 2016 tie points against known geometry")
    print(f"known affine: shift {SHIFT} px, linear terms {LIN} about the image centre")
    demo_cases()
    for label, path, fallback, size in (
        ("UAVSAR optical", UAVSAR, data.camera, 1024),
        ("LIDAR DEM", LIDAR, data.moon, 2000),
    ):
        img = load(path, fallback)[:size, :size]
        sec, truth = displace(img, affine_field(img.shape), order=5)
        rows = [
            ("costack (Yan)", costack_case(img, sec, truth, TiePointParams())),
            ("skimage ORB+RANSAC", orb_case(img, sec, truth)),
        ]
        if size == 2000:
            rows.append(("costack step", step_timing(img, sec)))
        report(f"2. same resolution, {label} {img.shape[1]}x{img.shape[0]}, known affine", rows)
    radar_tif = Path(str(UAVSAR).replace("_optique.tif", "_radar.tif"))
    if radar_tif.exists():
        text = radar_consistency(load(UAVSAR, None), load(radar_tif, None))
        report("3. radar/optical UAVSAR 1024x1024, known affine added to the radar",
               [("costack (Yan, CFOG)", text)])  # fmt: skip


def radar_consistency(opt: np.ndarray, radar: np.ndarray) -> str:
    """The true radar/optical misregistration is unknown: match the optical against the radar
    and against the radar moved by the known affine, and compare the two matches of each
    point with the known displacement (as the flow benchmark's consistency EPE)."""
    moved, truth = displace(radar, affine_field(radar.shape), order=5)
    p = TiePointParams(multimodal=True)
    t0 = time.perf_counter()
    d0, d1 = match_tiepoints(opt, radar, p), match_tiepoints(opt, moved, p)
    dt = (time.perf_counter() - t0) / 2
    m = d0.merge(d1, on=["ref_col", "ref_row"], suffixes=("0", "1"))
    if m.empty:
        return f"{len(d0)} and {len(d1)} tie points, none in common ({dt:.1f} s per run)"
    r = (m.ref_row.to_numpy() - 0.5).astype(int)
    c = (m.ref_col.to_numpy() - 0.5).astype(int)
    err = np.hypot(m.dx1 - m.dx0 - truth[0, r, c], m.dy1 - m.dy0 - truth[1, r, c])
    return (f"{len(d0)} and {len(d1)} tie points, {len(m)} in common; consistency error "
            f"median {np.median(err):.3f} px  RMSE {np.sqrt(np.mean(err**2)):.3f} px  "
            f"{dt:.1f} s per run")  # fmt: skip


if __name__ == "__main__":
    main()
