"""The catalog stage (rules ``convert_cog``, ``convert_expression_cog``, ``convert_flow_cog``,
``build_catalog``; ``costack cog``, ``costack catalog``): validated Cloud Optimized GeoTIFFs
(:mod:`costack.io.cog`) and the STAC catalog with the stack's item (:mod:`costack.io.stac`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from costack.errors import CostackError
from costack.io.cog import write_cog
from costack.io.grids import Grid
from costack.io.rasters import costack_tags, dataset_of, raster_nodata

log = logging.getLogger(__name__)

#: the STAC role of the support assets (issue 35), explained by their description
SUPPORT_ROLE = "registration-support"
SUPPORT_DESCRIPTION = (
    "Where the dense displacement is the data's own match (1) and where the two images did not "
    "support a match (a change such as a flood, new construction or a burn scar, clouds, a mask, "
    "no data) so that the displacement was taken from the stable surroundings (0): a robust "
    "global model of the reliable flow plus a smooth interpolation of its residual. Values in "
    "between: the blend at the boundary. costack:unsupported_fraction is the share of the "
    "overlap that came from the surroundings."
)


def registration_verdict(summary: dict) -> str:
    """The worst verdict over the secondary datasets of a QC summary (``pass`` if none)."""
    verdicts = {q.get("verdict", "pass") for q in summary.values()}
    return "fail" if "fail" in verdicts else "warn" if "warn" in verdicts else "pass"


def _without_timings(stats: dict) -> dict:
    """The flow's statistics without its wall-clock timings (``seconds``, at any depth)."""
    return {k: _without_timings(v) if isinstance(v, dict) else v
            for k, v in stats.items() if k != "seconds"}  # fmt: skip


def run_cog(
    src: str | Path, dst: str | Path, threads: int = 1, compression: str = "deflate"
) -> None:
    """Convert a co-registered raster (or a flow, confidence, support or band-math raster) to a
    validated COG: same pixels, same tags (rules ``convert_*``, ``costack cog``). The verdicts
    are not checked here: the COG goes to ``results/cog``, and :func:`run_catalog` publishes it
    only once they allow it. Tiles are compressed on ``threads`` threads (the same bytes), with
    ``compression`` (config ``cog_compression``: :data:`costack.io.cog.CODECS`)."""
    write_cog(src, dst, threads=threads, compression=compression)


def check_registration(qc_json: str | Path, on_failed_registration: str = "stop") -> dict:
    """The QC summary; a secondary dataset whose verdict is ``fail`` is one line unless
    ``on_failed_registration`` is ``publish``."""
    qc = json.loads(Path(qc_json).read_text(encoding="utf-8"))
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
    return qc


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
    flows: dict[int, tuple[str | Path, ...]] | None = None,
    qc_json: str | Path | None = None,
    on_failed_registration: str = "stop",
    publish_dir: str | Path | None = None,
    threads: int = 1,
) -> None:
    """The STAC catalog and the stack's item.

    A secondary dataset whose verdict (``results/qc/summary.json``) is ``fail`` stops this step
    before anything is written, unless ``on_failed_registration`` is ``publish``: the item is
    then published flagged (``costack:verdict``: ``fail``).

    ``publish_dir`` (the workflow's ``results/stack``, beside the item): the COGs, written
    before the verdicts (``results/cog``), are linked there under their own names once the
    verdicts allow it, and the item points to them there (:func:`publish`); None: the item
    points to the COGs where they are. ``threads``: COGs checksummed at once (the same item).

    ``flows``: per secondary dataset, (displacement COG, confidence COG, flow statistics JSON)
    and optionally the support COG (where registration came from the stable surroundings,
    issue 35), published with the role ``registration-support``."""
    qc = check_registration(qc_json, on_failed_registration) if qc_json else {}
    verdict = registration_verdict(qc)
    # pandas and pystac: imported by this job only, not by the many COG conversions
    from costack.io.manifest import read_manifest

    manifest = read_manifest(manifest_csv)
    grid = Grid.load(grid_json)
    # before anything is written: a COG or flow published under another asset's key or
    # dataset (a by-hand call with two paths swapped) would be catalogued without a word
    for key, path in cogs.items():
        tagged = costack_tags(path).get("costack_key")
        if tagged and tagged != key:
            raise CostackError("--asset", f"{path} is asset {tagged}, given as {key}",
                               f"give {key}'s own COG (results/cog/{key}.tif)")  # fmt: skip
    for n, (disp, *rest) in (flows or {}).items():
        for path in (disp, *rest[2:]):  # the displacement and the support COG
            estimated_on = costack_tags(path).get("costack_flow_secondary")
            if dataset_of(estimated_on) not in (None, str(n)):
                raise CostackError(
                    "--flow", f"{path} is dataset {dataset_of(estimated_on)}'s flow (estimated "
                    f"on {estimated_on}), given as dataset {n}'s",
                    f"give dataset {n}'s flow COGs (results/cog/{n}-displacement.tif)",
                )  # fmt: skip
    published: list[Path] = []
    if publish_dir is not None:  # every check above passed: nothing refuses the item now
        cogs, expressions, flows = publish(cogs, expressions, flows, publish_dir, published)
    try:
        _write_item(manifest, manifest_csv, grid, cogs, reference, item_id, catalog_json,
                    item_json, expressions, properties, flows, qc, verdict, threads)  # fmt: skip
    except BaseException:
        for path in published:  # no published COG without its item
            path.unlink(missing_ok=True)
        raise


