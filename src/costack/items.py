"""Discovery: resolve the listed assets in their STAC items and describe them in a manifest.

An asset ``N.band`` is looked up in the N-th input item by asset key, or else by common band
name (``eo:bands[].common_name`` of STAC 1.0, ``bands[].eo:common_name`` of STAC 1.1), so both
Charter-style calibrated items (keys ``red``, ``nir``, ``s0_db_c_vv``) and public catalog items
(keys ``B04``, ``B08`` with common names) work unchanged. Asset hrefs may be relative to the
item, absolute, ``file://`` or http(s) URLs, which GDAL reads through ``/vsicurl/``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pystac
import rasterio
from rasterio.errors import RasterioIOError

from costack.config import AssetRef, RunConfig
from costack.errors import CostackError
from costack.georef import WGS84, read_georef

#: Product types of complex (single-look complex) SAR products, refused by the service.
COMPLEX_PRODUCT_TYPES = {"SLC", "SSC", "L1A", "SCS"}
NOT_COMPLEX = "SAR complex data is not supported"

MANIFEST_COLUMNS = [
    "key", "dataset", "band", "asset_key", "item_id", "item_href", "datetime", "platform",
    "href", "gdal_path", "crs", "res_x", "res_y", "width", "height", "footprint", "nodata",
    "dtype", "georef", "kind", "db", "common_name", "polarization", "sar_frequency_band",
    "sar_instrument_mode", "sar_product_type", "sar_center_frequency",
]  # fmt: skip


def is_url(href: str) -> bool:
    """True for http(s) URLs."""
    return urlparse(href).scheme in {"http", "https"}


def gdal_path(href: str) -> str:
    """A path GDAL can open for an absolute href (local path, ``file://`` or http(s) URL)."""
    parsed = urlparse(href)
    if parsed.scheme in {"http", "https"}:
        return f"/vsicurl/{href}"
    if parsed.scheme == "file":
        return unquote(parsed.path)
    if parsed.scheme == "s3":
        return f"/vsis3/{parsed.netloc}{parsed.path}"
    return href


def normalise_item_ref(ref: str) -> str:
    """An input reference as pystac reads it: URLs as they are, paths made absolute."""
    parsed = urlparse(ref)
    if parsed.scheme in {"http", "https"}:
        return ref
    if parsed.scheme == "file":
        return str(Path(unquote(parsed.path)).resolve())
    return str(Path(ref).resolve())


def load_item(ref: str, index: int) -> pystac.Item:
    """Read the STAC item of dataset ``index`` (1-based)."""
    href = normalise_item_ref(ref)
    param = f"inputs[{index}]"
    if not is_url(href) and not os.path.exists(href):
        raise CostackError(param, f"{ref} does not exist", "give the path or URL of a STAC item")
    try:
        return pystac.Item.from_file(href)
    except Exception as err:  # pystac raises many types for unreadable or non-item JSON
        reason = " ".join(str(err).split())[:200]
        raise CostackError(
            param, f"{ref} is not a readable STAC item ({reason})", "give a STAC item JSON file"
        ) from err


def _common_names(asset: pystac.Asset) -> list[str]:
    names = [b.get("common_name") for b in asset.extra_fields.get("eo:bands", []) or []]
    names += [b.get("eo:common_name") for b in asset.extra_fields.get("bands", []) or []]
    return [n for n in names if n]


def find_asset(item: pystac.Item, ref: AssetRef) -> tuple[str, pystac.Asset]:
    """The item's asset for ``ref.band``: by key, else by common band name."""
    if ref.band in item.assets:
        return ref.band, item.assets[ref.band]
    matches = [(k, a) for k, a in item.assets.items() if ref.band in _common_names(a)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise CostackError(
            "assets",
            f"{ref.key}: several assets of item {item.id} have common name {ref.band!r} "
            f"({', '.join(k for k, _ in matches)})",
            "name the asset by its key instead",
        )
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
    path = gdal_path(href)
    product_type = str(item.properties.get("sar:product_type", "")).upper()
    if product_type in COMPLEX_PRODUCT_TYPES:
        raise CostackError(
            "assets",
            f"{ref.key}: item {item.id} is a {product_type} product; {NOT_COMPLEX}",
            "use a calibrated detected (GRD) dataset",
        )
    try:
        with rasterio.open(path) as src:
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
    res_x, res_y = georef.pixel_size()
    footprint = georef.footprint(WGS84)
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
    }


def discover(cfg: RunConfig) -> pd.DataFrame:
    """Resolve every listed asset; one manifest row per asset, in list order."""
    items: dict[int, tuple[pystac.Item, str]] = {}
    rows = []
    for ref in cfg.assets:
        if ref.dataset not in items:
            item_ref = cfg.inputs[ref.dataset - 1]
            items[ref.dataset] = (load_item(item_ref, ref.dataset), normalise_item_ref(item_ref))
        item, item_href = items[ref.dataset]
        rows.append(describe_asset(cfg, ref, item, item_href))
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def write_manifest(manifest: pd.DataFrame, path: str | Path) -> None:
    """Write the manifest as CSV (the contract of the discover step)."""
    manifest.to_csv(path, index=False)


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest written by :func:`write_manifest`."""
    df = pd.read_csv(path, keep_default_na=False, na_values={"nodata": ["", "nan", "NaN"]})
    df["nodata"] = df["nodata"].astype(float)
    df["db"] = df["db"].astype(str).str.lower().eq("true")
    return df.set_index("key", drop=False)
