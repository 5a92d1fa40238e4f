"""The run plan: everything decided before any job, once, for the Snakefile, ``costack check``
and ``costack run`` alike.

:func:`preflight` checks the config, items, rasters and the common grid and estimates each
job's peak memory against ``max_job_memory_mb`` (:func:`job_memory`);
:func:`cached_preflight` keeps its result per configuration and set of local files;
:class:`RunPlan` holds what the rules need per asset and dataset (matching asset, dB flag,
resolution ratio, label), computed here only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from costack.config import RunConfig, parse_config
from costack.errors import CostackError
from costack.io.files import atomic_path, write_json
from costack.io.grids import Grid, resolution_ratio
from costack.io.manifest import dataset_label, read_manifest, write_manifest
from costack.io.rasters import BLOCK
from costack.limits import (
    QC_BLOCK_MARGIN,
    TIEPOINT_BYTES_PER_PIXEL,
    TIEPOINT_IN_MEMORY_PIXELS,
    TILED_ABOVE,
    qc_block_side,
    qc_bytes_per_pixel,
    qc_in_memory_pixels,
    qc_parallel,
)
from costack.stages.bandmath import (
    BANDMATH_IN_MEMORY_BYTES,
    BANDMATH_STRIP_BYTES,
    STRIP_OVERHEAD,
    ParsedExpression,
    memory_bytes,
    parse,
)
from costack.stages.colocate import streamed_bytes
from costack.stages.discover import discover, find_item_masks
from costack.stages.grid import compute_grid

log = logging.getLogger(__name__)


def preflight(raw_config: dict[str, Any]) -> RunPlan:
    """Check everything that can be checked before any work: config, items, rasters, grid,
    each job's memory; returns the run's plan.

    Raises:
        CostackError: the first problem found, as one line naming the parameter and the fix.
    """
    cfg = parse_config(raw_config)
    parse_expressions(cfg)
    manifest = discover(cfg)
    grid = compute_grid(manifest, cfg.reference.key, cfg.aoi, cfg.min_overlap_px)
    check_memory(cfg, manifest, grid)
    masks = find_item_masks(cfg) if raw_config.get("item_masks", True) else {}
    return make_plan(cfg, manifest, grid, masks)


#: Flows of grids up to TILED_ABOVE run in memory (about FLOW_BASE_BYTES plus
#: FLOW_BYTES_PER_PIXEL), larger ones in tiles whose peak is about TILED_FLOW_BYTES whatever
#: the scene. The mode is decided in the job, so the estimate is GEFolki's, the larger (its
#: second start and the CFOG comparisons). Peak RSS of ``costack flow`` measured 2026-12-04:
#: GEFolki 2000x2000 1.39 GB, 4000x4000 (16 Mpx, the largest in memory) 3.85 GB; EFolki 0.78
#: and 2.13 GB; a 10980x10980 scene by tiles 1.25 GB same-sensor, 1.21 GB SAR/optical (2208 px
#: tiles with the default radii; the widest windows, a coarse secondary's, make the haloed
#: tile about 1.4x larger). All under the rule's 4096 MB.
FLOW_BASE_BYTES = 600_000_000
FLOW_BYTES_PER_PIXEL = 205
TILED_FLOW_BYTES = 2_000_000_000


#: The warp beyond TILED_ABOVE goes by tiles of about this peak.
TILED_WARP_BYTES = 600_000_000


def qc_bytes(px: int, width: int, multimodal: bool) -> int:
    """Peak bytes of the QC job on a grid of ``px`` pixels, ``width`` wide: in memory (twice,
    on two threads, when small), or one block and its margins (:mod:`costack.limits`)."""
    bpp = qc_bytes_per_pixel(multimodal)
    if px <= qc_in_memory_pixels(multimodal):
        return bpp * px * (2 if qc_parallel(px, multimodal) else 1)
    side = qc_block_side(multimodal)
    rows, cols = min(side, px // width), min(side, width)
    return bpp * (rows + 2 * QC_BLOCK_MARGIN) * (cols + 2 * QC_BLOCK_MARGIN)


def job_memory(cfg: RunConfig, manifest: pd.DataFrame, grid: Grid) -> dict[str, int]:
    """Estimated peak memory (bytes) of the heaviest job of each kind on this grid.

    Co-location streams (:func:`costack.stages.colocate.streamed_bytes`: GDAL's cache and chunk, two
    strips, geolocation arrays of a GCP source). Flow: 0.6 GB and 205 B per
    grid pixel in memory up to 16 Mpx (GEFolki's path), tiled above; the warp likewise. Band math:
    :func:`costack.stages.bandmath.memory_bytes`, by strips beyond 1 GB. QC: :func:`qc_bytes` (up to
    1 GB in memory, by blocks above). Tie points: 80 B per pixel up to 16 Mpx, by tiles of at most
    that above.
    """
    px = grid.width * grid.height
    coloc = 0
    for _, r in manifest.iterrows():
        src_px, gcps = int(r["width"]) * int(r["height"]), r["georef"] == "gcps"
        coloc = max(coloc, streamed_bytes(src_px, gcps))
    out = {"colocate_asset": coloc}
    if cfg.secondary_datasets:
        out["coregister_asset"] = 24 * px if px <= TILED_ABOVE else TILED_WARP_BYTES
        out["estimate_flow"] = (
            FLOW_BASE_BYTES + FLOW_BYTES_PER_PIXEL * px if px <= TILED_ABOVE else TILED_FLOW_BYTES
        )
        out["match_tiepoints"] = TIEPOINT_BYTES_PER_PIXEL * min(px, TIEPOINT_IN_MEMORY_PIXELS)
        # the QC on CFOG descriptors or on intensities, whichever needs more (the mode is
        # decided from the rasters in the job)
        out["assess_registration"] = max(qc_bytes(px, grid.width, m) for m in (True, False))
    for name, parsed in parse_expressions(cfg).items():
        need = memory_bytes(parsed, px)
        if need > BANDMATH_IN_MEMORY_BYTES:
            need = max(
                BANDMATH_STRIP_BYTES, STRIP_OVERHEAD * memory_bytes(parsed, grid.width * BLOCK)
            )
        out[f"evaluate_expression ({name})"] = need
    return out


def check_memory(cfg: RunConfig, manifest: pd.DataFrame, grid: Grid) -> None:
    """Refuse, before any job, a grid larger than ``max_grid_pixels`` or a run whose heaviest
    job would exceed ``max_job_memory_mb``."""
    px = grid.width * grid.height
    if px > cfg.max_grid_pixels:
        raise CostackError(
            "aoi" if cfg.aoi else "assets",
            f"the grid is {grid.width} x {grid.height} px ({px / 1e6:,.0f} Mpx), above "
            f"max_grid_pixels = {cfg.max_grid_pixels:,} (time and disk grow with the grid: "
            f"about {px * 4 / 1e9:,.0f} GB per Float32 raster)",
            "draw a smaller AOI, or raise max_grid_pixels for a mosaic that large",
        )
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
) -> RunPlan:
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
    masks_json = folder / "masks.json"
    if sources_json.is_file() and manifest_csv.is_file() and grid_json.is_file():
        try:
            sources = json.loads(sources_json.read_text(encoding="utf-8"))
            masks = {int(k): v for k, v in
                     json.loads(masks_json.read_text(encoding="utf-8")).items()}  # fmt: skip
            if _fingerprint([s[0] for s in sources]) == sources:
                return make_plan(cfg, read_manifest(manifest_csv), Grid.load(grid_json), masks)
        except (OSError, ValueError, KeyError, CostackError):
            pass
    plan = preflight(raw_config)
    cfg, manifest, grid = plan.cfg, plan.manifest, plan.grid
    rasters = [p for p in manifest["gdal_path"] if Path(str(p)).is_file()]
    try:
        with atomic_path(manifest_csv) as tmp:
            write_manifest(manifest, tmp)
        grid.save(grid_json)
        write_json(masks_json, {str(k): v for k, v in plan.item_masks.items()})
        write_json(sources_json, _fingerprint(rasters))
    except OSError:
        pass  # a read-only working directory: no cache, the next call checks again
    if not manifest_csv.is_file():
        return plan
    return make_plan(cfg, read_manifest(manifest_csv), grid, plan.item_masks)


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


def matching_asset(cfg: RunConfig, dataset: int, overrides: dict | None = None) -> str:
    """Key of the asset of ``dataset`` that the tie points, the flow and the QC are computed on:
    the one ``matching_assets`` names, else the asset with the reference's band name, else the
    dataset's first listed asset."""
    overrides = {int(k): v for k, v in (overrides or {}).items()}
    assets = cfg.assets_of(dataset)
    if dataset in overrides:
        key = f"{dataset}.{overrides[dataset]}"
        if key in {a.key for a in assets}:
            return key
    for a in assets:
        if a.band == cfg.reference.band:
            return a.key
    return assets[0].key


@dataclass(frozen=True)
class RunPlan:
    """What the rules need per asset and per secondary dataset, computed once from a checked
    configuration, its manifest and grid (:func:`make_plan`); the Snakefile, ``costack check``
    and ``costack run`` read it from here only.

    ``matching``: dataset -> key of its matching asset; ``db``: key -> whether the asset is in
    dB (resampled as linear power); ``resolution_ratio``: key -> native pixel over the grid's;
    ``kind``: key -> ``optical`` or ``sar``; ``label``: dataset -> platform and date, for logs
    and the report; ``kinds_differ``: dataset -> whether its matching asset's kind differs from
    the reference's (the flow then runs GEFolki and the tie points and QC match CFOG
    descriptors; within one kind the jobs decide from the rasters' local contrast).
    """

    cfg: RunConfig
    manifest: pd.DataFrame
    grid: Grid
    matching: dict[int, str]
    db: dict[str, bool]
    resolution_ratio: dict[str, float]
    kind: dict[str, str]
    label: dict[int, str]
    kinds_differ: dict[int, bool]
    #: dataset -> its item's quality-mask asset ({"key", "kind", "href"}), when it has one
    item_masks: dict[int, dict[str, str]] = field(default_factory=dict)

    @property
    def reference(self) -> str:
        """Key of the reference asset."""
        return self.cfg.reference.key

    @property
    def secondary(self) -> list[int]:
        """The secondary datasets, in order."""
        return self.cfg.secondary_datasets

    def polarisations(self, dataset: int) -> list[str]:
        """The other polarisations of a SAR dataset's matching asset, which the flow's
        structure mode averages with it: the dataset's assets of kind ``sar`` whose band is the
        matching asset's but for its polarisation (``s0_db_c_vh`` beside ``s0_db_c_vv``); none
        for an optical matching asset."""
        key = self.matching.get(dataset)
        if key is None or self.kind.get(key) != "sar":
            return []
        rows = self.manifest
        stem = lambda band: str(band).rsplit("_", 1)[0]  # noqa: E731
        match = rows[rows["key"] == key].iloc[0]
        if not str(match.get("polarization", "") or ""):
            return []
        same = rows[(rows["dataset"].astype(int) == int(dataset)) & (rows["key"] != key)
                    & (rows["kind"] == "sar")]  # fmt: skip
        return [
            str(r["key"])
            for _, r in same.iterrows()
            if str(r.get("polarization", "") or "") and stem(r["band"]) == stem(match["band"])
        ]

    def summary(self) -> str:
        """One line for ``costack check``."""
        g = self.grid
        return (f"ok: {len(self.manifest)} assets in {len(self.cfg.datasets)} datasets; grid "
                f"{g.crs.to_string()} {g.width}x{g.height} px at {g.transform.a:g} m")  # fmt: skip


def make_plan(
    cfg: RunConfig, manifest: pd.DataFrame, grid: Grid,
    item_masks: dict[int, dict[str, str]] | None = None,
) -> RunPlan:  # fmt: skip
    """The :class:`RunPlan` of a checked configuration (see :func:`preflight`)."""
    rows = manifest.set_index("key", drop=False)
    matching = {n: matching_asset(cfg, n, cfg.matching_assets) for n in cfg.secondary_datasets}
    kind = {str(k): str(v) for k, v in zip(rows["key"], rows["kind"], strict=True)}
    label = {n: dataset_label(rows.loc[key, "platform"], rows.loc[key, "datetime"], n)
             for n, key in matching.items()}  # fmt: skip
    return RunPlan(
        cfg=cfg,
        manifest=manifest,
        grid=grid,
        matching=matching,
        db={str(k): bool(v) for k, v in zip(rows["key"], rows["db"], strict=True)},
        resolution_ratio={
            str(k): resolution_ratio(rx, ry, grid)
            for k, rx, ry in zip(rows["key"], rows["res_x"], rows["res_y"], strict=True)
        },
        kind=kind,
        label=label,
        kinds_differ={n: kind[key] != kind[cfg.reference.key] for n, key in matching.items()},
        item_masks=dict(item_masks or {}),
    )


def is_own_stack_file(name: str, plan: RunPlan) -> bool:
    """Whether the run writes ``results/stack/NAME``: its item, a COG per asset and per
    band-math output, and per secondary dataset N its ``N-WHAT.tif`` products (displacement,
    confidence, and whatever else a stage publishes per dataset)."""
    if name == f"{plan.cfg.item_id}.json":
        return True
    stem, dot, ext = name.rpartition(".")
    if not dot or ext != "tif":
        return False
    if stem in plan.cfg.keys or stem in {e.name for e in plan.cfg.expressions}:
        return True
    n, dash, what = stem.partition("-")
    return bool(dash and what and n.isdigit() and int(n) in plan.secondary)


def _own_stack_entry(path: Path, plan: RunPlan) -> bool:
    """Whether ``results/stack/PATH`` is the run's own: one of its files
    (:func:`is_own_stack_file`), a regular file or a hard link but no symbolic link, or
    Snakemake's ``.snakemake_timestamp`` (the folder's date), or one of the run's own COGs
    half-published (``.NAME.publishing``, left by an interrupted catalog step)."""
    if path.is_symlink() or not path.is_file():
        return False
    name = path.name
    if name == ".snakemake_timestamp":
        return True
    if name.startswith(".") and name.endswith(".publishing"):
        name = name[1 : -len(".publishing")]
    elif name.startswith("."):
        return False
    return is_own_stack_file(name, plan)


def refuse_foreign_results(plan: RunPlan, workdir: str | Path = ".") -> None:
    """Refuse, before anything is written, a run whose ``results/stack/`` (in ``workdir``)
    holds anything it does not make: another run's item, COGs that the new item would not list,
    a folder, a hidden file or a link of the user's (``snakemake --configfile mine.yaml`` in a
    folder where the demo ran). The catalog step's output is the folder as a whole, which
    Snakemake deletes before the step and after a failure: whatever else lies there would be
    lost. So is a ``results/stack`` that is a link or a file. A rerun of the same configuration,
    or of one that adds outputs, passes.

    Raises:
        CostackError: naming the first foreign entries and the fix (a folder of its own).
    """
    given = (Path(workdir) / "results" / "stack").absolute()
    fix = (
        "give each run its own folder: costack run --out DIR, or snakemake -d DIR (-s "
        "costack/Snakefile from elsewhere); or remove the earlier run's results/ first"
    )
    if given.is_symlink() or (given.exists() and not given.is_dir()):
        raise CostackError(
            "results", f"{given} is {'a link' if given.is_symlink() else 'not a folder'}; the "
            "catalog step writes the folder results/stack as a whole and would replace it", fix,
        )  # fmt: skip
    stack = given.resolve()
    if not stack.is_dir():
        return
    foreign = sorted(p.name for p in stack.iterdir() if not _own_stack_entry(p, plan))
    if not foreign:
        return
    items = [name for name in foreign if name.endswith(".json")]
    what = (f"another run's item ({', '.join(items[:2])})" if items else
            f"{len(foreign)} entries this run does not make ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''})")  # fmt: skip
    raise CostackError(
        "results",
        f"{stack} holds {what}; a run here would delete them when it publishes its item "
        f"{plan.cfg.item_id} (the catalog step writes the folder as a whole)",
        fix,
    )