def publish(
    cogs: dict, expressions: dict | None, flows: dict | None, publish_dir: str | Path,
    published: list[Path] | None = None,
) -> tuple[dict, dict | None, dict | None]:  # fmt: skip
    """Link each COG into ``publish_dir`` under its own name (a hard link: no copy of a tile's
    gigabytes; a copy where the file system has no links) and return the inputs with the
    published paths; the flows' statistics JSON stays where it is. Each COG arrives whole
    (linked or copied to a temporary name, then renamed) and all are dated the same time, the
    file system's own after the last of them arrived, so that Snakemake finds the published
    files no older than the run's other inputs and no newer than the item written after them.
    (The workflow declares the folder, not the files, as the step's output: a linked COG is
    also the step's input, and Snakemake re-dates declared output files one by one.) A COG
    already there is left as it is. The paths this call created are appended to
    ``published``; a failure removes them."""
    out_dir = Path(publish_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done: list[Path] = published if published is not None else []

    def one(path: str | Path) -> Path:
        src, dst = Path(path), out_dir / Path(path).name
        if src.resolve() == dst.resolve():
            return dst
        tmp = dst.with_name(f".{dst.name}.publishing")
        tmp.unlink(missing_ok=True)
        try:
            try:
                os.link(src, tmp)
            except OSError:  # no hard links (another file system, FAT, some network mounts)
                shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
        done.append(dst)
        return dst

    try:
        cogs = {k: one(p) for k, p in cogs.items()}
        expressions = {k: one(p) for k, p in (expressions or {}).items()} or expressions
        flows = {n: (one(d), one(c), stats, *(one(x) for x in support))
                 for n, (d, c, stats, *support) in (flows or {}).items()} or flows  # fmt: skip
        # one date for all, the file system's own (the directory's, set by the last rename
        # into it): a published COG (its staged twin, the same file) is then never newer than
        # another published one, which Snakemake would take for an input newer than an output,
        # nor than a file written after it (the item, the catalog, Snakemake's own stamp):
        # Python's clock reads finer than a file system that dates by the clock tick
        now = os.stat(out_dir).st_mtime_ns
        for path in done:
            os.utime(path, ns=(now, now))
    except BaseException:
        for path in done:
            path.unlink(missing_ok=True)
        done.clear()
        raise
    return cogs, expressions, flows


def _write_item(
    manifest, manifest_csv, grid, cogs, reference, item_id, catalog_json, item_json,
    expressions, properties, flows, qc, verdict, threads=1,
) -> None:  # fmt: skip
    """The item and catalog of :func:`run_catalog`, its checks passed."""
    from costack.io.manifest import manifest_row
    from costack.io.stac import StackAsset, build_item, portable_href, write_catalog

    assets: list[StackAsset] = []
    for key, path in cogs.items():
        row = manifest_row(manifest, key, manifest_csv)
        nodata = raster_nodata(path)
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
        nodata = raster_nodata(path)
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
    for n, (disp, conf, stats_json, *support) in sorted((flows or {}).items()):
        stats = json.loads(Path(stats_json).read_text(encoding="utf-8"))
        # run timings stay in results/flow/N.json: the item is the same bytes at every rerun
        # and in every checkout
        registration[str(n)] = _without_timings(stats)
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
        if support:
            share = (stats.get("change") or {}).get("unsupported_fraction")
            assets.append(
                StackAsset(
                    key=f"support:{n}", path=Path(support[0]), nodata=float("nan"),
                    roles=["metadata", SUPPORT_ROLE],
                    title=f"Where the registration of dataset {n} came from the stable "
                    "surroundings (0) or the data's own match (1)",
                    extra={"description": SUPPORT_DESCRIPTION, "costack:unsupported_fraction":
                           share},
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
        item_id, grid, manifest, reference, assets, properties, Path(item_json).parent, threads
    )
    Path(item_json).parent.mkdir(parents=True, exist_ok=True)
    write_catalog(item, catalog_json, item_json)
