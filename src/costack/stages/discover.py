"""Discovery: resolve the listed assets in their STAC items and describe them in a manifest.

An asset ``N.band`` is looked up in the N-th input item by asset key, or else by common band
name (``eo:bands[].common_name`` of STAC 1.0, ``bands[].eo:common_name`` of STAC 1.1), so both
Charter-style calibrated items (keys ``red``, ``nir``, ``s0_db_c_vv``) and public catalog items
(keys ``B04``, ``B08`` with common names) work unchanged. Asset hrefs may be relative to the
item, absolute, ``file://`` or http(s) URLs, which GDAL reads through ``/vsicurl/``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pystac
from rasterio.errors import RasterioIOError

from costack.errors import CostackError
from costack.errors import printable as clean
from costack.io import radiometry
from costack.io.georef import WGS84, read_georef
from costack.io.manifest import MANIFEST_COLUMNS, AssetRef, write_manifest
from costack.io.remote import (
    SourcePolicy,
    check_requester_pays,
    fetch_bytes,
    is_url,
    open_source,
    source_path,
)

if TYPE_CHECKING:  # the run's parsed config, a type only: stages import nothing above them
    from costack.config import RunConfig

#: Product types of complex (single-look complex) SAR products, refused by the service.
COMPLEX_PRODUCT_TYPES = {"SLC", "SSC", "L1A", "SCS"}
NOT_COMPLEX = "SAR complex data is not supported"

log = logging.getLogger(__name__)


def normalise_item_ref(ref: str) -> str:
    """An input reference as pystac reads it: URLs as they are, paths made absolute."""
    parsed = urlparse(ref)
    if parsed.scheme in {"http", "https"}:
        return ref
    if parsed.scheme == "file":
        return str(Path(unquote(parsed.path)).resolve())
    return str(Path(ref).resolve())


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's members, refusing a key given twice (which one would be read?)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _item_bytes(ref: str, href: str, param: str, cfg: RunConfig | None) -> bytes:
    """The item's bytes: a URL fetched within ``http_timeout`` and ``max_item_bytes``, a local
    file that must be a regular file of at most ``max_item_bytes``."""
    max_bytes = cfg.max_item_bytes if cfg is not None else 32_000_000
    if is_url(href):
        timeout = cfg.http_timeout if cfg is not None else 30.0
        retries = cfg.http_retries if cfg is not None else 3
        return fetch_bytes(href, param, timeout, max_bytes, retries)
    try:
        st = os.stat(href)  # before any open: a FIFO would block
    except OSError as err:
        what = "does not exist" if err.errno == errno.ENOENT else f"cannot be read ({err.strerror})"
        raise CostackError(param, f"{clean(ref)} {what}",
                           "give the path or URL of a STAC item") from err  # fmt: skip
    if not stat.S_ISREG(st.st_mode):
        raise CostackError(param, f"{clean(ref)} is not a regular file",
                           "give the path or URL of a STAC item JSON file")  # fmt: skip
    if st.st_size > max_bytes:
        raise CostackError(param, f"{clean(ref)} is larger than max_item_bytes = {max_bytes:,} "
                           "bytes", "raise max_item_bytes if the item is that large")  # fmt: skip
    with open(href, "rb") as fh:
        return fh.read(max_bytes + 1)


def load_item(ref: str, index: int, cfg: RunConfig | None = None) -> pystac.Item:
    """Read the STAC item of dataset ``index`` (1-based), bounded in time and size (see
    :func:`costack.io.remote.fetch_bytes`); a key given twice in any object, or band lists
    that are not lists of objects, are refused in one line."""
    href = normalise_item_ref(ref)
    param = f"inputs[{index}]"
    data = _item_bytes(ref, href, param, cfg)
    try:
        d = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except _DuplicateKey as err:
        raise CostackError(param, f"{clean(ref)} gives the key {clean(err.args[0])!r} twice in "
                           "one object (which one would be read?)",
                           "fix the item: give each key once") from err  # fmt: skip
    except RecursionError as err:
        raise CostackError(param, f"{clean(ref)} is nested too deeply to be a STAC item",
                           "give a STAC item JSON file") from err  # fmt: skip
    except (UnicodeDecodeError, ValueError) as err:
        reason = " ".join(str(err).split())[:160]
        raise CostackError(param, f"{clean(ref)} is not JSON ({reason})",
                           "give a STAC item JSON file") from err  # fmt: skip
    if not isinstance(d, dict):
        raise CostackError(param, f"{clean(ref)} holds a JSON {type(d).__name__}, not a STAC "
                           "item", "give a STAC item JSON file")  # fmt: skip
    _check_band_lists(d, ref, param)
    try:
        with warnings.catch_warnings():
            # pystac migrates old extension versions as it reads; the storage extension's
            # migration warns on every item whose hrefs are not s3:// (Earth Search's https
            # items: two lines per item) about fields the workflow never reads
            warnings.filterwarnings("ignore", message="Could not parse bucket/account",
                                    category=UserWarning)  # fmt: skip
            item = pystac.Item.from_dict(d, href=href, migrate=True, preserve_dict=False)
            item.set_self_href(href)
            return item
    except Exception as err:  # pystac raises many types for non-item JSON
        reason = " ".join(str(err).split())[:200]
        raise CostackError(
            param,
            f"{clean(ref)} is not a readable STAC item ({clean(reason)})",
            "give a STAC item JSON file",
        ) from err


#: Fields of an asset (or of the item's properties) that must be lists of band objects.
BAND_LISTS = ("eo:bands", "raster:bands", "bands")


def _check_band_lists(d: dict[str, Any], ref: str, param: str) -> None:
    """Refuse band lists of the wrong shape (an object, a list of lists or strings)."""
    places = [("the item's properties", d.get("properties"))]
    assets = d.get("assets")
    if isinstance(assets, dict):
        places += [(f"asset {clean(k)!r}", a) for k, a in assets.items()]
    for where, fields in places:
        if not isinstance(fields, dict):
            continue
        for name in BAND_LISTS:
            value = fields.get(name)
            if value is None:
                continue
            if not isinstance(value, list) or not all(isinstance(b, dict) for b in value):
                got = type(value).__name__ if not isinstance(value, list) else "list of " + (
                    ", ".join(sorted({type(b).__name__ for b in value
                                      if not isinstance(b, dict)})))  # fmt: skip
                raise CostackError(
                    param, f"{clean(ref)}: {name} of {where} is a {got}, not a list of band "
                    "objects", f"fix the item: {name} is a list of objects, one per band",
                )  # fmt: skip


#: The service's common band names and the sensor-specific common names they stand for when an
#: item has no exact match (Landsat OLI's near infrared is ``nir08``, its SWIR ``swir16``...).
COMMON_NAME_ALIASES = {
    "nir": ("nir08",),
    "swir1": ("swir16",),
    "swir2": ("swir22",),
    "lwir": ("lwir11",),
    "tir": ("lwir11", "lwir"),
}


def _band_fields(asset: pystac.Asset, field: str) -> list[str]:
    """Values of ``field`` over the asset's bands (``eo:bands`` of STAC 1.0, ``bands`` of 1.1)."""
    stac11 = "eo:common_name" if field == "common_name" else field
    names = [b.get(field) for b in asset.extra_fields.get("eo:bands", []) or []]
    names += [b.get(stac11) for b in asset.extra_fields.get("bands", []) or []]
    return [str(n) for n in names if n]


