"""Real public STAC items made runnable: their JSON unchanged but for the hrefs of the assets a
test uses, which point at small GeoTIFF crops written in each item's own DN convention.

The items are those of ``../shared/data/stac_items`` (Earth Search and Planetary Computer). The
DN conventions below are written from the catalogues' documentation, independently of
:mod:`costack.io.radiometry`, so a test compares the code against them rather than against itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine

STAC_ITEMS = Path(__file__).resolve().parents[2] / "shared" / "data" / "stac_items"

ES_C1 = "earthsearch-sentinel-2-c1-l2a__S2B_T20EPT_20250731T131905_L2A.json"
ES_L2A_20EPT = "earthsearch-sentinel-2-l2a__S2B_20EPT_20250731_0_L2A.json"
ES_L2A_13TDE = "earthsearch-sentinel-2-l2a__S2A_13TDE_20231008_0_L2A.json"
ES_LANDSAT = "earthsearch-landsat-c2-l2__LC08_L2SP_033032_20231008_02_T1.json"
PC_0731 = "pc-sentinel-2-l2a__S2A_MSIL2A_20200731T080611_R078_T35MNM_20200818T062751.json"
PC_0726 = "pc-sentinel-2-l2a__S2B_MSIL2A_20200726T080609_R078_T35MNM_20200908T180357.json"

#: reflectance -> stored DN, per item, as each catalogue documents it.
ENCODE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    # Earth Search c1: ESA's DN, BOA offset included (baseline 05.11): DN = R * 1e4 + 1000
    ES_C1: lambda r: r * 1e4 + 1000.0,
    # Earth Search l2a with earthsearch:boa_offset_applied: harmonised DN = R * 1e4
    ES_L2A_20EPT: lambda r: r * 1e4,
    ES_L2A_13TDE: lambda r: r * 1e4,
    # Landsat Collection 2 Level-2 surface reflectance: R = DN * 2.75e-5 - 0.2
    ES_LANDSAT: lambda r: (r + 0.2) / 2.75e-5,
    # Planetary Computer, baseline 02.12 (before 04.00): DN = R * 1e4
    PC_0731: lambda r: r * 1e4,
    PC_0726: lambda r: r * 1e4,
}


def need_items() -> None:
    """Skip the calling test when the shared items are absent."""
    if not STAC_ITEMS.is_dir():
        pytest.skip(f"real STAC items not found in {STAC_ITEMS}")


def load(name: str) -> dict:
    """One item's JSON document."""
    need_items()
    return json.loads((STAC_ITEMS / name).read_text(encoding="utf-8"))


def lattice(doc: dict, key: str) -> tuple[CRS, Affine]:
    """CRS and geotransform of an asset, from its ``proj:*`` fields or the item's."""
    asset, props = doc["assets"][key], doc["properties"]
    code = asset.get("proj:code") or props.get("proj:code")
    epsg = asset.get("proj:epsg") or props.get("proj:epsg")
    crs = CRS.from_string(code) if code else CRS.from_epsg(int(epsg))
    t = asset.get("proj:transform") or props["proj:transform"]
    return crs, Affine(*t[:6])


def pixel_centres(transform: Affine, window: tuple[int, int, int, int]):
    """Map x and y of the pixel centres of ``window`` = (row_off, col_off, rows, cols)."""
    r0, c0, h, w = window
    rows, cols = np.mgrid[r0 : r0 + h, c0 : c0 + w] + 0.5
    xs, ys = transform * (cols, rows)
    return np.asarray(xs), np.asarray(ys)


def localise(
    name: str,
    folder: Path,
    rasters: dict[str, tuple[tuple[int, int, int, int], np.ndarray]],
    nodata_tag: bool = True,
) -> Path:
    """Write ``folder/item.json``: the item ``name`` with the hrefs of ``rasters`` pointing at
    local crops, everything else unchanged.

    Args:
        rasters: asset key -> (window in the asset's lattice, stored values of that window).
        nodata_tag: tag the files with the item's declared nodata (False leaves them untagged,
            as some producers do, so only the item says what the fill value is).
    """
    doc = load(name)
    folder.mkdir(parents=True, exist_ok=True)
    for key, (window, values) in rasters.items():
        crs, t = lattice(doc, key)
        r0, c0, h, w = window
        bands = doc["assets"][key].get("raster:bands") or [{}]
        dtype = bands[0].get("data_type", "uint16")
        nodata = bands[0].get("nodata", 0) if nodata_tag else None
        path = folder / f"{key}.tif"
        profile = dict(
            driver="GTiff", dtype=dtype, count=1, height=h, width=w, crs=crs,
            transform=t @ Affine.translation(c0, r0), nodata=nodata,
        )  # fmt: skip
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(values.astype(dtype), 1)
        doc["assets"][key]["href"] = f"./{path.name}"
    out = folder / "item.json"
    out.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    return out


def ground(xs: np.ndarray, ys: np.ndarray, mean: float, amp: float, seed: int) -> np.ndarray:
    """A smooth, textured ground reflectance field, a function of map coordinates only (so two
    sensors sample the same ground): a sum of random plane waves of 300 m to 2 km wavelength."""
    rng = np.random.default_rng(seed)
    out = np.zeros_like(xs, dtype=np.float64)
    for _ in range(12):
        k = 2 * np.pi / rng.uniform(300.0, 2000.0)
        a = rng.uniform(0, np.pi)
        out += np.sin(k * (np.cos(a) * xs + np.sin(a) * ys) + rng.uniform(0, 2 * np.pi))
    return mean + amp * out / np.sqrt(6.0)


def encode(name: str, reflectance: np.ndarray, fill: np.ndarray | None = None) -> np.ndarray:
    """Stored DN of ``reflectance`` in item ``name``'s convention; ``fill`` pixels get 0."""
    dn = np.round(ENCODE[name](reflectance))
    if fill is not None:
        dn[fill] = 0
    return dn
