"""Stack benchmark: tile-sized datasets through the whole workflow, ``snakemake --cores 2``.

Builds N Sentinel-2 L2A-like datasets of one 10980 x 10980 tile (10 m, UTM 31N, uint16 DN with
scale 1e-4 and offset -0.1, nodata 0, as Earth Search's ``sentinel-2-c1-l2a`` items declare
them) from real imagery of ../shared/data: ``nir`` is the LIDAR image (2000 x 2000) and ``red``
a mix of it with the UAVSAR optical red band (1024 x 1024), both mirrored to the tile's size.
Dataset 1 is the reference; every other date shows the same ground displaced by a known
sub-pixel translation (cubic spline), with its own gain, offset and sensor noise, and one date
has an orbit-edge corner of nodata. The datasets are local STAC items (as the demo's in
resources/demo), built once into ``--data`` and reused.

The workflow then runs in a fresh working directory with ``snakemake --cores 2`` (under
/usr/bin/time -v), and the script prints, per job, the wall time (Snakemake's log: from the
job's start to its end) and the peak resident memory of the job's own process (the kernel's
high-water mark, which every rule's log records at its end, see :func:`costack.jobs.run_step`),
then per stage (rule) the time per dataset, the whole run's wall time, and the accuracy of the
recovered shifts: the flow's end-point error against the known translation (on a sample of the
tile), the tie-point model's mean shift, and the QC's residual and verdict per dataset.

Usage: ``python bench/stack_bench.py --size 10980 --datasets 3`` (a tile stack; the default
``--size 2048`` is a quick check), ``--data /tmp/costack-stack`` (where datasets are built once
and runs go), ``--build-only`` (only make the datasets). Record the machine's load beside the
figures (printed): the wall times mean little on a busy machine, the CPU times more.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
LIDAR = SHARED / "gefolki_misc" / "lidar_georef.png"
UAVSAR = (
    SHARED
    / "radar_optical_uavsar"
    / "lngley_05521_09059_000_090813_L090_CX_01_pauli_x016_y020_optique.tif"
)
#: the tile: T31TGK's UTM 31N lattice (upper-left corner, 10 m)
X0, Y0, RES = 699_960.0, 5_000_040.0, 10.0
#: known translations (dx, dy) in pixels of dates 2, 3, ... against date 1 (the reference)
SHIFTS = [(0.35, -0.25), (-0.42, 0.18), (0.21, 0.47), (-0.30, -0.38), (0.48, 0.12),
          (-0.15, 0.33), (0.27, -0.44)]  # fmt: skip
#: per date: gain, offset (reflectance) and noise (reflectance, 1 sigma)
RADIOMETRY = [(1.0, 0.0), (0.96, 0.004), (1.04, -0.003), (0.98, 0.006), (1.02, 0.0),
              (0.95, 0.002), (1.05, -0.004), (0.99, 0.003)]  # fmt: skip
NOISE = 0.003
#: dates with an orbit-edge corner of nodata (1-based dataset numbers)
EDGE_DATES = {3}
PAD = 16  # px of mirrored image kept around the tile while shifting


def mirrored(img: np.ndarray, size: int) -> np.ndarray:
    """``img`` repeated by mirroring (symmetric) to ``size`` x ``size`` plus PAD on each side."""
    reps = math.ceil((size + 2 * PAD) / img.shape[0]) + 1
    tiled = np.pad(img, ((0, (reps - 1) * img.shape[0]), (0, (reps - 1) * img.shape[1])),
                   mode="symmetric")  # fmt: skip
    return tiled[: size + 2 * PAD, : size + 2 * PAD]


def scenes(size: int) -> dict[str, np.ndarray]:
    """The ground as reflectance, (size + 2 PAD) px a side, float32: nir and red."""
    import imageio.v3 as iio
    import rasterio

    lidar = iio.imread(LIDAR).astype(np.float32) / 248.0
    with rasterio.open(UAVSAR) as src:
        red_band = src.read(1).astype(np.float32) / 255.0
    nir = mirrored(lidar, size)
    nir = (0.05 + 0.40 * nir).astype(np.float32)
    red = mirrored(red_band, size)
    red = (0.03 + 0.08 * red + 0.10 * (nir - 0.05)).astype(np.float32)
    return {"nir": nir, "red": red}


def shifted(ground: np.ndarray, size: int, dx: float, dy: float) -> np.ndarray:
    """The tile showing ``ground`` displaced by (dx, dy): sec(q) = ground(q - (dx, dy)), so the
    flow d with sec(p + d) = ref(p) is (dx, dy) everywhere; cubic spline, by strips."""
    from scipy import ndimage

    if dx == 0 and dy == 0:
        return ground[PAD : PAD + size, PAD : PAD + size].copy()
    out = np.empty((size, size), np.float32)
    rows = 1024
    for r0 in range(0, size, rows):
        r1 = min(size, r0 + rows)
        block = ground[r0 : r1 + 2 * PAD].astype(np.float64)
        moved = ndimage.shift(block, (dy, dx), order=3, mode="nearest")
        out[r0:r1] = moved[PAD : PAD + r1 - r0, PAD : PAD + size]
    return out


def write_dataset(folder: Path, n: int, size: int, ground: dict[str, np.ndarray]) -> None:
    """Dataset ``n`` (1 = reference) as uint16 GeoTIFFs and a STAC item in ``folder``."""
    import pystac
    import rasterio
    from pyproj import Transformer
    from rasterio.crs import CRS
    from rasterio.transform import Affine
    from shapely.geometry import Polygon, mapping

    folder.mkdir(parents=True, exist_ok=True)
    dx, dy = (0.0, 0.0) if n == 1 else SHIFTS[n - 2]
    gain, offset = RADIOMETRY[(n - 1) % len(RADIOMETRY)]
    rng = np.random.default_rng(1000 + n)
    crs = CRS.from_epsg(32631)
    transform = Affine(RES, 0, X0, 0, -RES, Y0)
    profile = dict(driver="GTiff", dtype="uint16", count=1, height=size, width=size, crs=crs,
                   transform=transform, nodata=0, compress="deflate", predictor=2, tiled=True,
                   blockxsize=1024, blockysize=1024)  # fmt: skip
    for key in ("red", "nir"):
        refl = shifted(ground[key], size, dx, dy) * gain + offset
        refl += rng.normal(0, NOISE, refl.shape).astype(np.float32)
        dn = np.clip(np.round(refl * 10000 + 1000), 1, 65535).astype(np.uint16)
        if n in EDGE_DATES:  # an orbit edge: the tile's lower-left corner has no data
            r, c = np.ogrid[0:size, 0:size]
            dn[(size - r) + c < 0.45 * size] = 0
        with rasterio.open(folder / f"{key}.tif", "w", **profile) as dst:
            dst.write(dn, 1)
        del refl, dn
    xs = X0 + np.array([0, size, size, 0]) * RES
    ys = Y0 - np.array([0, 0, size, size]) * RES
    lon, lat = Transformer.from_crs(crs, 4326, always_xy=True).transform(xs, ys)
    foot = Polygon(zip(lon, lat, strict=True))
    when = datetime(2024, 6, 1, 10, 30, tzinfo=UTC) + timedelta(days=5 * (n - 1))
    platform = "sentinel-2a" if n % 2 else "sentinel-2b"
    item = pystac.Item(
        id=f"S2{'A' if n % 2 else 'B'}_31TGK_{when:%Y%m%d}_0_L2A", geometry=mapping(foot),
        bbox=list(foot.bounds), datetime=when,
        properties={"platform": platform, "processing:level": "L2", "gsd": 10,
                    "proj:epsg": 32631, "s2:processing_baseline": "05.10"},
    )  # fmt: skip
    common = {"red": "B04", "nir": "B08"}
    for key in ("red", "nir"):
        item.add_asset(key, pystac.Asset(
            href=f"./{key}.tif", media_type=pystac.MediaType.GEOTIFF, roles=["data"],
            title=f"{key} reflectance", extra_fields={
                "eo:bands": [{"name": common[key], "common_name": key}],
                "raster:bands": [{"data_type": "uint16", "nodata": 0, "scale": 0.0001,
                                  "offset": -0.1, "spatial_resolution": 10}],
            },
        ))  # fmt: skip
    item.stac_extensions = [
        "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
        "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    ]
    item.set_self_href(str(folder / "item.json"))
    item.make_asset_hrefs_relative()
    item.save_object(include_self_link=False)
    (folder / "truth.json").write_text(json.dumps({"dx": dx, "dy": dy}), encoding="utf-8")


def build(data: Path, datasets: int, size: int) -> list[Path]:
    """The datasets' item paths, building those not yet in ``data`` (for this size)."""
    items = [data / f"{size}" / f"d{n}" / "item.json" for n in range(1, datasets + 1)]
    missing = [n for n, p in enumerate(items, start=1) if not p.is_file()]
    if missing:
        t0 = time.perf_counter()
        ground = scenes(size)
        for n in missing:
            write_dataset(items[n - 1].parent, n, size, ground)
            print(f"built dataset {n} in {time.perf_counter() - t0:.0f} s", flush=True)
    return items