def _common_names(asset: pystac.Asset) -> list[str]:
    return _band_fields(asset, "common_name")


def band_count(asset: pystac.Asset) -> int:
    """Number of bands the asset declares (``eo:bands``, ``raster:bands`` or ``bands``)."""
    fields = ("eo:bands", "raster:bands", "bands")
    return max([len(asset.extra_fields.get(f) or []) for f in fields] + [1])


def _is_cog(asset: pystac.Asset) -> bool:
    return "cloud-optimized" in str(asset.media_type or "").lower()


def _pick(
    item: pystac.Item, ref: AssetRef, matches: list[tuple[str, pystac.Asset]], how: str
) -> tuple[str, pystac.Asset] | None:
    """The one match of a lookup stage: single-band assets first, then a COG over other
    encodings of the same band (``nir`` over ``nir-jp2``); an ambiguity left is an error."""
    single = [(k, a) for k, a in matches if band_count(a) == 1]
    matches = single or matches
    if len(matches) > 1 and sum(_is_cog(a) for _, a in matches) == 1:
        matches = [(k, a) for k, a in matches if _is_cog(a)]
    if len(matches) == 1:
        key = matches[0][0]
        if key != ref.band:
            log.info("%s: took asset %r of item %s (%s)", ref.key, key, item.id, how)
        return matches[0]
    if len(matches) > 1:
        raise CostackError(
            "assets",
            f"{ref.key}: several assets of item {item.id} match {ref.band!r} by {how} "
            f"({', '.join(k for k, _ in matches)})",
            "name the asset by its key instead",
        )
    return None


