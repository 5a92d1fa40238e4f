"""The output STAC catalog: one item for the co-registered stack, built with pystac.

The item's data assets are keyed exactly as the asset list (``1.nir``, ``2.nir`` ...) plus the
band-math outputs by name. Each is a single-band Float32 COG described with the projection,
raster, eo and file extensions (and sar for SAR assets); the item's geometry and bbox are the
grid's footprint, and the source items are linked as ``derived_from``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pystac
from pystac.extensions.eo import Band, EOExtension
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension
from shapely.geometry import mapping

from costack import __version__
from costack.io.grids import Grid

EO_COMMON_NAMES = {
    "pan", "coastal", "blue", "green", "green05", "yellow", "red", "rededge", "rededge071",
    "rededge075", "rededge078", "nir", "nir08", "nir09", "cirrus", "swir16", "swir22", "lwir",
    "lwir11", "lwir12",
}  # fmt: skip


@dataclass
class StackAsset:
    """One asset of the output item."""

    key: str
    path: Path
    title: str
    nodata: float
    roles: list[str] = field(default_factory=lambda: ["data"])
    band_name: str | None = None
    unit: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    sar: dict[str, Any] | None = None
    band_count: int = 1
    platform: str | None = None
    constellation: str | None = None
    scale: float | None = None
    offset: float | None = None
    common_name: str | None = None


#: The SAR extension version declared: from v1.2 on, its fields may describe assets alone (a
#: stack mixes optical and SAR assets, so the item's properties cannot say one instrument
#: mode); v1.0/v1.1 require them in the item's properties. pystac's SarExtension writes v1.0.
SAR_SCHEMA = "https://stac-extensions.github.io/sar/v1.3.0/schema.json"


def portable_href(href: str, base: str | Path) -> str:
    """``href`` as an output item should carry it: URLs as they are, local paths relative to
    ``base`` (the item's folder), so the item stays valid when the folder moves.

    The relative path is taken on the paths as given (as a STAC client joins it to the item's
    own path, without resolving symlinks); when that and the file system's reading of it (which
    follows a symlinked folder before its ``..``) would reach different files, as when
    ``results/`` is a symlink and the target is outside it, the absolute path is written."""
    if "://" in href and not href.startswith("file://"):
        return href
    path = href[len("file://") :] if href.startswith("file://") else href
    path, base = os.path.abspath(path), os.path.abspath(base)
    rel = os.path.relpath(path, base)
    if os.path.realpath(os.path.join(base, rel)) != os.path.realpath(path):
        return Path(path).as_posix()
    return Path(rel).as_posix()


def sha256_multihash(path: str | Path) -> str:
    """The file's SHA-256 as a multihash hex string (``1220`` + digest), as file:checksum."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return "1220" + digest.hexdigest()


def _nodata_field(value: float) -> float | str:
    return "nan" if np.isnan(value) else float(value)


def _parse_dt(text: str) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def sha256_multihashes(paths: list[str | Path], threads: int = 1) -> dict[str, str]:
    """:func:`sha256_multihash` of each file, ``threads`` files at a time (hashlib releases the
    GIL: a tile stack's 13 GB of COGs hash in half the wall time on two)."""
    from concurrent.futures import ThreadPoolExecutor

    unique = list(dict.fromkeys(str(p) for p in paths))
    with ThreadPoolExecutor(max_workers=max(1, threads)) as ex:
        return dict(zip(unique, ex.map(sha256_multihash, unique), strict=True))


