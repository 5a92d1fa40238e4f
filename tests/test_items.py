"""Discovery: asset lookup in STAC items, href forms, raster header checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import loopback_server, scene, write_item, write_raster
from rasterio.transform import Affine

from costack.config import parse_config
from costack.errors import CostackError
from costack.io.manifest import read_manifest, write_manifest
from costack.stages.discover import discover

T = Affine(10, 0, 500_000, 0, -10, 5_000_000)


def _discover(config: dict):
    return discover(parse_config(config))


def test_lookup_by_key_and_common_name(two_datasets):
    m = _discover(two_datasets["config"])
    assert list(m["key"]) == ["1.nir", "1.red", "2.nir"]
    assert list(m["asset_key"]) == ["nir", "red", "B08"]
    row = m.set_index("key").loc["2.nir"]
    assert row["nodata"] == -9999.0 and row["res_x"] == 20.0 and row["width"] == 32


def test_lookup_by_stac11_bands_common_name(tmp_path):
    write_raster(tmp_path / "b.tif", scene(), transform=T)
    item = write_item(tmp_path, "x", {"B8": {"href": "./b.tif", "bands": [
        {"name": "B8", "eo:common_name": "nir"}]}})  # fmt: skip
    m = _discover({"inputs": [str(item)], "assets": "1.nir", "reference": "1.nir"})
    assert m.loc[0, "asset_key"] == "B8"


def test_missing_asset_lists_existing_keys(two_datasets):
    cfg = dict(two_datasets["config"], assets="1.nir,2.swir16")
    with pytest.raises(CostackError, match=r"no asset 'swir16'; its assets are B08 \(nir\)"):
        _discover(cfg)


@pytest.mark.parametrize("form", ["relative", "absolute", "file_url"])
def test_href_forms(tmp_path, form):
    tif = write_raster(tmp_path / "data" / "nir.tif", scene(), transform=T)
    href = {
        "relative": "../data/nir.tif",
        "absolute": str(tif),
        "file_url": tif.as_uri(),
    }[form]
    item = write_item(tmp_path / "item", "x", {"nir": {"href": href}})
    cfg = {"inputs": [str(item)], "assets": "1.nir", "reference": "1.nir"}
    # the raster is outside the item's folder: read only when allowed_paths names its folder
    with pytest.raises(CostackError, match=r"outside the item's folder .* add '.*data' to "
                       r"allowed_paths"):  # fmt: skip
        _discover(cfg)
    m = _discover(dict(cfg, allowed_paths=[str(tmp_path / "data")]))
    assert Path(m.loc[0, "gdal_path"]).resolve() == tif.resolve()


@pytest.fixture
def http_server(tmp_path):
    """tmp_path served on loopback."""
    with loopback_server(tmp_path) as (url, _):
        yield url


def test_http_item_and_asset_over_loopback(tmp_path, http_server):
    write_raster(tmp_path / "nir.tif", scene(), transform=T)
    write_item(tmp_path, "remote", {"nir": {"href": "./nir.tif"}})
    cfg = {"inputs": [f"{http_server}/item.json"], "assets": "1.nir", "reference": "1.nir"}
    # an item's href to a loopback address is refused unless the config allows that host
    with pytest.raises(CostackError, match=r"points at a non-public address \(127.0.0.1\); "
                       r"add '127.0.0.1' \(or '127.0.0.1:\d+'\) to allowed_sources"):  # fmt: skip
        _discover(cfg)
    m = _discover(dict(cfg, allowed_sources=["127.0.0.1"]))
    assert m.loc[0, "gdal_path"] == f"/vsicurl/{http_server}/nir.tif"
    assert m.loc[0, "width"] == 64


def test_unreadable_href(tmp_path):
    item = write_item(tmp_path, "x", {"nir": {"href": "./missing.tif"}})
    with pytest.raises(CostackError, match=r"^assets: 1.nir: cannot read .*missing.tif"):
        _discover({"inputs": [str(item)], "assets": "1.nir", "reference": "1.nir"})


def test_missing_item(tmp_path):
    with pytest.raises(CostackError, match=r"^inputs\[1\]: .* does not exist"):
        _discover({"inputs": [str(tmp_path / "no.json")], "assets": "1.nir", "reference": "1.nir"})


def test_multiband_refused(tmp_path):
    write_raster(tmp_path / "rgb.tif", np.stack([scene()] * 3), transform=T)
    item = write_item(tmp_path, "x", {"rgb": {"href": "./rgb.tif"}})
    with pytest.raises(CostackError, match="has 3 bands, and only single-band assets"):
        _discover({"inputs": [str(item)], "assets": "1.rgb", "reference": "1.rgb"})


def test_complex_dtype_refused(tmp_path):
    data = (scene() + 1j * scene(seed=4)).astype(np.complex64)
    write_raster(tmp_path / "slc.tif", data, transform=T)
    item = write_item(tmp_path, "x", {"s0_vv": {"href": "./slc.tif"}})
    with pytest.raises(CostackError, match="SAR complex data is not supported"):
        _discover({"inputs": [str(item)], "assets": "1.s0_vv", "reference": "1.s0_vv"})


def test_slc_product_type_refused(tmp_path):
    write_raster(tmp_path / "vv.tif", scene(), transform=T)
    item = write_item(tmp_path, "x", {"vv": {"href": "./vv.tif"}}, {"sar:product_type": "SLC"})
    with pytest.raises(CostackError, match="SLC product; SAR complex data is not supported"):
        _discover({"inputs": [str(item)], "assets": "1.vv", "reference": "1.vv"})


def test_manifest_roundtrip(two_datasets, tmp_path):
    m = _discover(two_datasets["config"])
    write_manifest(m, tmp_path / "m.csv")
    back = read_manifest(tmp_path / "m.csv")
    assert np.isnan(back.loc["1.nir", "nodata"]) and back.loc["2.nir", "nodata"] == -9999.0
    assert back.loc["1.nir", "db"] is np.False_ or not back.loc["1.nir", "db"]


@pytest.mark.parametrize("href", ["/vsizip//etc/x.zip/a.tif", "/vsicurl/http://169.254.169.254/x"])
def test_gdal_virtual_paths_in_items_are_refused(tmp_path, href):
    item = write_item(tmp_path, "x", {"nir": {"href": href}})
    with pytest.raises(CostackError, match=r"is a GDAL virtual path .* to allowed_sources"):
        _discover({"inputs": [str(item)], "assets": "1.nir", "reference": "1.nir"})


def test_private_address_href_is_refused(tmp_path):
    item = write_item(tmp_path, "x", {"nir": {"href": "http://10.0.0.7/data/nir.tif"}})
    with pytest.raises(CostackError, match=r"non-public address \(10.0.0.7\)"):
        _discover({"inputs": [str(item)], "assets": "1.nir", "reference": "1.nir"})
