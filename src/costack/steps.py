"""One function per workflow step, each reading and writing the files that are its contract.

The Snakemake rule scripts and the ``costack`` subcommands both call these, so a step can be
rerun by hand on the files of the previous one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from costack.bandmath import ParsedExpression, evaluate, evaluate_by_strips, memory_bytes, parse
from costack.cog import write_cog
from costack.colocate import (
    STREAM_CACHE_MB,
    colocate_asset,
    streamed_bytes,
)
from costack.config import RunConfig, parse_config
from costack.errors import CostackError
from costack.grid import Grid, compute_grid, resolution_ratio
from costack.items import discover, read_manifest, write_manifest
from costack.rasterio_io import (
    BLOCK,
    atomic_path,
    open_float32,
    read_float32,
    read_window,
    strip_rows,
    strips,
    write_float32,
    write_json,
)
from costack.remote import gdal_path
from costack.stac import StackAsset, build_item, portable_href, write_catalog

log = logging.getLogger(__name__)


def preflight(raw_config: dict[str, Any]) -> tuple[RunConfig, pd.DataFrame, Grid]:
    """Check everything that can be checked before any work: config, items, rasters, grid.

    Raises:
        CostackError: the first problem found, as one line naming the parameter and the fix.
    """
    cfg = parse_config(raw_config)
    parse_expressions(cfg)
    manifest = discover(cfg)
    grid = compute_grid(manifest, cfg.reference.key, cfg.aoi, cfg.min_overlap_px)
    check_memory(cfg, manifest, grid)
    return cfg, manifest, grid


#: Flows of grids up to this size run in memory (see costack.coregister.TILED_ABOVE); larger
#: ones in tiles whose peak is about TILED_FLOW_BYTES whatever the scene.
IN_MEMORY_FLOW_PIXELS = 16_000_000
FLOW_BYTES_PER_PIXEL = 100
TILED_FLOW_BYTES = 2_800_000_000


#: Peak bytes per grid pixel of the jobs that read whole grids (measured on a 4096 x 4096
#: pair: tie points, QC re-matching); the warp beyond TILED_ABOVE goes by tiles.
TIEPOINT_BYTES_PER_PIXEL = 80
QC_BYTES_PER_PIXEL = 60
TILED_WARP_BYTES = 600_000_000


def job_memory(cfg: RunConfig, manifest: pd.DataFrame, grid: Grid) -> dict[str, int]:
    """Estimated peak memory (bytes) of the heaviest job of each kind on this grid.

    Co-location streams (:func:`costack.colocate.streamed_bytes`: GDAL's cache and chunk, two
    strips, geolocation arrays of a GCP source). Flow: about 100 B per
    grid pixel in memory up to 16 Mpx, tiled above; the warp likewise. Band math:
    :func:`costack.bandmath.memory_bytes`, by strips beyond 1 GB. Tie points and QC read the
    whole grid (tie points about 80 B per pixel, QC 60).
    """
    px = grid.width * grid.height
    coloc = 0
    for _, r in manifest.iterrows():
        src_px, gcps = int(r["width"]) * int(r["height"]), r["georef"] == "gcps"
        coloc = max(coloc, streamed_bytes(src_px, gcps))
    out = {"colocate_asset": coloc}
    if cfg.secondary_datasets:
        out["coregister_asset"] = 24 * px if px <= IN_MEMORY_FLOW_PIXELS else TILED_WARP_BYTES
        out["estimate_flow"] = (
            FLOW_BYTES_PER_PIXEL * px if px <= IN_MEMORY_FLOW_PIXELS else TILED_FLOW_BYTES
        )
        out["match_tiepoints"] = TIEPOINT_BYTES_PER_PIXEL * px
        out["assess_registration"] = QC_BYTES_PER_PIXEL * px
    for name, parsed in parse_expressions(cfg).items():
        need = memory_bytes(parsed, px)
        if need > BANDMATH_IN_MEMORY_BYTES:
            need = max(
                BANDMATH_STRIP_BYTES, STRIP_OVERHEAD * memory_bytes(parsed, grid.width * BLOCK)
            )
        out[f"evaluate_expression ({name})"] = need
    return out


def check_memory(cfg: RunConfig, manifest: pd.DataFrame, grid: Grid) -> None:
    """Refuse, before any job, a run whose heaviest job would exceed ``max_job_memory_mb``."""
    ceiling = cfg.max_job_memory_mb * 1_000_000
    job, need = max(job_memory(cfg, manifest, grid).items(), key=lambda kv: kv[1])
    if need > ceiling:
        where = "aoi" if cfg.aoi else ("expressions" if job.startswith("evaluate") else "assets")
        raise CostackError(
            where,
            f"the grid is {grid.width} x {grid.height} px ({grid.width * grid.height / 1e6:,.0f}"
            f" Mpx): the {job} job would need about {need / 1e9:.1f} GB, above "
            f"max_job_memory_mb = {cfg.max_job_memory_mb}",
            "draw a smaller AOI (or simplify the expression), or raise max_job_memory_mb on a "
            "machine with that much memory",
        )


def _fingerprint(paths) -> list[list]:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append([str(p), st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([str(p), None, None])
    return out


def cached_preflight(
    raw_config: dict[str, Any], cache_dir: str | Path = ".snakemake/costack"
) -> tuple[RunConfig, pd.DataFrame, Grid]:
    """:func:`preflight`, run once per configuration and set of local files.

    Snakemake parses the workflow at every call (``-n``, ``--unlock``, ``--summary``) and again
    in every job; the preflight opens every item and raster header (42 s for 10,000 assets) and
    needs remote sources to answer. Its result (manifest and grid) is kept under
    ``.snakemake/costack/`` keyed by the configuration and the local items' size and mtime,
    and reused while no local item or raster it read has changed; so a lock left while a
    remote source is down can still be removed, and jobs start without it.
    """
    cfg = parse_config(raw_config)
    items = [p for p in cfg.inputs if "://" not in p]
    key_text = json.dumps([raw_config, _fingerprint(items)], sort_keys=True, default=str)
    key = hashlib.sha256(key_text.encode()).hexdigest()[:20]
    folder = Path(cache_dir) / f"preflight-{key}"
    manifest_csv = folder / "manifest.csv"
    grid_json = folder / "grid.json"
    sources_json = folder / "sources.json"
    if sources_json.is_file() and manifest_csv.is_file() and grid_json.is_file():
        try:
            sources = json.loads(sources_json.read_text(encoding="utf-8"))
            if _fingerprint([s[0] for s in sources]) == sources:
                return cfg, read_manifest(manifest_csv), Grid.load(grid_json)
        except (OSError, ValueError, KeyError):
            pass
    cfg, manifest, grid = preflight(raw_config)
    rasters = [p for p in manifest["gdal_path"] if Path(str(p)).is_file()]
    try:
        with atomic_path(manifest_csv) as tmp:
            write_manifest(manifest, tmp)
        with atomic_path(grid_json) as tmp:
            grid.save(tmp)
        write_json(sources_json, _fingerprint(rasters))
    except OSError:
        pass  # a read-only working directory: no cache, the next call checks again
    return cfg, read_manifest(manifest_csv) if manifest_csv.is_file() else manifest, grid


def unused_inputs_warning(cfg: RunConfig) -> str | None:
    """A warning naming the inputs that no listed asset uses, or None."""
    unused = [i for i in range(1, len(cfg.inputs) + 1) if i not in cfg.datasets]
    if not unused:
        return None
    names = ", ".join(f"inputs[{i}] ({cfg.inputs[i - 1]})" for i in unused)
    return (f"costack: warning: {names} not used: no asset of the list ({','.join(cfg.keys)}) "
            "is from that dataset; add its assets or remove it from inputs")  # fmt: skip


def parse_expressions(cfg: RunConfig) -> dict[str, ParsedExpression]:
    """Parse every band-math expression against the asset list (name -> parsed)."""
    keys = set(cfg.keys)
    return {e.name: parse(e.source, keys) for e in cfg.expressions}


def run_discover(raw_config: dict[str, Any], out_csv: str | Path) -> pd.DataFrame:
    """Step 1: resolve every listed asset into the manifest CSV."""
    cfg = parse_config(raw_config)
    manifest = discover(cfg)
    with atomic_path(out_csv) as tmp:
        write_manifest(manifest, tmp)
    log.info("discovered %d assets in %d datasets", len(manifest), manifest["dataset"].nunique())
    return manifest


def run_grid(
    manifest_csv: str | Path,
    reference: str,
    aoi: str | None,
    out_json: str | Path,
    min_overlap_px: int = 64,
) -> Grid:
    """Step 2: the common grid from the manifest (AOI, else the common area)."""
    manifest = read_manifest(manifest_csv)
    grid = compute_grid(manifest, reference, aoi, min_overlap_px)
    with atomic_path(out_json) as tmp:
        grid.save(tmp)
    log.info(
        "grid %s: %d x %d px, transform %s",
        grid.crs.to_string(),
        grid.width,
        grid.height,
        tuple(grid.transform)[:6],
    )
    return grid


def run_colocate(
    manifest_csv: str | Path,
    grid_json: str | Path,
    key: str,
    out_tif: str | Path,
    resampling: str = "bilinear",
    pixel_center: bool = True,
    threads: int = 1,
) -> None:
    """Step 3: warp asset ``key`` onto the grid (Float32 GeoTIFF, nodata carried)."""
    row = read_manifest(manifest_csv).loc[key]
    grid = Grid.load(grid_json)
    start = time.perf_counter()
    ratio = resolution_ratio(row["res_x"], row["res_y"], grid)
    tags = {"costack_key": key, "costack_source": str(row["href_given"]),
            "costack_kind": str(row["kind"]), "costack_resolution_ratio": str(ratio)}  # fmt: skip
    file_nodata = row["nodata"]
    item_nodata = row["item_nodata"]
    radiometry = {
        "scale": float(row["scale"]),
        "offset": float(row["offset"]),
        "nodata": None if np.isnan(file_nodata) else float(file_nodata),
        "extra_nodata": None if np.isnan(item_nodata) else float(item_nodata),
    }
    if radiometry["scale"] != 1.0 or radiometry["offset"] != 0.0:
        tags["costack_radiometry"] = (
            f"physical = DN * {row['scale']:g} + {row['offset']:g} ({row['radiometry']})"
        )
    try:
        colocate_asset(
            gdal_path(str(row["href"])), grid, out_tif, resampling, bool(row["db"]),
            pixel_center, threads, tags, **radiometry,
        )  # fmt: skip
    except RasterioIOError as err:
        raise CostackError(
            "assets",
            f"{key}: cannot read {row['href']} ({' '.join(str(err).split())[:160]})",
            "check that the file or URL is reachable, then rerun",
        ) from err
    log.info("colocated %s in %.2f s", key, time.perf_counter() - start)


def registration_verdict(summary: dict) -> str:
    """The worst verdict over the secondary datasets of a QC summary (``pass`` if none)."""
    verdicts = {q.get("verdict", "pass") for q in summary.values()}
    return "fail" if "fail" in verdicts else "warn" if "warn" in verdicts else "pass"


def run_coregister_identity(colocated: str | Path, out_tif: str | Path) -> None:
    """Step 4 for the reference dataset, whose assets are not moved: a copy of the colocated
    raster (secondary datasets are warped by :func:`costack.coregister.run_warp`)."""
    with atomic_path(out_tif) as tmp:
        shutil.copyfile(colocated, tmp)


#: Band math whose in-memory peak (:func:`costack.bandmath.memory_bytes`) would pass this runs
#: by strips of about BANDMATH_STRIP_BYTES (:func:`costack.bandmath.evaluate_by_strips`).
BANDMATH_IN_MEMORY_BYTES = 1_000_000_000
BANDMATH_STRIP_BYTES = 256_000_000
#: Measured peak of a strip over :func:`costack.bandmath.memory_bytes` (the reads, the writer's
#: copies and NumPy's temporaries: about 140 B/px for a 49 B/px estimate on a 4291 px wide grid).
STRIP_OVERHEAD = 3


def run_bandmath(
    source: str,
    rasters: dict[str, str | Path],
    out_tif: str | Path,
    grid_json: str | Path | None = None,
    listed: set[str] | None = None,
    max_in_memory_bytes: int = BANDMATH_IN_MEMORY_BYTES,
    strip_bytes: int = BANDMATH_STRIP_BYTES,
) -> None:
    """Band math: evaluate ``name:(expr)`` on co-registered rasters into a Float32 GeoTIFF.

    Args:
        source: the expression as written, ``name:(s-expression)``.
        rasters: asset key -> raster path (at least every asset the expression reads).
        out_tif: output GeoTIFF (NaN is nodata).
        grid_json: grid of the run (gives the shape of constant expressions).
        listed: keys of the asset list (default: the keys of ``rasters``).
        max_in_memory_bytes: above this estimated peak the grid is evaluated by strips of about
            ``strip_bytes`` (same values; a ``mean`` is then summed strip by strip).
    """
    parsed = parse(source, set(listed) if listed is not None else set(rasters))
    grid = Grid.load(grid_json) if grid_json else None
    for key in parsed.assets:
        with rasterio.open(rasters[key]) as src:
            grid = grid or Grid(src.crs, src.transform, src.width, src.height)
    if grid is None:
        raise CostackError("expressions", f"{source!r} reads no asset and no grid was given",
                           "pass the grid JSON")  # fmt: skip
    tags = {"costack_expression": parsed.source}
    px = grid.width * grid.height
    if memory_bytes(parsed, px) <= max_in_memory_bytes:
        arrays = {key: read_float32(rasters[key])[0] for key in parsed.assets}
        result = evaluate(parsed, arrays, grid.shape)
        valid = int(np.isfinite(result).sum())
        write_float32(out_tif, result, grid, tags=tags)
    else:
        per_px = STRIP_OVERHEAD * memory_bytes(parsed, 1)
        rows = strip_rows(grid.width, grid.height, per_px, strip_bytes)
        log.info("%s: by strips of %d rows (in memory it would need %.1f GB)", parsed.name,
                 rows, memory_bytes(parsed, px) / 1e9)  # fmt: skip
        with ExitStack() as stack:
            stack.enter_context(rasterio.Env(GDAL_CACHEMAX=STREAM_CACHE_MB))
            srcs = {k: stack.enter_context(rasterio.open(rasters[k])) for k in parsed.assets}
            dst = stack.enter_context(open_float32(out_tif, grid, tags=tags))

            def read(key: str, r0: int, r1: int) -> np.ndarray:
                return read_window(srcs[key], Window(0, r0, grid.width, r1 - r0))

            def write(result: np.ndarray, r0: int, r1: int) -> None:
                dst.write(result, 1, window=Window(0, r0, grid.width, r1 - r0))

            bounds = list(strips(grid.height, rows))
            valid = evaluate_by_strips(parsed, read, grid.shape, bounds, write)
    log.info("%s: %d of %d pixels valid", parsed.name, valid, px)


def run_cog(src: str | Path, dst: str | Path) -> None:
    """Step 5a: convert a co-registered raster to a validated COG."""
    write_cog(src, dst)


def run_catalog(
    manifest_csv: str | Path,
    grid_json: str | Path,
    cogs: dict[str, str | Path],
    reference: str,
    item_id: str,
    catalog_json: str | Path,
    item_json: str | Path,
    expressions: dict[str, str | Path] | None = None,
    properties: dict[str, Any] | None = None,
    flows: dict[int, tuple[str | Path, str | Path, str | Path]] | None = None,
    qc_json: str | Path | None = None,
    on_failed_registration: str = "stop",
) -> None:
    """Step 5b: the STAC catalog and the stack's item.

    A secondary dataset whose verdict (``results/qc/summary.json``) is ``fail`` stops this step
    before anything is written, unless ``on_failed_registration`` is ``publish``: the item is
    then published flagged (``costack:verdict``: ``fail``)."""
    qc = json.loads(Path(qc_json).read_text(encoding="utf-8")) if qc_json else {}
    verdict = registration_verdict(qc)
    failed = {n: q for n, q in qc.items() if q.get("verdict") == "fail"}
    if failed and on_failed_registration != "publish":
        n, q = next(iter(failed.items()))
        label = f" ({q['label']})" if q.get("label") else ""
        more = f"; {len(failed) - 1} more dataset(s) failed" if len(failed) > 1 else ""
        raise CostackError(
            "registration",
            f"dataset {n}{label} failed: {q['reasons'][0]}{more}; no item was published",
            f"inspect results/qc/{n}.json and the report (snakemake --report), fix the input "
            "or set on_failed_registration: publish to publish it flagged",
        )
    manifest = read_manifest(manifest_csv)
    grid = Grid.load(grid_json)
    assets: list[StackAsset] = []
    for key, path in cogs.items():
        row = manifest.loc[key]
        _, _, nodata = read_float32(path)
        sar = None
        if row["kind"] == "sar":
            sar = {"polarizations": [row["polarization"]] if row["polarization"] else []}
            for field in ("frequency_band", "instrument_mode", "product_type"):
                if row[f"sar_{field}"]:
                    sar[field] = str(row[f"sar_{field}"])
            if str(row["sar_center_frequency"]):
                sar["center_frequency"] = float(row["sar_center_frequency"])
        extra: dict[str, Any] = {"costack:source": {
            "item": row["item_id"], "asset": row["asset_key"],
            "href": portable_href(row["href"], Path(item_json).parent),
        }}  # fmt: skip
        if row["db"]:
            extra["costack:resampling"] = (
                "dB resampled as linear power 10^(dB/10) during co-location and "
                "co-registration, converted back to dB"
            )
        applied = (row["scale"], row["offset"]) != (1.0, 0.0)
        declared = (row["source_scale"], row["source_offset"]) != (1.0, 0.0)
        if applied or declared:
            extra["costack:radiometry"] = {
                "source_scale": row["source_scale"], "source_offset": row["source_offset"],
                "applied": bool(applied), "how": row["radiometry"],
            }  # fmt: skip
        assets.append(
            StackAsset(
                key=key,
                path=Path(path),
                title=f"{key}: {row['asset_key']} of {row['item_id']}, co-registered",
                nodata=nodata,
                band_name=row["band"],
                unit=row["unit"] or None,
                extra=extra,
                sar=sar,
                platform=row["platform"] or None,
                constellation=row["constellation"] or None,
                scale=(1.0 if applied else float(row["source_scale"])) if declared else None,
                offset=(0.0 if applied else float(row["source_offset"])) if declared else None,
                common_name=(row["common_name"].split(",")[0] or None)
                if row["common_name"]
                else None,
            )
        )
    for source, path in (expressions or {}).items():
        name, _, text = source.partition(":")
        _, _, nodata = read_float32(path)
        assets.append(
            StackAsset(
                key=name.strip(),
                path=Path(path),
                title=f"{name.strip()}: band math {text.strip()}",
                nodata=nodata,
                extra={"costack:expression": text.strip()},
            )
        )
    properties = dict(properties or {})
    registration = {}
    for n, (disp, conf, stats_json) in sorted((flows or {}).items()):
        stats = json.loads(Path(stats_json).read_text(encoding="utf-8"))
        registration[str(n)] = stats
        assets.append(
            StackAsset(
                key=f"displacement:{n}", path=Path(disp), nodata=float("nan"), roles=["metadata"],
                title=f"Dense displacement of dataset {n} (band 1 dx, band 2 dy, grid pixels)",
                unit="pixel", band_count=2,
                extra={"costack:flow_mode": stats["mode"]},
            )
        )  # fmt: skip
        assets.append(
            StackAsset(
                key=f"confidence:{n}", path=Path(conf), nodata=float("nan"), roles=["metadata"],
                title=f"Confidence of the displacement of dataset {n} (0 to 1)",
            )
        )  # fmt: skip
    if qc:
        properties["costack:qc"] = qc
        properties["costack:verdict"] = verdict
    if registration:
        properties["costack:registration"] = {
            "algorithm": "GeFolki family dense optical flow (Plyer et al. 2015; Brigot et al. "
            "2016), costack implementation",
            "datasets": registration,
        }
    item = build_item(
        item_id, grid, manifest, reference, assets, properties, Path(item_json).parent
    )
    Path(item_json).parent.mkdir(parents=True, exist_ok=True)
    write_catalog(item, catalog_json, item_json)
