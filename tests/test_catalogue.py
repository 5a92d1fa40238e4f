"""Real public catalogue items in (Earth Search, Planetary Computer): band lookup, physical
values, nodata from the item, and the reference's exact lattice as the grid."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from catalogue import (
    ES_C1,
    ES_L2A_13TDE,
    ES_L2A_20EPT,
    ES_LANDSAT,
    PC_0726,
    PC_0731,
    encode,
    ground,
    lattice,
    load,
    localise,
    pixel_centres,
)
from conftest import scene, write_item, write_raster
from rasterio.transform import Affine

from costack.config import parse_config
from costack.io.grids import Grid
from costack.io.rasters import read_float32
from costack.stages.colocate import run_colocate
from costack.stages.discover import discover, run_discover
from costack.stages.grid import run_grid

# (item, key of its 10 m near-infrared asset, window in that asset's lattice)
NIR = {
    ES_C1: ("nir", (4000, 5000, 120, 160)),
    ES_L2A_20EPT: ("nir", (4000, 5000, 120, 160)),
    ES_L2A_13TDE: ("nir", (5000, 6000, 120, 160)),
    PC_0731: ("B08", (3000, 3000, 120, 160)),
    PC_0726: ("B08", (3000, 3000, 120, 160)),
}


def _nir_item(tmp_path, name, nodata_tag=True, fill=True):
    key, window = NIR[name]
    doc = load(name)
    _, t = lattice(doc, key)
    xs, ys = pixel_centres(t, window)
    truth = ground(xs, ys, 0.224, 0.05, seed=1)
    mask = np.zeros(truth.shape, bool)
    if fill:
        mask[:20, :30] = True  # a fill corner (DN 0), as at a swath edge
    path = localise(name, tmp_path / "item", {key: (window, encode(name, truth, mask))},
                    nodata_tag=nodata_tag)  # fmt: skip
    return path, truth, mask, window


def _colocate_one(tmp_path, config):
    manifest = tmp_path / "manifest.csv"
    grid_json = tmp_path / "grid.json"
    run_discover(parse_config(config), manifest)
    grid = run_grid(manifest, config["reference"], None, grid_json)
    out = tmp_path / "ref.tif"
    run_colocate(manifest, grid_json, config["reference"], out)
    data, _, nodata = read_float32(out)
    return data, nodata, grid


@pytest.mark.parametrize("name", list(NIR))
def test_physical_reflectance_and_exact_lattice(tmp_path, name):
    """Every item's own DN convention comes out as the ground reflectance, once: c1's
    declared -0.1, the old collection's already-applied offset, PC's silent baseline 02.12."""
    path, truth, mask, window = _nir_item(tmp_path, name)
    cfg = {"inputs": [str(path)], "assets": "1.nir", "reference": "1.nir"}
    data, nodata, grid = _colocate_one(tmp_path, cfg)
    assert np.isnan(nodata)
    assert np.isnan(data[mask]).all()
    err = np.abs(data[~mask] - truth[~mask])
    assert err.max() < 6e-5  # DN rounding (0.5e-4) and Float32
    # the grid is the reference asset's own lattice and shape, no extra row or column
    _, t = lattice(load(name), NIR[name][0])
    r0, c0, h, w = window
    assert (grid.height, grid.width) == (h, w)
    assert tuple(grid.transform)[:6] == tuple(t @ Affine.translation(c0, r0))[:6]


def test_nodata_from_raster_bands_when_file_has_no_tag(tmp_path, caplog):
    path, truth, mask, _ = _nir_item(tmp_path, ES_C1, nodata_tag=False)
    cfg = {"inputs": [str(path)], "assets": "1.nir", "reference": "1.nir"}
    with caplog.at_level(logging.INFO, logger="costack"):
        data, _, _ = _colocate_one(tmp_path, cfg)
    assert np.isnan(data[mask]).all() and np.isfinite(data[~mask]).all()
    assert int(mask.sum()) == 600
    assert "nodata 0 from the item's raster:bands" in caplog.text


def test_physical_units_false_keeps_dn_and_says_so(tmp_path):
    path, truth, mask, _ = _nir_item(tmp_path, ES_C1)
    cfg = {"inputs": [str(path)], "assets": "1.nir", "reference": "1.nir",
           "physical_units": False}  # fmt: skip
    data, nodata, _ = _colocate_one(tmp_path, cfg)
    assert nodata == 0.0
    np.testing.assert_allclose(data[~mask], np.round(truth[~mask] * 1e4 + 1000), atol=0.5)
    m = discover(parse_config(cfg)).iloc[0]
    assert (m["scale"], m["offset"]) == (1.0, 0.0)
    assert (m["source_scale"], m["source_offset"]) == (1e-4, -0.1)


def test_nodata_disagreement_warns_and_masks_both(tmp_path, caplog):
    t = Affine(10, 0, 500_000, 0, -10, 5_000_000)
    data = (scene() * 100 + 1000).astype(np.int16)
    data[0, :5] = 0
    data[1, :5] = -9999
    write_raster(tmp_path / "b.tif", data, transform=t, nodata=-9999)
    item = write_item(tmp_path, "x", {"nir": {"href": "./b.tif", "raster:bands": [
        {"nodata": 0}]}})  # fmt: skip
    cfg = {"inputs": [str(item)], "assets": "1.nir", "reference": "1.nir"}
    with caplog.at_level(logging.WARNING, logger="costack"):
        out, _, _ = _colocate_one(tmp_path, cfg)
    assert "says nodata -9999 but its item says 0" in caplog.text
    assert np.isnan(out[:2, :5]).all() and np.isfinite(out[2:]).all()


@pytest.mark.parametrize(
    ("name", "band", "key"),
    [
        (ES_C1, "B08", "nir"),  # eo:bands name under the common-name key
        (ES_C1, "b08", "nir"),  # case-insensitive
        (ES_C1, "red", "red"),  # 'visual' shares the common name but is 3-band
        (PC_0731, "red", "B04"),
        (PC_0731, "green", "B03"),
        (PC_0731, "blue", "B02"),
        (PC_0731, "nir", "B08"),
        (ES_LANDSAT, "nir", "nir08"),  # the service's nir is Landsat's nir08
        (ES_LANDSAT, "red", "red"),
        (ES_L2A_20EPT, "B08", "nir"),  # nir and nir-jp2 share the name; the COG is taken
    ],
)
def test_band_lookup_on_real_items(tmp_path, name, band, key):
    doc = load(name)
    folder = tmp_path / "i"
    localise(name, folder, {key: ((0, 0, 8, 8), np.full((8, 8), 3000))})
    m = discover(parse_config(
        {"inputs": [str(folder / "item.json")], "assets": f"1.{band}", "reference": f"1.{band}"}
    ))  # fmt: skip
    assert m.iloc[0]["asset_key"] == key
    assert doc["assets"][key]["href"] != m.iloc[0]["href_given"]


def test_hh_key_resolves_from_upper_case(tmp_path):
    t = Affine(10, 0, 500_000, 0, -10, 5_000_000)
    write_raster(tmp_path / "hh.tif", scene(), transform=t)
    item = write_item(tmp_path, "sar", {"hh": {"href": "./hh.tif"}},
                      {"sar:instrument_mode": "SM", "sar:frequency_band": "L",
                       "sar:polarizations": ["HH"]})  # fmt: skip
    m = discover(parse_config({"inputs": [str(item)], "assets": "1.HH", "reference": "1.HH"}))
    assert m.iloc[0]["asset_key"] == "hh" and m.iloc[0]["kind"] == "sar"


def test_landsat_grid_on_s2_reference_is_the_s2_lattice(tmp_path):
    """S2 10 m reference inside a Landsat 30 m crop whose lattice is 15 m off the S2's: the
    grid is the S2 crop, exactly."""
    s2 = localise(ES_L2A_13TDE, tmp_path / "s2", {"nir": ((5000, 6000, 150, 150),
                  np.full((150, 150), 2000))})  # fmt: skip
    ls = localise(ES_LANDSAT, tmp_path / "ls", {"nir08": ((4390, 350, 80, 80),
                  np.full((80, 80), 15000))})  # fmt: skip
    cfg = parse_config({"inputs": [str(s2), str(ls)], "assets": "1.nir,2.nir",
                        "reference": "1.nir"})  # fmt: skip
    from costack.stages.grid import compute_grid

    grid = compute_grid(discover(cfg), "1.nir", None)
    _, t = lattice(load(ES_L2A_13TDE), "nir")
    assert isinstance(grid, Grid)
    assert (grid.height, grid.width) == (150, 150)
    assert tuple(grid.transform)[:6] == tuple(t @ Affine.translation(6000, 5000))[:6]


@pytest.mark.workflow
def test_s2_and_landsat_stack_in_reflectance(tmp_path):
    """Earth Search S2 L2A (offset already applied) and Landsat C2 L2 (scale 2.75e-5, offset
    -0.2, key nir08) over the same ground: the stack is in reflectance, on the S2 lattice, and
    its item is valid and portable."""
    from conftest import run_snakemake
    from stac_schemas import local_paths, validate_item

    s2_win, ls_win = (5000, 6000, 240, 240), (4390, 350, 100, 100)
    fields = {"nir": (0.224, 0.05, 1), "red": (0.06, 0.015, 2)}
    s2_rasters, ls_rasters, truth = {}, {}, {}
    for band, (mean, amp, seed) in fields.items():
        _, t = lattice(load(ES_L2A_13TDE), band)
        xs, ys = pixel_centres(t, s2_win)
        truth[band] = ground(xs, ys, mean, amp, seed)
        s2_rasters[band] = (s2_win, encode(ES_L2A_13TDE, truth[band]))
        key = "nir08" if band == "nir" else band
        _, t = lattice(load(ES_LANDSAT), key)
        xs, ys = pixel_centres(t, ls_win)
        ls_rasters[key] = (ls_win, encode(ES_LANDSAT, ground(xs, ys, mean, amp, seed)))
    # the items' quality layers (issue 35), found by key and co-located once per dataset: S2's
    # SCL at 20 m all vegetation (4); Landsat's QA_PIXEL clear (bit 6) with a cloud (bit 3)
    s2_rasters["scl"] = ((2500, 3000, 120, 120), np.full((120, 120), 4, np.uint8))
    qa = np.full((100, 100), 1 << 6, np.uint16)
    qa[40:60, 40:60] = 1 << 3
    ls_rasters["qa_pixel"] = (ls_win, qa)
    s2 = localise(ES_L2A_13TDE, tmp_path / "s2", s2_rasters)
    ls = localise(ES_LANDSAT, tmp_path / "ls", ls_rasters, nodata_tag=False)
    work = tmp_path / "run"
    config = {
        "inputs": [str(s2), str(ls)], "assets": "1.nir,1.red,2.nir,2.red", "reference": "1.nir",
        "expressions": ["ndvi_s2:(norm_diff 1.nir 1.red)", "ndvi_ls:(norm_diff 2.nir 2.red)"],
        "item_id": "s2-landsat",
    }  # fmt: skip
    proc = run_snakemake(work, config, "results/catalog.json")  # without the figures
    assert proc.returncode == 0, proc.stderr[-3000:]
    masks = {n: read_float32(work / "results" / "masks" / f"{n}.tif")[0] for n in (1, 2)}
    assert not masks[1].any()  # vegetation only
    cloud = masks[2] > 0  # the 20 x 20 Landsat pixels of cloud: about 60 x 60 grid pixels
    assert 0.03 < cloud.mean() < 0.1, cloud.mean()
    assert np.isfinite(read_float32(work / "results/stack/2.nir.tif")[0][cloud]).all()
    stack = work / "results" / "stack"
    read = {k: read_float32(stack / f"{k}.tif")[0] for k in
            ("1.nir", "2.nir", "ndvi_s2", "ndvi_ls")}  # fmt: skip
    inner = (slice(16, -16), slice(16, -16))
    true_nir = float(np.median(truth["nir"][inner]))
    med = {k: float(np.nanmedian(read[k][inner])) for k in read}
    for k in ("1.nir", "2.nir"):
        assert abs(med[k] - true_nir) / true_nir < 0.02, (k, med[k], true_nir)
    assert abs(med["1.nir"] - med["2.nir"]) / true_nir < 0.02
    true_ndvi = (truth["nir"] - truth["red"]) / (truth["nir"] + truth["red"])
    for k in ("ndvi_s2", "ndvi_ls"):
        assert abs(med[k] - float(np.median(true_ndvi[inner]))) < 0.01, (k, med[k])
        assert float(np.nanmedian(np.abs(read[k] - true_ndvi)[inner])) < 0.01
    doc = json.loads((stack / "s2-landsat.json").read_text())
    assert validate_item(doc) == []
    assert local_paths(doc) == []
    assert doc["properties"]["proj:shape"] == [240, 240]
    _, t = lattice(load(ES_L2A_13TDE), "nir")
    assert doc["properties"]["proj:transform"] == list(t @ Affine.translation(6000, 5000))[:6]
    ls_nir = doc["assets"]["2.nir"]
    assert ls_nir["raster:bands"][0]["scale"] == 1.0 and ls_nir["raster:bands"][0]["offset"] == 0
    assert ls_nir["costack:radiometry"]["source_scale"] == 2.75e-5
    assert ls_nir["platform"] == "landsat-8" and "platform" not in doc["properties"]
    assert ls_nir["eo:bands"][0]["common_name"] == "nir08"


@pytest.mark.parametrize("name", [ES_C1, ES_L2A_20EPT, ES_L2A_13TDE, ES_LANDSAT, PC_0731, PC_0726])
def test_real_items_load_without_third_party_warnings(name):
    """Reading an item as published prints nothing of pystac's: its storage-extension
    migration warned twice per Earth Search item (https hrefs are "not s3"), before any of
    the run's own messages."""
    import warnings

    from catalogue import STAC_ITEMS, need_items

    from costack.stages.discover import load_item

    need_items()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        item = load_item(str(STAC_ITEMS / name), 1)
    assert item.assets, name
    assert not [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_a_cog_compressed_on_two_threads_is_the_same_file(tmp_path):
    """GDAL's multi-threaded compression (the COG rules' threads on a large grid) writes the
    same bytes as one thread, and a valid COG."""
    from rasterio.crs import CRS

    from costack.io.cog import is_valid_cog, write_cog
    from costack.io.rasters import write_float32

    grid = Grid(CRS.from_epsg(32631), Affine(10, 0, 500_000, 0, -10, 5_000_000), 700, 600)
    img = scene(600, 700, seed=2).astype(np.float32)
    img[:50, :80] = np.nan
    write_float32(tmp_path / "a.tif", img, grid)
    write_cog(tmp_path / "a.tif", tmp_path / "one.tif")
    write_cog(tmp_path / "a.tif", tmp_path / "two.tif", threads=2)
    assert is_valid_cog(tmp_path / "two.tif")
    assert (tmp_path / "two.tif").read_bytes() == (tmp_path / "one.tif").read_bytes()