def find_asset(item: pystac.Item, ref: AssetRef) -> tuple[str, pystac.Asset]:
    """The item's asset for ``ref.band``.

    Looked up, case-insensitively, in this order: asset key; common band name
    (``eo:bands[].common_name``, STAC 1.1 ``bands[].eo:common_name``); band name
    (``eo:bands[].name``, ``bands[].name``, e.g. ``B08``); then, when nothing matched, the
    sensor-specific common names the service's name stands for (``nir`` -> ``nir08`` on
    Landsat). At each stage a single-band asset wins over multi-band ones (``visual``, TCI),
    which can never be stacked anyway.
    """
    if ref.band in item.assets:
        return ref.band, item.assets[ref.band]
    want = ref.band.lower()
    stages = [
        ("asset key", lambda k, a, w: k.lower() == w),
        ("common band name", lambda k, a, w: w in [n.lower() for n in _common_names(a)]),
        ("band name", lambda k, a, w: w in [n.lower() for n in _band_fields(a, "name")]),
    ]
    for how, test in stages:
        found = _pick(item, ref, [(k, a) for k, a in item.assets.items() if test(k, a, want)], how)
        if found:
            return found
    for alias in COMMON_NAME_ALIASES.get(want, ()):
        how = f"common band name {alias!r}, which the service calls {ref.band!r}"
        for test in (stages[1][1], stages[0][1]):
            matches = [(k, a) for k, a in item.assets.items() if test(k, a, alias)]
            found = _pick(item, ref, matches, how)
            if found:
                return found
    known = []
    for k, a in item.assets.items():
        cn = _common_names(a)
        known.append(f"{k} ({'/'.join(cn)})" if cn else k)
    raise CostackError(
        "assets",
        f"{ref.key}: item {item.id} (dataset {ref.dataset}) has no asset {ref.band!r}; "
        f"its assets are {', '.join(known)}",
        "use one of those keys or common names",
    )


def _is_db(band: str, asset: pystac.Asset) -> bool:
    units = [b.get("unit") for b in asset.extra_fields.get("raster:bands", []) or []]
    units += [b.get("unit") for b in asset.extra_fields.get("bands", []) or []]
    return "_db" in band.lower() or any(u in {"dB", "db", "decibel"} for u in units if u)


def _kind(item: pystac.Item, band: str) -> str:
    sar_prefixes = ("s0_", "g0_", "b0_", "sigma", "gamma", "beta")
    if band.lower().startswith(sar_prefixes) or any(k.startswith("sar:") for k in item.properties):
        return "sar"
    return "optical"


def _polarization(band: str) -> str | None:
    tail = band.lower().rsplit("_", 1)[-1]
    return tail.upper() if tail in {"hh", "hv", "vh", "vv"} else None


