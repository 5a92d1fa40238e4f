"""Real radar/optical pairs given as plain, untagged single-band rasters: ``costack flow`` with
its defaults beside pip GEFolki and OpenCV DeepFlow, scored differentially, in one run.

The native misalignment of a real pair is unknown. Each method therefore runs twice: on the
native pair (optical reference, radar secondary) and on the same pair with a known smooth field
added to the radar (an affine of 2.3, -1.6 px with 1e-3 linear terms plus a 1.5 px sinusoid of
400 px wavelength, as bench/flow_bench.py section 3; quintic spline). The **differential error**
is |(flow on the displaced pair - flow on the native pair) - the known field|, whose mean over
the pixels 32 px inside the image (and known to the method) is printed: the pair's own unknown
misalignment cancels, what is left is how well the method follows a displacement across
sensors. For the demo's pair, whose truth is stored, the absolute error (against
``resources/demo/s1/truth.tif``) is printed as well and is the figure the summary scores, for
costack and for the peers' best depth alike: the issue scores differentially only "where the
native misalignment is unknown". The demo's differential figure is printed beside it, not
scored. Its displaced raster is the demo's SAR imaged with the field added to its
misregistration, in its own 20 m sampling, and co-located by costack like the native one
(``resources/generate_demo.py --sar-extra``; the field is the difference of the two truths).

Every pair also prints its field's **floor**: the differential error of the field's best
constant and best affine approximation (least squares over the scored pixels), which is what a
method that follows only the global part of the field scores. A method near the floor follows
nothing of the field's local variation; a pair where every method sits at the floor carries too
little shared structure to rank methods by it (the demo's pair: RESULTS-sar.txt). The demo also
prints the floors of its own truth against the absolute error.

``costack flow`` runs as a user runs it: the CLI, no flag, on GeoTIFFs written here without any
``costack_*`` tag (a plain local grid, NaN nodata), so the mode comes from the data alone; its
``mode_choice`` (the ``--stats`` JSON) is printed. The peers get the same arrays, nodata filled
with the image's mean. pip GEFolki runs with flow_bench's settings (rank 4, radii 32..8, two
iterations) at every depth of 2 to 5 levels, and the depth that scores best on each pair is
the one compared (the peer's best, chosen with the truth: the hardest comparison).

Pairs (sources and licences in bench/SAR-PAIRS-DATA.md; the files stay outside the repository):

1. UAVSAR L-band (Pauli composite) against an optical orthophoto, Langley, 1024 x 1024, the
   luminance (mean of the three bands) of each: ``/work/shared/data/radar_optical_uavsar``;
2. Sentinel-1 against Sentinel-2 at 10 m, 448 x 448 (GeFolki's evaluation patch 11; first S1
   band, mean of the three S2 bands);
3. a high-resolution SAR against an optical image of a city on a river (CFOG's test pair
   ``Stest3``, 628 x 618; optical luminance, SAR as given);
4. a SAR image of a city against an optical image (CFOG's ``SAR_sen`` / ``optical_ref``), the
   SAR resampled onto the optical image's grid by the affine of the published check points;
5. the demo's 20 m SAR (VV, dB) co-located by costack on the demo's grid against its 10 m NIR
   reference, the tags removed (absolute error against ``resources/demo/s1/truth.tif`` too).

Data folder: ``--data DIR`` (default ``$COSTACK_BENCH_DATA`` or ``~/.cache/costack-bench``)
holding ``gefolki/`` and ``cfog/`` as listed in bench/SAR-PAIRS-DATA.md; a pair whose files are
absent is skipped with a line saying so.

Usage: ``python bench/sar_pairs_bench.py [--data DIR] [--pairs uavsar s1s2 ...]`` from the
repository root (about 6 min on 2 cores; needs ``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from flow_bench import SHARED, UAVSAR, gefolki_method, opencv_method, timed  # noqa: E402

from costack.registration.evaluation import affine_sinusoid, displace, interior  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIELD = {"shift": (2.3, -1.6), "amplitude": 1.5, "wavelength": 400.0}
#: the demo's displaced pair: FIELD's shift, linear terms and amplitude in the demo generator's
#: own form (resources/generate_demo.py --sar-extra), added where a real misregistration
#: arises, in the SAR's own sampling before co-location
DEMO_FIELD = {
    "shift": list(FIELD["shift"]),
    "affine": [[0.002, -0.001], [0.0015, 0.001]],
    "waves": [[FIELD["amplitude"], FIELD["amplitude"], FIELD["wavelength"], 0.0]],
}
MARGIN = 32
#: the demo's extra, unscored costack row: its windows (before the resolution ratio widens them
#: to (32, 16), which also takes the pyramid to two levels) against the default (16, 8)
TRADE_OFF = ("--radii", "8", "4")
GEFOLKI_LEVELS = (2, 3, 4, 5)


def _read(path: Path) -> np.ndarray:
    """An image file as float32 (bands, rows, cols)."""
    if path.suffix.lower() in (".png", ".jpg"):
        import imageio.v3 as iio

        a = np.asarray(iio.imread(path), np.float32)
        return a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0)
    import rasterio

    with rasterio.open(path) as src:
        return src.read().astype(np.float32)


def _luminance(a: np.ndarray) -> np.ndarray:
    """Mean of the first three bands (RGB), or the single band."""
    return a[:3].mean(0) if a.shape[0] > 1 else a[0]


def pair_uavsar(data: Path) -> tuple[np.ndarray, np.ndarray] | str:
    opt = Path(f"{UAVSAR}_optique.tif")
    if not opt.exists():
        return f"{opt} absent"
    return _luminance(_read(opt)), _luminance(_read(Path(f"{UAVSAR}_radar.tif")))


def pair_s1s2(data: Path) -> tuple[np.ndarray, np.ndarray] | str:
    s1, s2 = data / "gefolki" / "S1_patch11.tif", data / "gefolki" / "S2_patch11.tif"
    if not s1.exists():
        return f"{s1} absent"
    return _luminance(_read(s2)), _read(s1)[0]


def pair_stest3(data: Path) -> tuple[np.ndarray, np.ndarray] | str:
    ref, sen = data / "cfog" / "Stest3_ref.tif", data / "cfog" / "Stest3_sen.tif"
    if not ref.exists():
        return f"{ref} absent"
    return _luminance(_read(ref)), _read(sen)[0]


def pair_cfog_city(data: Path) -> tuple[np.ndarray, np.ndarray] | str:
    """The SAR resampled onto the optical grid: sen (x, y) = A (x, y, 1) fitted by least
    squares on the published check points (ref x, ref y, sen x, sen y; one-based in both, which
    the affine absorbs), cubic spline, NaN outside the SAR."""
    from scipy import ndimage

    folder = data / "cfog"
    if not (folder / "SAR_sen.png").exists():
        return f"{folder / 'SAR_sen.png'} absent"
    opt = _luminance(_read(folder / "optical_ref.png"))
    sar = _read(folder / "SAR_sen.png")[0]
    cp = np.loadtxt(folder / "OpticaltoSAR_CP.txt")
    design = np.c_[cp[:, 0], cp[:, 1], np.ones(len(cp))]
    coef, *_ = np.linalg.lstsq(design, cp[:, 2:4], rcond=None)
    row, col = np.mgrid[0 : opt.shape[0], 0 : opt.shape[1]].astype(np.float64)
    pts = np.c_[col.ravel() + 1, row.ravel() + 1, np.ones(col.size)] @ coef - 1
    out = ndimage.map_coordinates(sar.astype(np.float64), [pts[:, 1], pts[:, 0]], order=3,
                                  mode="constant", cval=np.nan)  # fmt: skip
    return opt, out.reshape(opt.shape).astype(np.float32)


def pair_demo(data: Path, keep: dict) -> tuple[np.ndarray, np.ndarray] | str:
    """The demo generated and co-located by costack (as bench/sar_bench.py), tags dropped."""
    from sar_bench import _truth_window, colocated_pair

    from costack.io.rasters import read_float32

    folder = Path(keep["tmp"]) / "demo_pair"
    folder.mkdir()
    ref_tif, sec_tif, truth_tif = colocated_pair(folder, None)
    ref, grid, _ = read_float32(ref_tif)
    sec, _, _ = read_float32(sec_tif)
    keep["demo_truth"] = _truth_window(truth_tif, grid)[0]
    # the displaced pair: the same SAR (speckle, geometry, GCPs) imaged with DEMO_FIELD added
    # to its misregistration, co-located by costack like the native one
    folder = Path(keep["tmp"]) / "demo_moved"
    folder.mkdir()
    _, moved_tif, moved_truth_tif = colocated_pair(folder, None, DEMO_FIELD)
    moved, moved_grid, _ = read_float32(moved_tif)
    if moved_grid.transform != grid.transform or moved.shape != sec.shape:
        return "the displaced demo's co-location grid differs from the native one's"
    keep["demo_moved"] = moved
    keep["demo_field"] = _truth_window(moved_truth_tif, grid)[0] - keep["demo_truth"]
    return ref, sec


PAIRS: dict[str, tuple[str, Callable]] = {
    "uavsar": ("UAVSAR L-band / optical, 1024 px", pair_uavsar),
    "s1s2": ("Sentinel-1 / Sentinel-2, 448 px", pair_s1s2),
    "stest3": ("SAR / optical city and river (CFOG Stest3), 628x618", pair_stest3),
    "cfog_city": ("SAR / optical city (CFOG), 528x520", pair_cfog_city),
    "demo": ("demo 20 m SAR VV dB / 10 m NIR, co-located", pair_demo),
}


def write_plain(path: Path, img: np.ndarray) -> None:
    """A single-band Float32 GeoTIFF with no costack tag: a local metric grid, NaN nodata."""
    import rasterio
    from rasterio.transform import Affine

    prof = dict(driver="GTiff", dtype="float32", count=1, height=img.shape[0],
                width=img.shape[1], crs="EPSG:32631", nodata=float("nan"),
                transform=Affine(10, 0, 500000, 0, -10, 5000000))  # fmt: skip
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(img.astype(np.float32), 1)


def costack_cli(ref: np.ndarray, sec: np.ndarray, folder: Path, name: str, extra=()):
    """``costack flow REF SEC OUT`` (no flag) on plain GeoTIFFs; (dx, dy, seconds, stats)."""
    from costack.io.rasters import read_float32

    r, s, out = folder / f"{name}_ref.tif", folder / f"{name}_sec.tif", folder / f"{name}.tif"
    write_plain(r, ref)
    write_plain(s, sec)
    stats = folder / f"{name}.json"
    cmd = [sys.executable, "-m", "costack.cli", "flow", str(r), str(s), str(out),
           "--stats", str(stats), *extra]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    dt = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1])
    flow, _, _ = read_float32(out, band=None)
    return flow[0], flow[1], dt, json.loads(stats.read_text())


def differential(d0, d1, truth, mask) -> tuple[float, float, float]:
    """Mean and median differential error, and the share of ``mask`` where it is known."""
    err = np.hypot(d1[0] - d0[0] - truth[0], d1[1] - d0[1] - truth[1])[mask]
    ok = np.isfinite(err)
    if not ok.any():
        return np.nan, np.nan, 0.0
    return float(err[ok].mean()), float(np.median(err[ok])), float(ok.mean())


def absolute(d, truth, mask) -> float:
    err = np.hypot(d[0] - truth[0], d[1] - truth[1])[mask]
    return float(np.nanmean(err))


def floors(field: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """What following only the global part of a known ``field`` (2, H, W) scores over ``mask``:
    the mean error of its best constant and of its best affine approximation (least squares).
    A method at these figures follows nothing of the field's local variation: the pair then
    carries too little shared structure to rank methods by it."""
    rows, cols = np.nonzero(mask)
    a = np.stack([np.ones(rows.size), cols, rows], axis=1).astype(np.float64)
    fx, fy = (field[k][mask].astype(np.float64) for k in (0, 1))
    res = {"constant": float(np.mean(np.hypot(fx - fx.mean(), fy - fy.mean())))}
    px, py = (np.linalg.lstsq(a, f, rcond=None)[0] for f in (fx, fy))
    res["affine"] = float(np.mean(np.hypot(fx - a @ px, fy - a @ py)))
    return res


def _score(row: dict) -> float:
    """The figure a pair is scored by: the absolute error where the pair's truth is known (the
    demo), else the differential error (issue 38: "score differentially where the native
    misalignment is unknown")."""
    return row.get("absolute", row["mean"])


def _filled(a: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(a), a, np.nanmean(a)).astype(np.float32)


def describe_choice(stats: dict) -> str:
    choice = stats.get("mode_choice") or {}
    start = (stats.get("start") or {}).get("kind")
    return f"mode {stats.get('mode')} ({choice.get('reason')}); start {start}"


def run_pair(key: str, opt: np.ndarray, radar: np.ndarray, folder: Path, keep: dict,
             only_costack: bool = False, extra: tuple[str, ...] = ()) -> dict:  # fmt: skip
    known = np.isfinite(radar)
    if key == "demo" and "demo_moved" in keep:
        # imaged displaced and co-located (pair_demo): the truths' difference is the field
        moved, truth = keep["demo_moved"], keep["demo_field"]
    else:
        field = affine_sinusoid(opt.shape, **FIELD)
        # the spline's prefilter would spread NaN over the whole image: displace the filled
        # radar and its validity, NaN where the displaced validity is under 1
        moved, truth = displace(np.where(known, radar, np.nanmean(radar)), field, order=5)
        if not known.all():
            moved_ok, _ = displace(known.astype(np.float32), field, order=1)
            moved[~(moved_ok > 0.999)] = np.nan
    mask = interior(opt.shape, MARGIN) & np.isfinite(opt) & np.isfinite(radar)
    mask &= np.isfinite(moved)
    rows: dict[str, dict] = {"floor": floors(truth, mask)}
    if "demo_truth" in keep and key == "demo":
        rows["floor"]["absolute"] = floors(keep["demo_truth"], mask)
    c0 = costack_cli(opt, radar, folder, f"{key}_native", extra)
    c1 = costack_cli(opt, moved, folder, f"{key}_moved", extra)
    mean, med, cover = differential(c0[:2], c1[:2], truth, mask)
    rows["costack flow (CLI)"] = dict(mean=mean, median=med, cover=cover, time=c1[2],
                                      note=describe_choice(c1[3]))  # fmt: skip
    if "demo_truth" in keep and key == "demo":
        rows["costack flow (CLI)"]["absolute"] = absolute(c0[:2], keep["demo_truth"], mask)
        # the trade-off on this pair, printed, not scored: windows four times smaller in area
        # follow more of the field and less of the demo's own truth
        t0 = costack_cli(opt, radar, folder, "demo_native_small", (*extra, *TRADE_OFF))
        t1 = costack_cli(opt, moved, folder, "demo_moved_small", (*extra, *TRADE_OFF))
        mean, med, cover = differential(t0[:2], t1[:2], truth, mask)
        rows[f"costack {' '.join(TRADE_OFF)}"] = dict(
            mean=mean, median=med, cover=cover, time=t1[2], note="not the default, not scored",
            absolute=absolute(t0[:2], keep["demo_truth"], mask),
        )  # fmt: skip
    if only_costack:
        return rows
    a, b0, b1 = _filled(opt), _filled(radar), _filled(moved)
    best = None
    for levels in GEFOLKI_LEVELS:
        m = gefolki_method("GEFolki", levels=levels)
        if m is None:
            break
        d0, d1 = timed(m, a, b0), timed(m, a, b1)
        if d0[3] or d1[3]:
            continue
        mean, med, cover = differential(d0[:2], d1[:2], truth, mask)
        row = dict(mean=mean, median=med, cover=cover, time=d1[2], note=f"{levels} levels")
        if key == "demo" and "demo_truth" in keep:
            row["absolute"] = absolute(d0[:2], keep["demo_truth"], mask)
        if best is None or _score(row) < _score(best):
            best = row
        rows[f"pip GEFolki {levels} levels"] = row
    if best is not None:
        rows["pip GEFolki (best depth)"] = best
    m = opencv_method("deepflow")
    if m is not None:
        d0, d1 = timed(m, a, b0), timed(m, a, b1)
        mean, med, cover = differential(d0[:2], d1[:2], truth, mask)
        rows["OpenCV DeepFlow"] = dict(mean=mean, median=med, cover=cover, time=d1[2], note="")
        if key == "demo" and "demo_truth" in keep:
            rows["OpenCV DeepFlow"]["absolute"] = absolute(d0[:2], keep["demo_truth"], mask)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    default = os.environ.get("COSTACK_BENCH_DATA", str(Path.home() / ".cache" / "costack-bench"))
    ap.add_argument("--data", default=default, help="folder with gefolki/ and cfog/")
    ap.add_argument("--pairs", nargs="*", default=list(PAIRS), choices=list(PAIRS))
    ap.add_argument("--costack-only", action="store_true", help="skip the peers")
    ap.add_argument(
        "--costack-args",
        default="",
        help="extra arguments of costack flow "
        "(space-separated; for experiments: the defaults are what is scored)",
    )
    args = ap.parse_args()
    data = Path(args.data)
    print(f"field added to the radar: {FIELD}, affine linear terms 1e-3; differential error over "
          f"pixels >= {MARGIN} px from the border (mean, median, share known)")  # fmt: skip
    print(f"shared data: {SHARED}; downloaded pairs: {data}")
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        keep = {"tmp": tmp}
        for key in args.pairs:
            title, loader = PAIRS[key]
            got = loader(data, keep) if key == "demo" else loader(data)
            if isinstance(got, str):
                print(f"\n## {title}: skipped ({got})")
                continue
            opt, radar = got
            rows = run_pair(key, opt, radar, Path(tmp), keep, args.costack_only,
                            tuple(args.costack_args.split()))  # fmt: skip
            print(f"\n## {title}")
            fl = rows.pop("floor")
            print(
                f"  the field's floor (differential error of following only its global part): "
                f"best constant {fl['constant']:.4f} px, best affine {fl['affine']:.4f} px"
            )
            if "absolute" in fl:
                print(f"  the truth's floor (absolute error of following only its global part): "
                      f"best constant {fl['absolute']['constant']:.4f} px, best affine "
                      f"{fl['absolute']['affine']:.4f} px")  # fmt: skip
            for name, r in rows.items():
                extra = f"  absolute {r['absolute']:.4f} px" if "absolute" in r else ""
                print(f"  {name:<26} mean {r['mean']:.4f} px  median {r['median']:.4f}  known "
                      f"{100 * r['cover']:.1f} %  time {r['time']:.2f} s{extra}  {r['note']}",
                      flush=True)  # fmt: skip
            summary.append((key, rows, fl))
    print("\n## summary: mean error (px), differential where the pair's misalignment is unknown, "
          "absolute where its truth is known (the demo); costack against pip GEFolki's best "
          "depth by that figure")  # fmt: skip
    ratios, cs, gs = [], [], []
    for key, rows, fl in summary:
        c = _score(rows["costack flow (CLI)"])
        best = rows.get("pip GEFolki (best depth)")
        g = _score(best) if best else np.nan
        deep = rows.get("OpenCV DeepFlow")
        d = _score(deep) if deep else np.nan
        ratio = c / g if np.isfinite(g) else np.nan
        ratios.append(ratio)
        cs.append(c)
        gs.append(g)
        verdict = "met" if ratio <= 0.9 else "MISSED"
        kind = "absolute" if "absolute" in rows["costack flow (CLI)"] else "differential"
        floor = fl["absolute"]["affine"] if kind == "absolute" else fl["affine"]
        print(
            f"  {key:<10} {kind:<12} costack {c:.4f}  GEFolki {g:.4f}  DeepFlow {d:.4f}  "
            f"costack/GEFolki {ratio:.3f} ({100 * (1 - ratio):+.1f} % below; target >= 10 %: "
            f"{verdict}); the affine floor {floor:.4f}"
        )
        if kind == "absolute":
            dc = rows["costack flow (CLI)"]["mean"]
            dg = min((r["mean"] for n, r in rows.items() if n.startswith("pip GEFolki ")),
                     default=np.nan)  # fmt: skip
            print(
                f"  {'':<10} (differential, not scored: costack {dc:.4f}, GEFolki's best "
                f"depth {dg:.4f}; {100 * (1 - dc / dg):+.1f} % below; the field's affine "
                f"floor {fl['affine']:.4f}; the truth's constant floor "
                f"{fl['absolute']['constant']:.4f})"
            )
    if summary and np.isfinite(gs).all():
        mc, mg = float(np.mean(cs)), float(np.mean(gs))
        verdict = "met" if mc <= 0.7 * mg else "MISSED"
        print(
            f"  mean over {len(cs)} pairs: costack {mc:.4f}  GEFolki {mg:.4f}  "
            f"({100 * (1 - mc / mg):+.1f} % below; target >= 30 %: {verdict})"
        )


if __name__ == "__main__":
    main()
