"""Change benchmark: registration over floods, new texture and clouds, beside the peers.

The issue (35) this answers: a pre/post-event pair is misregistered by a smooth field, and parts
of the post-event image changed as real events change them. The flow must bring the changed
areas along with their stable surroundings (co-registration must not bend the change the user
looks for), and stay as good as it is elsewhere.

Cases, each from a real image of ../shared/data (the UAVSAR optical orthophoto's luminance, the
GeFolki LIDAR image), both 1024 x 1024:

- the secondary is the image under a known field: an affine of Yan et al.'s size (shift 5.4,
  -2.1 px, linear terms 1e-3) plus a mild smooth term (0.3 px over 1000 px), made with a
  quintic spline;
- then parts of the secondary (in its own geometry) change:
  ``flood``: irregular blobs (thresholded smoothed noise, 15 % of the image) become flat dark
  water (a low level, a faint gradient and 1.5 DN noise);
  ``retexture``: blobs (7 %) take the texture of another part of the image (new construction,
  a burn scar);
  ``clouds``: bright smooth blobs with soft edges (alpha matte, 12 % visibly affected) and their
  shadows (the matte displaced by (41, 27) px, darkening by up to 60 %), 18 % of the
  image visibly affected; the mask a Sentinel-2
  L2A scene classification would give (SCL on a 20 m grid, 2 x coarser: 9 cloud high
  probability where the 2 x 2 mean alpha > 0.65, 8 medium > 0.35, 10 thin cirrus > 0.2,
  3 cloud shadow where the darkening > 0.2; 4/5 vegetation / not vegetated elsewhere), taken
  to the grid by nearest resampling, as co-location does.

Scores (end-point error against the truth, px; pixels >= 16 px from the border): ``inside`` the
changed areas (the change's footprint carried to the reference grid by the true field),
``ring`` within 16 px of them, ``outside`` beyond that; for clouds, ``under`` the cloud and
shadow footprint (alpha or darkening > 0.05), with and without the SCL mask. Mean EPE and the
shares beyond 0.5 and 1 px.

Methods: ``costack flow REF SEC OUT`` (its defaults, on GeoTIFFs, in this process), with the
SCL mask (``--mask-secondary SCL.tif --mask-kind scl``); the same with ``--no-hold`` (the flow
as it was before issue 35: not held to the surroundings); OpenCV DeepFlow and DIS, pip gefolki
EFolki and scikit-image iLK (none of them takes a mask). Section 0 reruns bench/flow_bench.py's
stable-scene cases, before and after. Section 4 times the 2000 x 2000 LIDAR pair's in-process
flow, not held and held, alternating, median of 3.

Usage: ``python bench/change_bench.py [--quick]`` (``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import argparse
import importlib
import io
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flow_bench import (  # noqa: E402
    SHARED,
    UAVSAR,
    gefolki_method,
    ilk,
    opencv_method,
)

from costack.registration.evaluation import affine_sinusoid, displace, interior  # noqa: E402

warnings.filterwarnings("ignore")

Method = Callable[..., tuple[np.ndarray, np.ndarray]]

#: the known misregistration: Yan et al.'s scale of affine, plus a mild smooth term
SHIFT = (5.4, -2.1)
LINEAR = (0.001, -0.0006, 0.0008, 0.0005)
AMPLITUDE, WAVELENGTH = 0.3, 1000.0
MARGIN = 16

#: Sentinel-2 L2A scene classes (ESA's SCL)
SCL_SHADOW, SCL_VEGETATION, SCL_BARE, SCL_WATER = 3, 4, 5, 6
SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH, SCL_CIRRUS = 8, 9, 10


def field(shape: tuple[int, int]):
    """The true misregistration e(col, row): an affine about the centre + a 1000 px sinusoid
    (:func:`costack.registration.evaluation.affine_sinusoid` with this bench's terms)."""
    return affine_sinusoid(shape, shift=SHIFT, linear=LINEAR, amplitude=AMPLITUDE,
                           wavelength=WAVELENGTH)  # fmt: skip


def load() -> dict[str, np.ndarray]:
    """The real images (single band, float32): UAVSAR optical luminance, LIDAR."""
    import imageio.v3 as iio
    import rasterio

    with rasterio.open(f"{UAVSAR}_optique.tif") as s:
        optical = s.read().astype(np.float32).mean(0)
    lidar = iio.imread(SHARED / "gefolki_misc" / "lidar_georef.png").astype(np.float32)
    return {"optical": optical, "lidar": lidar}


def smooth_noise(shape: tuple[int, int], sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (n - n.mean()) / n.std()


def blobs(shape: tuple[int, int], fraction: float, seed: int, sigma: float = 28.0) -> np.ndarray:
    """Irregular blobs covering ``fraction`` of the image: smoothed noise over its quantile."""
    n = smooth_noise(shape, sigma, seed)
    return n > np.quantile(n, 1.0 - fraction)


def to_reference(mask_sec: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """A footprint drawn in the secondary's geometry, seen from the reference grid: pixel p is
    in it when the secondary's pixel at p + d(p) is (nearest)."""
    h, w = mask_sec.shape
    row, col = np.mgrid[0:h, 0:w].astype(np.float64)
    return (
        ndimage.map_coordinates(
            mask_sec.astype(np.float32), [row + truth[1], col + truth[0]], order=1, cval=0.0
        )
        > 0.5
    )


def sample_reference(a_sec: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """A secondary-geometry layer (alpha matte) sampled on the reference grid."""
    h, w = a_sec.shape
    row, col = np.mgrid[0:h, 0:w].astype(np.float64)
    return ndimage.map_coordinates(a_sec, [row + truth[1], col + truth[0]], order=1, cval=0.0)


def make_case(img: np.ndarray, kind: str, seed: int) -> dict:
    """The secondary of ``kind`` (flood, retexture, clouds) and its truth, footprint, mask."""
    shape = img.shape
    sec, truth = displace(img, field(shape), order=5)
    sec = np.where(np.isfinite(sec), sec, 0).astype(np.float32)
    lo, hi = np.percentile(img, [2, 98])
    rng = np.random.default_rng(seed + 100)
    out: dict = {"truth": truth, "mask_sec": None}
    if kind == "flood":
        m = blobs(shape, 0.15, seed)
        rows = np.arange(shape[0], dtype=np.float32)[:, None] / shape[0]
        water = lo + 0.04 * (hi - lo) + 0.02 * (hi - lo) * rows + rng.normal(0, 1.5, shape)
        sec = np.where(m, water, sec).astype(np.float32)
        out["changed_sec"] = m
    elif kind == "retexture":
        m = blobs(shape, 0.07, seed, sigma=22.0)
        src = np.roll(np.flipud(img), (shape[0] // 3, shape[1] // 2 - 37), axis=(0, 1))
        sec = np.where(m, src, sec).astype(np.float32)
        out["changed_sec"] = m
    elif kind == "clouds":
        n = smooth_noise(shape, 30.0, seed)
        t = np.quantile(n, 0.90)
        alpha = ndimage.gaussian_filter(np.clip((n - t) / 0.6, 0, 1), 4.0)
        shadow = 0.6 * np.roll(alpha, (27, 41), axis=(0, 1))
        texture = 0.04 * (hi - lo) * smooth_noise(shape, 6.0, seed + 7)
        cloud = hi + 0.1 * (hi - lo) + texture
        dark = sec * (1.0 - shadow)
        sec = (dark * (1.0 - alpha) + cloud * alpha).astype(np.float32)
        out["changed_sec"] = (alpha > 0.05) | (shadow > 0.05)
        out["alpha"], out["shadow"] = alpha, shadow
        out["scl"] = scene_classification(img_like=sec, alpha=alpha, shadow=shadow)
    out["sec"] = sec
    out["changed"] = to_reference(out["changed_sec"], truth)
    return out


def scene_classification(img_like: np.ndarray, alpha: np.ndarray, shadow: np.ndarray):
    """What a Sentinel-2 L2A SCL would say of the cloudy secondary: classes on a 2 x coarser
    (20 m) lattice from the 2 x 2 means, repeated to the grid (nearest resampling)."""
    h, w = alpha.shape

    def coarse(a: np.ndarray) -> np.ndarray:
        return a[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2).mean((1, 3))

    a, s, v = coarse(alpha), coarse(shadow), coarse(img_like)
    scl = np.where(v > np.median(v), SCL_BARE, SCL_VEGETATION).astype(np.uint8)
    scl[s > 0.2] = SCL_SHADOW
    scl[a > 0.2] = SCL_CIRRUS
    scl[a > 0.35] = SCL_CLOUD_MEDIUM
    scl[a > 0.65] = SCL_CLOUD_HIGH
    full = np.repeat(np.repeat(scl, 2, 0), 2, 1)
    return np.pad(full, ((0, h - full.shape[0]), (0, w - full.shape[1])), mode="edge")


# ---------------------------------------------------------------------------------------------
# methods


def _write(path: Path, arr: np.ndarray, dtype: str = "float32") -> None:
    import rasterio
    from rasterio.transform import Affine

    prof = dict(driver="GTiff", dtype=dtype, count=1, height=arr.shape[0], width=arr.shape[1],
                crs="EPSG:32631", transform=Affine(10, 0, 500000, 0, -10, 5000000),
                tiled=True)  # fmt: skip
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(arr.astype(dtype), 1)


def flow_takes(option: str) -> bool:
    """Whether ``costack flow`` takes ``option`` (the mask options of issue 35)."""
    from costack.cli import build_parser

    return option in build_parser()._subparsers._group_actions[0].choices["flow"].format_help()


def costack_cli(
    a: np.ndarray, b: np.ndarray, scl: np.ndarray | None = None, extra: tuple[str, ...] = ()
):
    """``costack flow REF SEC OUT`` with its defaults (``--mask-secondary SCL`` when given)."""
    import rasterio

    from costack.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        _write(t / "ref.tif", a)
        _write(t / "sec.tif", b)
        argv = ["flow", str(t / "ref.tif"), str(t / "sec.tif"), str(t / "out.tif"), *extra]
        if scl is not None:
            _write(t / "scl.tif", scl, "uint8")
            argv += ["--mask-secondary", str(t / "scl.tif"), "--mask-kind", "scl"]
        with redirect_stdout(io.StringIO()):
            rc = main(argv)
        if rc:
            raise RuntimeError(f"costack flow exited {rc}")
        with rasterio.open(t / "out.tif") as src:
            f = src.read().astype(np.float32)
    return f[0], f[1]


def prototype() -> Method | None:
    """The change-aware flow on arrays (costack.registration.change), when present."""
    try:
        change = importlib.import_module("costack.registration.change")
    except ImportError:
        return None

    def run(a: np.ndarray, b: np.ndarray, scl: np.ndarray | None = None):
        from costack.io.masks import scl_mask

        bad = None if scl is None else scl_mask(scl)
        r = change.change_aware_flow(a, b, sec_mask=bad)
        return r.dx, r.dy

    return run


def methods(quick: bool) -> list[tuple[str, Method | None, bool]]:
    """(name, method, takes a mask)."""
    takes = flow_takes("--mask-secondary")
    out: list[tuple[str, Method | None, bool]] = [
        ("costack flow (defaults)", costack_cli, takes),
    ]
    if flow_takes("--no-hold"):  # today's flow: not held to the surroundings
        out.append(
            (
                "costack flow --no-hold (before)",
                lambda a, b, scl=None: costack_cli(a, b, scl, ("--no-hold",)),
                takes,
            )
        )
    else:
        out.append(("costack change-aware", prototype(), True))
    out += [
        ("OpenCV DeepFlow", opencv_method("deepflow"), False),
        ("OpenCV DIS medium", opencv_method("dis"), False),
        ("skimage iLK", ilk, False),
    ]
    if not quick:
        out.append(("gefolki EFolki", gefolki_method("EFolki"), False))
    return [m for m in out if m[1] is not None]


# ---------------------------------------------------------------------------------------------
# scores


def stats(err: np.ndarray) -> str:
    err = err[np.isfinite(err)] if err.size else err
    if not err.size:
        return "   (no pixels)"
    return f"{err.mean():7.4f} {100 * (err > 0.5).mean():6.2f}% {100 * (err > 1).mean():6.2f}%"


def regions(case: dict, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    inner = interior(shape, MARGIN)
    ch = case["changed"]
    near = ndimage.binary_dilation(ch, iterations=MARGIN)
    return {"inside": inner & ch, "ring": inner & near & ~ch, "outside": inner & ~near}


def run_case(name: str, img: np.ndarray, kind: str, seed: int, quick: bool) -> list[str]:
    case = make_case(img, kind, seed)
    reg = regions(case, img.shape)
    share = 100 * case["changed"][interior(img.shape, MARGIN)].mean()
    label = "under" if kind == "clouds" else "inside"
    lines = [f"\n## {name} {img.shape[1]}x{img.shape[0]}, {kind}: {share:.1f} % of the image "
             f"{'under clouds or shadows' if kind == 'clouds' else 'changed'}",
             f"  {'method':<34} {label:^22} {'ring (<16 px)':^22} {'outside':^22}  time",
             f"  {'':<34} {'mean  >0.5px  >1px':^22} {'mean  >0.5px  >1px':^22} "
             f"{'mean  >0.5px  >1px':^22}"]  # fmt: skip
    runs = [(n, m, None) for n, m, _ in methods(quick)]
    if kind == "clouds":
        runs += [(f"{n} + SCL mask", m, case["scl"]) for n, m, masks in methods(quick) if masks]
    truth = case["truth"]
    for n, m, scl in runs:
        t0 = time.perf_counter()
        try:
            dx, dy = m(img, case["sec"], scl) if scl is not None else m(img, case["sec"])
        except Exception as err:  # a method failing is a result to print
            lines.append(f"  {n:<34} failed: {type(err).__name__}: {str(err)[:60]}")
            continue
        dt = time.perf_counter() - t0
        err = np.hypot(dx - truth[0], dy - truth[1])
        missing = ~np.isfinite(err) & reg["inside"]
        err = np.where(np.isfinite(err), err, np.inf)  # a hole counts as wrong
        row = "  ".join(stats(err[reg[k]]) for k in ("inside", "ring", "outside"))
        extra = f"  ({100 * missing.sum() / max(reg['inside'].sum(), 1):.1f} % NaN)" if \
            missing.any() else ""  # fmt: skip
        lines.append(f"  {n:<34} {row}  {dt:5.2f} s{extra}")
    return lines


def timing(img: np.ndarray) -> list[str]:
    """2000 x 2000: `costack flow` defaults and the change-aware prototype, alternating."""
    big = img[:2000, :2000]
    sec, truth = displace(big, field(big.shape), order=3)
    sec = np.where(np.isfinite(sec), sec, 0).astype(np.float32)
    from costack.registration.folki import FlowParams, estimate_flow

    runs = {"flow, not held (before)": lambda: estimate_flow(big, sec, FlowParams(mode="auto"))}
    proto = prototype()
    if proto is not None:
        runs["flow + hold (costack's default)"] = lambda: proto(big, sec)
    for f in runs.values():  # warm
        f()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(3):
        for k, f in runs.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    lines = ["\n## 4. time, 2000x2000 LIDAR pair, no change (alternating, median of 3)"]
    for k, ts in times.items():
        ts.sort()
        lines.append(f"  {k:<34} {ts[1]:.3f} s ({', '.join(f'{t:.3f}' for t in ts)})")
    return lines


def stable(size: int) -> list[str]:
    """bench/flow_bench.py's stable-scene cases (its field: affine + 1.5 px / 400 px sinusoid):
    today's flow (``estimate_flow``, auto) and the same flow held to its surroundings where
    unsupported (what ``costack flow`` now does by default), in the same run."""
    from flow_bench import load_images

    from costack.registration.change import hold
    from costack.registration.evaluation import affine_sinusoid, epe
    from costack.registration.folki import FlowParams, estimate_flow

    def today(a, b, **kw):
        r = estimate_flow(a, b, FlowParams(mode="auto"), **kw)
        return r.dx, r.dy

    def held(a, b, **kw):
        r = estimate_flow(a, b, FlowParams(mode="auto"), **kw)
        bb = b if "sec_nodata" not in kw else np.where(b == kw["sec_nodata"], np.nan, b)
        h = hold(r, a, bb)
        return h.dx, h.dy

    imgs = load_images()
    fld = {"shift": (2.3, -1.6), "amplitude": 1.5, "wavelength": 400.0}
    lines = [
        f"\n## 0. stable scenes (bench/flow_bench.py's cases, {size}x{size}): mean EPE px, "
        "today's flow -> held to the surroundings where unsupported (costack flow's default)"
    ]
    for name in ("optical", "lidar"):
        img = imgs[name][:size, :size]
        sec, truth = displace(img, affine_sinusoid(img.shape, **fld), order=5)
        mask = interior(img.shape, 16) & np.isfinite(sec)
        sec = np.where(np.isfinite(sec), sec, 0).astype(np.float32)
        inv = (img.max() - sec).astype(np.float32)
        cases = [("same sensor", sec, truth, mask), ("inverted contrast", inv, truth, mask)]
        if name == "optical":
            sa, ta = displace(img, affine_sinusoid(img.shape, shift=fld["shift"], amplitude=0.0),
                              order=5)  # fmt: skip
            ma = interior(img.shape, 16) & np.isfinite(sa)
            cases.insert(1, ("affine only", np.where(np.isfinite(sa), sa, 0).astype(np.float32),
                             ta, ma))  # fmt: skip
        for label, b, t, m in cases:
            e0 = epe(*today(img, b), t, m).mean()
            e1 = epe(*held(img, b), t, m).mean()
            lines.append(f"  {name:<8} {label:<26} {e0:.4f} -> {e1:.4f} px ({e1 - e0:+.4f})")
        if name == "optical":
            strip = np.zeros(img.shape, bool)
            strip[:, size // 2 : size // 2 + 12] = True
            far = interior(img.shape, 16) & ~ndimage.binary_dilation(strip, iterations=16)
            for lab, val, kw in (("NaN", np.nan, {}), ("-9999", -9999.0, {"sec_nodata": -9999.0})):
                holed = sec.copy()
                holed[strip] = val
                e0 = epe(*today(img, holed, **kw), truth, far).mean()
                e1 = epe(*held(img, holed, **kw), truth, far).mean()
                lines.append(f"  {name:<8} {'nodata strip ' + lab + ', outside':<26} {e0:.4f} -> "
                             f"{e1:.4f} px ({e1 - e0:+.4f})")  # fmt: skip
    if "radar" in imgs:
        opt, radar = imgs["optical"][:size, :size], imgs["radar"][:size, :size]
        moved, truth = displace(radar, affine_sinusoid(opt.shape, **fld), order=5)
        moved = np.where(np.isfinite(moved), moved, 0).astype(np.float32)
        mask = interior(opt.shape, 32)
        for n, m in (("today", today), ("held", held)):
            d0, d1 = m(opt, radar), m(opt, moved)
            err = np.hypot(d1[0] - d0[0] - truth[0], d1[1] - d0[1] - truth[1])[mask]
            err = err[np.isfinite(err)]
            lines.append(f"  radar/optical consistency, {n:<6}  median {np.median(err):.4f} px  "
                         f"mean {err.mean():.4f} px")  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="512 px, no gefolki, no timing")
    parser.add_argument("--only", help="one case: IMAGE:KIND, e.g. optical:flood")
    args = parser.parse_args()
    size = 512 if args.quick else 1024
    imgs = load()
    print(f"field: affine (shift {SHIFT[0]}, {SHIFT[1]} px; linear terms {LINEAR}) + sinusoid "
          f"{AMPLITUDE} px / {WAVELENGTH:.0f} px; secondary by a quintic spline; EPE (px) over "
          f"pixels >= {MARGIN} px from the border; columns: mean EPE, share > 0.5 px, > 1 px",
          flush=True)  # fmt: skip
    small = imgs["optical"][:128, :128]  # compile and load the kernels before any timing
    for _, m, _ in methods(True):
        m(small, small)
    if not args.only:
        print("\n".join(stable(size)), flush=True)
    cases = [("1. optical", "optical"), ("2. lidar", "lidar")]
    for title, key in cases:
        img = imgs[key][:size, :size]
        for kind, seed in (("flood", 1), ("retexture", 2), ("clouds", 3)):
            if args.only and args.only != f"{key}:{kind}":
                continue
            print("\n".join(run_case(title, img, kind, seed, args.quick)), flush=True)
    if not args.quick and not args.only:
        print("\n".join(timing(imgs["lidar"])), flush=True)


if __name__ == "__main__":
    main()