def describe_asset(
    cfg: RunConfig, ref: AssetRef, item: pystac.Item, item_href: str
) -> dict[str, Any]:
    """One manifest row: the asset's item metadata and its raster header."""
    asset_key, asset = find_asset(item, ref)
    href = asset.get_absolute_href() or asset.href
    radiometry.check_encoding(item, asset_key, asset, f"inputs[{ref.dataset}]")
    check_requester_pays(ref.key, href, asset.extra_fields, item.properties)
    source = source_path(ref.key, href, item_href, SourcePolicy.of(cfg))
    path = source.path
    product_type = str(item.properties.get("sar:product_type", "")).upper()
    if product_type in COMPLEX_PRODUCT_TYPES:
        raise CostackError(
            "assets",
            f"{ref.key}: item {item.id} is a {product_type} product; {NOT_COMPLEX}",
            "use a calibrated detected (GRD) dataset",
        )
    try:
        with open_source(source) as src:
            if np.dtype(src.dtypes[0]).kind == "c" or src.dtypes[0].startswith("complex"):
                raise CostackError(
                    "assets",
                    f"{ref.key}: {href} holds complex values ({src.dtypes[0]}); {NOT_COMPLEX}",
                    "use a calibrated detected (GRD) dataset",
                )
            if src.count != 1:
                raise CostackError(
                    "assets",
                    f"{ref.key}: {href} has {src.count} bands, and only single-band assets "
                    "can be stacked",
                    "list a single-band geophysical asset",
                )
            georef = read_georef(src, cfg.gcp_pixel_center)
            file_scale = float(src.scales[0]) if src.scales else 1.0
            file_offset = float(src.offsets[0]) if src.offsets else 0.0
            if georef is None:
                raise CostackError(
                    "assets",
                    f"{ref.key}: {href} has neither a geotransform with a CRS nor GCPs",
                    "give a georeferenced raster",
                )
            nodata = src.nodata
            dtype = src.dtypes[0]
    except RasterioIOError as err:
        raise CostackError(
            "assets",
            f"{ref.key}: cannot read {href} ({' '.join(str(err).split())[:160]})",
            "check the href in the item and that the file or URL is reachable",
        ) from err
    radio = radiometry.resolve(item, asset_key, asset, file_scale, file_offset)
    radiometry.check_range(radio, dtype, f"inputs[{ref.dataset}]", f"{item.id} asset {asset_key}")
    nodata = _reconcile_nodata(ref.key, href, nodata, radio.nodata)
    scale, offset = (radio.scale, radio.offset) if cfg.physical_units else (1.0, 0.0)
    if not radio.is_identity:
        log.info("%s: physical value = DN x %g + %g (%s)%s", ref.key, radio.scale, radio.offset,
                 radio.source, "" if cfg.physical_units else "; not applied (physical_units: "
                 "false)")  # fmt: skip
    res_x, res_y = georef.pixel_size()
    footprint = georef.footprint(WGS84)
    native = georef.footprint(georef.crs)
    if not footprint.is_valid:
        footprint = footprint.buffer(0)
    return {
        "key": ref.key,
        "dataset": ref.dataset,
        "band": ref.band,
        "asset_key": asset_key,
        "item_id": item.id,
        "item_href": item_href,
        "datetime": item.datetime.isoformat() if item.datetime else "",
        "platform": item.properties.get("platform", ""),
        "href": href,
        "gdal_path": path,
        "crs": georef.crs.to_wkt(),
        "res_x": res_x,
        "res_y": res_y,
        "width": georef.width,
        "height": georef.height,
        "footprint": footprint.wkt,
        "nodata": np.nan if nodata is None else float(nodata),
        "dtype": dtype,
        "georef": georef.kind,
        "kind": _kind(item, ref.band),
        "db": _is_db(ref.band, asset),
        "common_name": ",".join(_common_names(asset)),
        "polarization": _polarization(ref.band) or "",
        "sar_frequency_band": item.properties.get("sar:frequency_band", ""),
        "sar_instrument_mode": item.properties.get("sar:instrument_mode", ""),
        "sar_product_type": item.properties.get("sar:product_type", ""),
        "sar_center_frequency": item.properties.get("sar:center_frequency", ""),
        "href_given": asset.href,
        "constellation": item.properties.get("constellation", ""),
        "scale": scale,
        "offset": offset,
        "source_scale": radio.scale,
        "source_offset": radio.offset,
        "unit": radio.unit or ("dB" if _is_db(ref.band, asset) else ""),
        "radiometry": radio.source,
        "footprint_native": native.wkt,
        "item_nodata": np.nan if radio.nodata is None else float(radio.nodata),
        "item_ref": cfg.inputs[ref.dataset - 1],
    }