def run_workflow(
    items: list[Path], workdir: Path, cores: int, cog_compression: str = "deflate"
) -> tuple[float, str]:
    """``snakemake --cores N`` on the items in a fresh ``workdir`` under /usr/bin/time -v;
    returns (wall seconds, time's report)."""
    import shutil

    import yaml

    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    n = len(items)
    config = {
        "inputs": [str(p) for p in items],
        "assets": ",".join(f"{i}.{k}" for i in range(1, n + 1) for k in ("red", "nir")),
        "reference": "1.nir",
        "expressions": [],
        "item_id": "stack-bench",
        "cog_compression": cog_compression,
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
           "-d", str(workdir), "--configfile", str(workdir / "config.yaml"), "--cores",
           str(cores)]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (workdir / "snakemake.stderr").write_text(proc.stderr, encoding="utf-8")
    if proc.returncode != 0:
        sys.exit(
            f"the workflow failed (see {workdir / 'snakemake.stderr'}):\n{proc.stderr[-3000:]}"
        )
    return wall, proc.stderr


_STAMP = re.compile(r"^\[(\w{3} \w{3}\s+\d+ \d\d:\d\d:\d\d \d{4})\]")


def job_times(workdir: Path) -> list[dict]:
    """Jobs of the run from Snakemake's log: rule, wildcards, start and end (s since the run's
    first job)."""
    log = max((workdir / ".snakemake" / "log").glob("*.snakemake.log"))
    jobs: dict[str, dict] = {}
    stamp = None
    current = None
    for line in log.read_text(encoding="utf-8").splitlines():
        m = _STAMP.match(line)
        if m:
            stamp = datetime.strptime(m.group(1).replace("  ", " "), "%a %b %d %H:%M:%S %Y")
            continue
        s = line.strip()
        if s.startswith("rule ") or s.startswith("localrule "):
            current = {"rule": s.split()[1].rstrip(":"), "start": stamp, "wildcards": "",
                       "threads": 1}  # fmt: skip
        elif current is not None and s.startswith("wildcards:"):
            current["wildcards"] = s.split(":", 1)[1].strip()
        elif current is not None and s.startswith("threads:"):
            current["threads"] = int(s.split(":", 1)[1])
        elif current is not None and s.startswith("jobid:"):
            # the same dict: the wildcards line may come after the jobid
            jobs[s.split(":", 1)[1].strip()] = current
        elif s.startswith("Finished jobid:") or s.startswith("Finished job "):
            jid = re.findall(r"\d+", s)[0]
            if jid in jobs:
                jobs[jid]["end"] = stamp
    out = [j for j in jobs.values() if j.get("end") and j["start"]]
    t0 = min(j["start"] for j in out)
    for j in out:
        j["start_s"] = (j["start"] - t0).total_seconds()
        j["seconds"] = (j["end"] - j["start"]).total_seconds()
    return sorted(out, key=lambda j: j["start_s"])