def build_item(
    item_id: str,
    grid: Grid,
    manifest: pd.DataFrame,
    reference: str,
    assets: list[StackAsset],
    properties: dict[str, Any] | None = None,
    item_dir: str | Path | None = None,
    threads: int = 1,
) -> pystac.Item:
    """The stack's STAC item (asset hrefs absolute; made relative when saved).

    ``platform`` and ``constellation`` are item properties when every asset agrees, else
    fields of each asset. ``derived_from`` links are the input references, relative to
    ``item_dir`` for local files. The assets' checksums are taken ``threads`` files at a time.
    """
    checksums = sha256_multihashes([sa.path for sa in assets], threads)
    footprint = grid.footprint()
    ref_row = manifest.set_index("key", drop=False).loc[reference]
    times = sorted(t for t in (_parse_dt(s) for s in manifest["datetime"]) if t is not None)
    ref_time = _parse_dt(ref_row["datetime"]) or (times[0] if times else None)
    props: dict[str, Any] = {
        "costack:version": __version__,
        "costack:reference": reference,
        "costack:assets": list(manifest["key"]),
    }
    shared: dict[str, str] = {}
    for name in ("platform", "constellation"):
        values = {getattr(sa, name) for sa in assets if sa.band_name is not None}
        if len(values) == 1 and None not in values:
            shared[name] = props[name] = values.pop()
    if times:
        props["start_datetime"] = times[0].isoformat()
        props["end_datetime"] = times[-1].isoformat()
    props.update(properties or {})
    item = pystac.Item(
        id=item_id,
        geometry=mapping(footprint),
        bbox=list(footprint.bounds),
        datetime=ref_time,
        properties={k: v for k, v in props.items() if v is not None},
    )
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = grid.crs.to_epsg()
    if epsg:
        proj.code = f"EPSG:{epsg}"
    else:
        proj.wkt2 = grid.crs.to_wkt()
    proj.shape = [grid.height, grid.width]
    proj.transform = list(grid.transform)[:6]
    proj.bbox = list(grid.bounds)

    for sa in assets:
        asset = pystac.Asset(
            href=str(Path(sa.path).resolve()),
            title=sa.title,
            media_type=pystac.MediaType.COG,
            roles=sa.roles,
            extra_fields=dict(sa.extra),
        )
        for name in ("platform", "constellation"):
            if getattr(sa, name) and name not in shared:
                asset.extra_fields[name] = getattr(sa, name)
        item.add_asset(sa.key, asset)
        RasterExtension.ext(asset, add_if_missing=True).bands = [
            RasterBand.create(
                nodata=_nodata_field(sa.nodata), data_type=DataType.FLOAT32, unit=sa.unit,
                scale=sa.scale, offset=sa.offset,
            )
            for _ in range(sa.band_count)
        ]  # fmt: skip
        if sa.band_name is not None:
            common = sa.common_name if sa.common_name in EO_COMMON_NAMES else None
            common = common or (sa.band_name if sa.band_name in EO_COMMON_NAMES else None)
            EOExtension.ext(asset, add_if_missing=True).bands = [
                Band.create(name=sa.key, common_name=common)
            ]
        FileExtension.ext(asset, add_if_missing=True).apply(
            checksum=checksums[str(sa.path)], size=Path(sa.path).stat().st_size
        )
        if sa.sar:
            if SAR_SCHEMA not in item.stac_extensions:
                item.stac_extensions.append(SAR_SCHEMA)
            asset.extra_fields.update({f"sar:{k}": v for k, v in sa.sar.items()})
    refs = manifest["item_ref"] if "item_ref" in manifest else manifest["item_href"]
    for ref in dict.fromkeys(refs):
        href = portable_href(str(ref), item_dir) if item_dir is not None else str(ref)
        item.add_link(pystac.Link("derived_from", target=href, media_type=pystac.MediaType.JSON))
    return item


def write_catalog(
    item: pystac.Item, catalog_path: str | Path, item_path: str | Path
) -> pystac.Catalog:
    """Save a self-contained catalog at ``catalog_path`` linking ``item`` at ``item_path``."""
    catalog_path = Path(catalog_path).resolve()
    catalog = pystac.Catalog(
        id="costack",
        description="Co-registered stack of optical and SAR assets made by costack",
        title="costack co-registered stack",
    )
    catalog.add_item(item)
    catalog.set_self_href(str(catalog_path))
    item.set_self_href(str(Path(item_path).resolve()))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return catalog


def verify_item(item_json: str | Path) -> list[str]:
    """Check every asset of an output item against its ``file:size`` and ``file:checksum``.

    Returns one line per problem (missing file, size or SHA-256 differing); [] when every file
    is as published.
    """
    return verify_stac(item_json)[0]


def _verify_item_doc(path: Path, doc: dict) -> tuple[list[str], int]:
    problems, checked = [], 0
    for key, asset in doc.get("assets", {}).items():
        href = asset.get("href", "")
        if "://" in href and not href.startswith("file://"):
            continue  # a remote asset: not ours to fetch here
        target = (path.parent / href.removeprefix("file://")).resolve()
        if not target.is_file():
            problems.append(f"{key}: {href} is missing")
            continue
        size = asset.get("file:size")
        checksum = asset.get("file:checksum")
        if size is None and not checksum:
            continue
        checked += 1
        if size is not None and target.stat().st_size != size:
            problems.append(f"{key}: {href} is {target.stat().st_size} bytes, the item says {size}")
            continue
        if checksum and sha256_multihash(target) != checksum:
            problems.append(f"{key}: {href} does not match its file:checksum (SHA-256)")
    return problems, checked


def verify_stac(path: str | Path, _seen: frozenset = frozenset()) -> tuple[list[str], int]:
    """Check a published item, or every item a catalog links (``item`` and ``child`` links,
    followed), against the files' ``file:size`` and ``file:checksum``.

    Returns the problems (one line each: a missing item or file, a size or SHA-256 differing)
    and the number of files checked.

    Raises:
        ValueError: ``path`` is neither a STAC item nor a catalog, a catalog links no item or
            links one on the network (not ours to check).
    """
    import json

    path = Path(path).resolve()
    doc = json.loads(path.read_text(encoding="utf-8"))
    kind = doc.get("type") if isinstance(doc, dict) else None
    if kind == "Feature":
        return _verify_item_doc(path, doc)
    if kind not in ("Catalog", "Collection"):
        raise ValueError(f"type {kind!r}: neither a STAC item (Feature) nor a catalog")
    links = [link for link in doc.get("links", []) if link.get("rel") in ("item", "child")]
    if not links:
        raise ValueError("the catalog links no item")
    problems, checked = [], 0
    for link in links:
        href = str(link.get("href", ""))
        if "://" in href and not href.startswith("file://"):
            raise ValueError(f"it links {href} on the network, which verify does not fetch")
        target = (path.parent / href.removeprefix("file://")).resolve()
        if not target.is_file():
            problems.append(f"{link['rel']} {href} of {path.name} is missing")
            continue
        if target in _seen:
            continue
        more, n = verify_stac(target, _seen | {path})
        problems += more
        checked += n
    return problems, checked