def _reconcile_nodata(
    key: str, href: str, file_nodata: float | None, item_nodata: float | None
) -> float | None:
    """The fill value of an asset: the file's tag, else the item's ``raster:bands`` nodata.

    When both exist and differ, the file's tag is kept (it is what the pixels use) and a
    warning says so; the item's value is then masked as well by colocation (see
    :func:`costack.stages.colocate.colocate_array`, which reads ``item_nodata``).
    """
    if file_nodata is None:
        if item_nodata is not None:
            log.info("%s: nodata %g from the item's raster:bands (the file has no tag)", key,
                     item_nodata)  # fmt: skip
        return item_nodata
    if item_nodata is not None and not (
        file_nodata == item_nodata or (np.isnan(file_nodata) and np.isnan(item_nodata))
    ):
        log.warning("%s: the file %s says nodata %g but its item says %g; both are masked",
                    key, href, file_nodata, item_nodata)  # fmt: skip
    return file_nodata


def discover(cfg: RunConfig) -> pd.DataFrame:
    """Resolve every listed asset; one manifest row per asset, in list order."""
    items: dict[int, tuple[pystac.Item, str]] = {}
    rows = []
    for ref in cfg.assets:
        if ref.dataset not in items:
            item_ref = cfg.inputs[ref.dataset - 1]
            items[ref.dataset] = (load_item(item_ref, ref.dataset, cfg),
                                  normalise_item_ref(item_ref))  # fmt: skip
        item, item_href = items[ref.dataset]
        rows.append(describe_asset(cfg, ref, item, item_href))
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def run_discover(cfg: RunConfig, out_csv: str | Path) -> pd.DataFrame:
    """The discover stage (rule ``discover_assets``, ``costack discover``): resolve every
    listed asset into the manifest CSV, from the run's parsed configuration
    (:func:`costack.config.parse_config`, which the rule's script and the subcommand call)."""
    from costack.io.files import atomic_path

    manifest = discover(cfg)
    with atomic_path(out_csv) as tmp:
        write_manifest(manifest, tmp)
    log.info("discovered %d assets in %d datasets", len(manifest), manifest["dataset"].nunique())
    return manifest


def find_item_masks(cfg: RunConfig) -> dict[int, dict[str, str]]:
    """Each listed dataset's quality-mask asset (Sentinel-2 L2A ``scl``, Landsat C2
    ``qa_pixel``; :func:`costack.io.masks.find_mask_asset`) as ``{"key", "kind", "href"}``
    (href absolute, as GDAL reads it); datasets whose item has none are left out (not an
    error)."""
    from costack.io.masks import find_mask_asset

    out: dict[int, dict[str, str]] = {}
    for n in sorted(set(cfg.datasets)):
        item = load_item(cfg.inputs[n - 1], n)
        found = find_mask_asset(item.assets, item.id)
        if found is None:
            log.info("dataset %d: item %s has no quality mask asset (scl, qa_pixel)", n, item.id)
            continue
        key, kind = found
        out[n] = {"key": key, "kind": kind, "href": item.assets[key].get_absolute_href(),
                  "item_href": normalise_item_ref(cfg.inputs[n - 1])}  # fmt: skip
    return out