_PEAK = re.compile(r"done in ([\d.]+) s \(CPU ([\d.]+) s\), peak RSS ([\d.]+) MB")


def job_peak(workdir: Path, job: dict) -> tuple[float | None, float | None, float | None]:
    """(seconds, CPU seconds, peak MB) that the job's own log records at its end
    (:func:`costack.jobs.run_step`), or Nones."""
    wc = dict(kv.split("=", 1) for kv in job["wildcards"].split(", ") if "=" in kv)
    name = next(iter(wc.values()), None)
    folder = workdir / "logs" / job["rule"]
    logs = [folder / f"{name}.log"] if name else sorted(folder.glob("*.log"))
    for p in logs:
        if p.is_file():
            m = _PEAK.findall(p.read_text(encoding="utf-8", errors="replace"))
            if m:
                return float(m[-1][0]), float(m[-1][1]), float(m[-1][2])
    return None, None, None


def accuracy(workdir: Path, items: list[Path]) -> list[str]:
    """Per secondary dataset: the flow's error against the known translation (a 2048 px
    sample at the tile's centre, and its mean over the whole tile by 8x8 averages), the tie
    points' mean shift, and the QC's residuals and verdict."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    summary = json.loads((workdir / "results" / "qc" / "summary.json").read_text())
    lines = []
    for n in range(2, len(items) + 1):
        truth = json.loads((items[n - 1].parent / "truth.json").read_text())
        tx, ty = truth["dx"], truth["dy"]
        with rasterio.open(workdir / "results" / "flow" / f"{n}.tif") as src:
            h, w = src.height, src.width
            s = min(2048, h, w)
            win = Window((w - s) // 2, (h - s) // 2, s, s)
            fx, fy = src.read(1, window=win), src.read(2, window=win)
            small = src.read(out_shape=(2, h // 8, w // 8), resampling=Resampling.nearest)
        # over the secondary's data only: outside it (an orbit edge) the flow is the held
        # surroundings' prediction, which warps no data
        with rasterio.open(workdir / "results" / "colocated" / f"{n}.nir.tif") as src:
            has = src.read_masks(1, out_shape=(h // 8, w // 8)) > 0
        err = np.hypot(fx - tx, fy - ty)
        err = err[np.isfinite(err)]
        mean_all = (float(np.nanmean(small[0][has])), float(np.nanmean(small[1][has])))
        model = json.loads((workdir / "results" / "tiepoints" / f"{n}.model.json").read_text())
        ms = model.get("mean_shift") or [float("nan")] * 2
        q = summary[str(n)]
        a, b = q["after"], q["before"]

        def fig(x: dict) -> str:
            if x.get("figure") != "measured":
                return f"insufficient ({x.get('points', 0)} points)"
            p = x["pixels"]
            return (f"mean {p['mean']:.3f} median {p['median']:.3f} p90 {p['p90']:.3f} px on "
                    f"{x['points']} points")  # fmt: skip

        lines += [
            f"dataset {n}: true shift ({tx:+.3f}, {ty:+.3f}) px",
            f"  flow: mean over the tile's data ({mean_all[0]:+.4f}, {mean_all[1]:+.4f}) px, error "
            f"{math.hypot(mean_all[0] - tx, mean_all[1] - ty):.4f} px; EPE on {s}x{s} at the "
            f"centre mean {err.mean():.4f} median {np.median(err):.4f} p90 "
            f"{np.percentile(err, 90):.4f} px",
            f"  tie points: {model.get('tiepoints')} points, model {model.get('chosen')}, mean "
            f"shift ({ms[0]:+.4f}, {ms[1]:+.4f}) px, error "
            f"{math.hypot(ms[0] - tx, ms[1] - ty):.4f} px",
            f"  QC ({q.get('method', '')}): before {fig(b)}; after {fig(a)}; verdict "
            f"{q.get('verdict')}{': ' + '; '.join(q['reasons']) if q.get('reasons') else ''}",
        ]  # fmt: skip
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", type=int, default=3, help="datasets, the reference included")
    ap.add_argument("--size", type=int, default=2048,
                    help="tile side, px (a Sentinel-2 tile: 10980)")  # fmt: skip
    ap.add_argument("--data", type=Path, default=Path("/tmp/costack-stack"),
                    help="where the datasets are built (once) and the runs go")  # fmt: skip
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--cog-compression", choices=["deflate", "zstd"], default="deflate",
                    help="the run's cog_compression (config)")  # fmt: skip
    args = ap.parse_args()
    if not LIDAR.is_file() or not UAVSAR.is_file():
        sys.exit(f"needs the real images of {SHARED}")
    if args.datasets > len(SHIFTS) + 1:
        sys.exit(f"--datasets: at most {len(SHIFTS) + 1}")
    items = build(args.data, args.datasets, args.size)
    if args.build_only:
        return
    workdir = args.data / f"run-{args.size}-{args.datasets}"
    up0 = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    wall, report = run_workflow(items, workdir, args.cores, args.cog_compression)
    up1 = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    peak_run = re.findall(r"Maximum resident set size \(kbytes\): (\d+)", report)
    print(f"# bench/stack_bench.py: {args.datasets} datasets of {args.size}x{args.size} px, two "
          f"assets each, snakemake --cores {args.cores}, cog_compression "
          f"{args.cog_compression}")  # fmt: skip
    print(f"# uptime before: {up0}\n# uptime after:  {up1}")
    jobs = job_times(workdir)
    print(
        "\n(wall s: Snakemake's, start to end of the job; step s and CPU s: the job's own log, "
        "its step without the interpreter's start-up; CPU s sums the job's threads)"
    )
    print(f"{'job':<36} {'thr':>3} {'start s':>8} {'wall s':>7} {'step s':>7} {'CPU s':>7} "
          f"{'peak MB':>8}")  # fmt: skip
    by_rule: dict[str, list] = {}
    chains: dict[str, list] = {}
    peak_any = 0.0
    for j in jobs:
        step, cpu, peak = job_peak(workdir, j)
        peak_any = max(peak_any, peak or 0)
        by_rule.setdefault(j["rule"], []).append((j["seconds"], peak, cpu))
        label = j["wildcards"].replace("key=", "").replace("n=", "")
        dataset = label.split(".", 1)[0]
        if dataset.isdigit() and int(dataset) > 1:
            chains.setdefault(dataset, []).append((j["seconds"], cpu or 0.0))
        name = f"{j['rule']} {label}".strip()
        print(f"{name:<36} {j['threads']:3d} {j['start_s']:8.0f} {j['seconds']:7.0f} "
              f"{'' if step is None else f'{step:7.1f}':>7} "
              f"{'' if cpu is None else f'{cpu:7.1f}':>7} "
              f"{'' if peak is None else f'{peak:8.0f}':>8}")  # fmt: skip
    print(f"\n{'stage (rule)':<26} {'jobs':>4} {'wall s each (mean, max)':>24} "
          f"{'CPU s (mean)':>13} {'peak MB (max)':>14}")  # fmt: skip
    for rule, xs in by_rule.items():
        secs = [x[0] for x in xs]
        peaks = [x[1] for x in xs if x[1] is not None]
        cpus = [x[2] for x in xs if x[2] is not None]
        print(f"{rule:<26} {len(xs):4d} {np.mean(secs):12.1f} {max(secs):11.1f} "
              f"{np.mean(cpus) if cpus else float('nan'):13.1f} "
              f"{max(peaks) if peaks else float('nan'):14.0f}")  # fmt: skip
    print(
        "\nchain of each secondary dataset (its tie points, flow, co-registrations, COGs, QC "
        "and figures, one after another):"
    )
    for n, xs in sorted(chains.items(), key=lambda kv: int(kv[0])):
        print(f"  dataset {n}: {len(xs)} jobs, {sum(x[0] for x in xs):.0f} s wall, "
              f"{sum(x[1] for x in xs):.0f} s CPU")  # fmt: skip
    print(f"\nwhole run: {wall:.0f} s wall ({wall / 60:.1f} min) for {args.datasets} datasets; "
          f"peak RSS of any job {peak_any / 1024:.2f} GiB; snakemake's process tree max RSS "
          f"{int(peak_run[0]) / 1024**2 if peak_run else float('nan'):.2f} GiB "
          "(/usr/bin/time)")  # fmt: skip
    print("\naccuracy of the recovered shifts:")
    for line in accuracy(workdir, items):
        print(line)


if __name__ == "__main__":
    main()
