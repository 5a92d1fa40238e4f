"""The workflow end to end: the demo run, reruns, and bad input stopping before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from conftest import REPO, demo_config, run_snakemake, scene, write_item, write_raster
from rasterio.transform import Affine

from costack.io.cog import is_valid_cog

pytestmark = pytest.mark.workflow


def test_demo_stack_is_valid_cogs_on_one_grid(demo_run: Path):
    catalog = pystac.Catalog.from_file(str(demo_run / "results" / "catalog.json"))
    items = list(catalog.get_items(recursive=True))
    assert len(items) == 1
    item = items[0]
    expected = ["1.red", "1.nir", "2.red", "2.nir", "3.s0_db_c_vv", "3.s0_db_c_vh"]
    data_keys = [k for k, a in item.assets.items() if "data" in (a.roles or [])]
    assert data_keys == [*expected, "ndvi", "sar_water_mask"]
    ndvi = item.assets["ndvi"]
    assert ndvi.extra_fields["costack:expression"] == "(norm_diff 1.nir 1.red)"
    assert is_valid_cog(ndvi.get_absolute_href())
    with (
        rasterio.open(ndvi.get_absolute_href()) as n,
        rasterio.open(item.assets["1.nir"].get_absolute_href()) as a,
        rasterio.open(item.assets["1.red"].get_absolute_href()) as b,
    ):
        nir, red = a.read(1, masked=True), b.read(1, masked=True)
        np.testing.assert_allclose(n.read(1), (nir - red) / (nir + red), rtol=1e-5)
    with rasterio.open(item.assets["sar_water_mask"].get_absolute_href()) as m:
        mask = m.read(1, masked=True)
        assert set(np.unique(mask.compressed())) == {0.0, 1.0}
    grids = set()
    for key in expected:
        asset = item.assets[key]
        path = asset.get_absolute_href()
        assert is_valid_cog(path), key
        with rasterio.open(path) as src:
            assert src.count == 1 and src.dtypes[0] == "float32"
            grids.add((src.crs.to_epsg(), tuple(src.transform), src.shape))
        assert asset.extra_fields["raster:bands"][0]["data_type"] == "float32"
        assert asset.extra_fields["file:checksum"].startswith("1220")
    assert len(grids) == 1
    epsg, transform, shape = grids.pop()
    assert epsg == 32631 and transform[0] == 10.0 and transform[4] == -10.0
    assert item.properties["proj:code"] == "EPSG:32631"
    assert item.properties["proj:shape"] == list(shape)
    assert [link.rel for link in item.links].count("derived_from") == 3
    # the colocated 30 m asset lies on the reference's own pixel lattice
    with rasterio.open(REPO / "resources/demo/s2/nir.tif") as ref:
        col = (transform[2] - ref.transform.c) / 10.0
        row = (ref.transform.f - transform[5]) / 10.0
        assert col == int(col) and row == int(row)
        window = rasterio.windows.Window(int(col), int(row), shape[1], shape[0])
        ref_data = ref.read(1, window=window)
    with rasterio.open(item.assets["1.nir"].get_absolute_href()) as out:
        np.testing.assert_array_equal(out.read(1), ref_data)
    sar = item.assets["3.s0_db_c_vv"].extra_fields
    assert sar["sar:polarizations"] == ["VV"] and sar["sar:frequency_band"] == "C"
    assert sar["sar:instrument_mode"] == "IW" and sar["sar:product_type"] == "GRD"
    assert "linear power" in sar["costack:resampling"]


def test_demo_item_is_valid_stac_and_portable(demo_run: Path):
    """Core and every declared extension (sar included: the demo has a SAR dataset) validate
    offline; no absolute local path; every output's mode follows the umask (0644 under 022)."""
    from stac_schemas import local_paths, validate_item

    doc = json.loads((demo_run / "results" / "stack" / "costack-demo.json").read_text())
    assert validate_item(doc) == []
    assert "https://stac-extensions.github.io/sar/v1.3.0/schema.json" in doc["stac_extensions"]
    assert local_paths(doc) == []
    assert "platform" not in doc["properties"]  # three platforms: one per asset
    assert doc["assets"]["2.nir"]["platform"] == "landsat-8"
    for link in doc["links"]:
        if link["rel"] == "derived_from":
            target = (demo_run / "results" / "stack" / link["href"]).resolve()
            assert target.is_file(), link
    from costack.io.files import current_umask

    modes = {p.stat().st_mode & 0o777 for p in (demo_run / "results").rglob("*") if p.is_file()}
    assert modes == {0o666 & ~current_umask()}


@pytest.mark.xdist_group("demo_dir")
def test_second_dry_run_has_nothing_to_do(demo_run: Path):
    from conftest import demo_config

    proc = run_snakemake(demo_run, demo_config(), "-n")
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.xdist_group("demo_dir")
def test_no_catalog_output_is_one_of_its_inputs(demo_run: Path):
    """The catalog step publishes its input COGs by hard links; Snakemake re-dates a job's
    declared outputs one by one after it, so a declared output that is also an input (one
    inode) is re-dated after the outputs before it and reads as an input newer than an output
    (the run failed so, once, when a clock tick fell between the two). No declared output of
    ``build_catalog`` may share its inode with a declared input."""
    proc = run_snakemake(demo_run, demo_config(), "-n", "--forcerun", "build_catalog")
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout + proc.stderr
    block = text[text.index("rule build_catalog:") :].splitlines()
    fields = {}
    for line in block[1:]:
        if not line.startswith(" "):  # the job's indented lines end it
            break
        key, _, value = line.strip().partition(": ")
        fields[key] = [v.strip() for v in value.split(",") if v.strip()]
    assert "results/catalog.json" in fields["output"] and fields["input"], block
    inodes = {}
    for name in fields["input"]:
        st = (demo_run / name).stat()
        inodes[(st.st_dev, st.st_ino)] = name
    for name in fields["output"]:
        st = (demo_run / name).stat()
        assert (st.st_dev, st.st_ino) not in inodes, (name, inodes.get((st.st_dev, st.st_ino)))
    published = demo_run / "results" / "stack" / "1.nir.tif"
    assert published.samefile(demo_run / "results" / "cog" / "1.nir.tif")  # still linked


def _files(root: Path) -> list[Path]:
    return [p for p in (root / "results").rglob("*") if p.is_file()] if root.exists() else []


def _bad(tmp: Path, kind: str) -> tuple[dict, str]:
    """A bad configuration of ``kind`` and the start of the expected error line."""
    t1 = Affine(10, 0, 500_000, 0, -10, 5_000_000)
    write_raster(tmp / "d1" / "nir.tif", scene(64, 64, 1), transform=t1)
    i1 = write_item(tmp / "d1", "d1", {"nir": {"href": "./nir.tif"}})
    base = {"inputs": [str(i1)], "assets": "1.nir", "reference": "1.nir"}
    if kind == "missing_key":
        return dict(
            base, assets="1.nir,1.swir16"
        ), "assets: 1.swir16: item d1 (dataset 1) has no asset 'swir16'; its assets are nir"
    if kind == "index_beyond":
        return dict(base, assets="1.nir,2.nir"), "assets: asset 2.nir refers to dataset 2"
    if kind == "reference_not_listed":
        return dict(base, reference="1.red"), "reference: 1.red is not in the asset list"
    if kind == "malformed_token":
        return dict(base, assets="1nir"), "assets: asset token '1nir' is malformed"
    if kind == "trailing_dot":
        return dict(base, assets="1."), "assets: asset token '1.' is malformed"
    if kind == "spaces":
        return dict(base, assets="1.nir, 1.nir"), "assets: asset token ' 1.nir' contains spaces"
    if kind == "missing_href":
        i2 = write_item(tmp / "d2", "d2", {"nir": {"href": "./gone.tif"}})
        return dict(
            base, inputs=[str(i1), str(i2)], assets="1.nir,2.nir"
        ), "assets: 2.nir: cannot read"
    if kind == "multiband":
        write_raster(tmp / "d2" / "rgb.tif", np.stack([scene()] * 3), transform=t1)
        i2 = write_item(tmp / "d2", "d2", {"rgb": {"href": "./rgb.tif"}})
        return dict(base, inputs=[str(i1), str(i2)], assets="1.nir,2.rgb"), "assets: 2.rgb: "
    if kind == "complex":
        write_raster(tmp / "d2" / "slc.tif", (scene() + 1j).astype(np.complex64), transform=t1)
        i2 = write_item(tmp / "d2", "d2", {"s0_vv": {"href": "./slc.tif"}})
        return dict(base, inputs=[str(i1), str(i2)], assets="1.nir,2.s0_vv"), "assets: 2.s0_vv: "
    if kind == "bad_wkt":
        return dict(base, aoi="POLYGON((1 2, 3"), "aoi: cannot parse WKT"
    if kind == "aoi_outside":
        return dict(
            base, aoi="POLYGON((10 10, 11 10, 11 11, 10 11, 10 10))"
        ), "aoi: the AOI does not overlap"
    if kind == "no_common_area":
        t2 = Affine(10, 0, 600_000, 0, -10, 5_000_000)
        write_raster(tmp / "d2" / "nir.tif", scene(), transform=t2)
        i2 = write_item(tmp / "d2", "d2", {"nir": {"href": "./nir.tif"}})
        return dict(
            base, inputs=[str(i1), str(i2)], assets="1.nir,2.nir"
        ), "assets: the footprints of the listed assets have no common area"
    if kind == "bad_expression":
        return dict(
            base, expressions=["ndvi:(norm_diff 1.nir"]
        ), "expressions: 'ndvi:(norm_diff 1.nir': unbalanced brackets"
    if kind == "expression_unknown_asset":
        return dict(
            base, expressions=["a:(+ 1.nir 2.nir)"]
        ), "expressions: 'a:(+ 1.nir 2.nir)': asset 2.nir is not in the asset list"
    if kind == "unknown_key":
        return dict(base, referense="1.nir"), "config key 'referense': does not exist"
    raise AssertionError(kind)


BAD = [
    "missing_key", "index_beyond", "reference_not_listed", "malformed_token", "trailing_dot",
    "spaces", "missing_href", "multiband", "complex", "bad_wkt", "aoi_outside",
    "no_common_area", "unknown_key", "bad_expression", "expression_unknown_asset",
]  # fmt: skip


@pytest.mark.parametrize("kind", BAD)
def test_bad_input_is_refused_with_one_line_by_the_preflight(tmp_path, kind):
    """Every kind of bad input, refused by the preflight that the workflow runs when it parses
    (common.smk: ``cached_preflight``, its error printed as ``costack: error: ...``), with a
    one-line message that names the parameter, and nothing cached."""
    from costack.errors import CostackError
    from costack.plan import cached_preflight

    config, expected = _bad(tmp_path / "data", kind)
    cache = tmp_path / "run" / ".snakemake" / "costack"
    with pytest.raises(CostackError) as err:
        cached_preflight(config, cache)
    line = f"costack: error: {err.value}"
    assert "\n" not in line and line.startswith(f"costack: error: {expected}"), line
    if kind == "complex":
        assert "SAR complex data is not supported" in line
    if kind == "multiband":
        assert "only single-band assets" in line
    assert not cache.exists() or not any(cache.rglob("*.json"))


#: one kind per layer of the preflight, through Snakemake: the configuration's keys, an item's
#: asset, a raster's header, the grid, an expression (the message of every kind is checked
#: above; each Snakemake start costs 2-3 s)
THROUGH_SNAKEMAKE = ["unknown_key", "missing_href", "complex", "aoi_outside",
                     "expression_unknown_asset"]  # fmt: skip


@pytest.mark.parametrize("kind", THROUGH_SNAKEMAKE)
def test_bad_input_stops_with_one_line_and_no_output(tmp_path, kind):
    config, expected = _bad(tmp_path / "data", kind)
    workdir = tmp_path / "run"
    proc = run_snakemake(workdir, config)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("costack: error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith(f"costack: error: {expected}"), lines[0]
    if kind == "complex":
        assert "SAR complex data is not supported" in lines[0]
    assert "Traceback" not in proc.stderr
    assert _files(workdir) == []


def test_catalog_json_links_item(demo_run: Path):
    data = json.loads((demo_run / "results" / "catalog.json").read_text())
    assert data["type"] == "Catalog"
    assert any(link["rel"] == "item" for link in data["links"])


def test_demo_flows_match_stored_truth(demo_run: Path):
    from costack.io.rasters import read_flow_and_truth
    from costack.registration.evaluation import flow_metrics

    res = demo_run / "results"
    optical = flow_metrics(
        *read_flow_and_truth(res / "flow/2.tif", REPO / "resources/demo/l8/truth.tif")
    )
    sar = flow_metrics(
        *read_flow_and_truth(res / "flow/3.tif", REPO / "resources/demo/s1/truth.tif")
    )
    # measured 0.058 and 0.378 px mean EPE (0.081 and 0.455 before the scale blend and the
    # pyramid depth from the windows)
    assert optical["mean_epe"] <= 0.07
    assert sar["mean_epe"] <= 0.42
    # co-registration moved the secondary: its residual against the truth is far below the
    # initial misregistration (about 3 px)
    assert optical["median_epe"] < 0.2


def test_demo_item_has_flow_metadata_assets(demo_run: Path):
    item = pystac.Item.from_file(str(demo_run / "results/stack/costack-demo.json"))
    for n in ("2", "3"):
        disp = item.assets[f"displacement:{n}"]
        assert disp.roles == ["metadata"] and is_valid_cog(disp.get_absolute_href())
        assert len(disp.extra_fields["raster:bands"]) == 2
        assert item.assets[f"confidence:{n}"].roles == ["metadata"]
    reg = item.properties["costack:registration"]["datasets"]
    assert reg["2"]["mode"] == "efolki" and reg["3"]["mode"] == "structure"
    # the reference dataset's assets are not moved
    with (
        rasterio.open(item.assets["1.nir"].get_absolute_href()) as a,
        rasterio.open(demo_run / "results/colocated/1.nir.tif") as b,
    ):
        np.testing.assert_array_equal(a.read(1), b.read(1))


def test_demo_tiepoints_contract(demo_run: Path):
    import pandas as pd

    from costack.registration.tiepoint_model import apply_model
    from costack.stages.tiepoints import CSV_COLUMNS

    res = demo_run / "results" / "tiepoints"
    df = pd.read_csv(res / "2.csv")
    # issue #3's figures on the demo's 10 m / 30 m optical pair (known affine)
    assert list(df.columns) == CSV_COLUMNS and len(df) >= 100  # measured 128
    model = json.loads((res / "2.model.json").read_text())
    assert model["chosen"] == "affine" and set(model["models"]) >= {"translation", "affine"}
    assert model["similarity"] == "SAM"
    with (
        rasterio.open(REPO / "resources/demo/l8/truth.tif") as t,
        rasterio.open(demo_run / "results/colocated/1.nir.tif") as g,
    ):
        win = rasterio.windows.from_bounds(*g.bounds, transform=t.transform)
        truth = t.read(window=win.round_offsets().round_lengths()).astype(float)
    r = (df.ref_row - 0.5).astype(int)
    c = (df.ref_col - 0.5).astype(int)
    ok = ~df.outlier.astype(bool)
    err = np.hypot(df.dx - truth[0][r, c], df.dy - truth[1][r, c])[ok]
    assert np.sqrt(np.mean(err**2)) <= 0.3  # measured 0.19 px
    # the fitted affine against the truth over the whole grid: measured 0.03 px
    h, w = truth.shape[1:]
    rr, cc = np.mgrid[0:h, 0:w] + 0.5
    px, py = apply_model("affine", np.array(model["coefficients"]), cc, rr)
    assert np.sqrt(np.mean((px - cc - truth[0]) ** 2 + (py - rr - truth[1]) ** 2)) <= 0.15
    assert (res / "2.png").stat().st_size > 10_000
    # SAR against optical: matched on CFOG descriptors, named in the model; issue #3's
    # figure: tie-point RMSE against the truth <= 1 px (measured 13 points, 0.87 px)
    sar = json.loads((res / "3.model.json").read_text())
    assert sar["similarity"].startswith("NCC of CFOG")
    with rasterio.open(REPO / "resources/demo/s1/truth.tif") as t:
        truth = t.read(window=win.round_offsets().round_lengths()).astype(float)
    df = pd.read_csv(res / "3.csv")
    ok = ~df.outlier.astype(bool)
    r, c = (df.ref_row - 0.5).astype(int), (df.ref_col - 0.5).astype(int)
    err = np.hypot(df.dx - truth[0][r, c], df.dy - truth[1][r, c])[ok]
    assert ok.sum() >= 6 and np.sqrt(np.mean(err**2)) <= 1.0
    # too few and too loose to seed the flow, which runs its own global search
    flow = json.loads((demo_run / "results/flow/3.json").read_text())
    assert flow["tiepoint_model"] is None and "seed_min_points" in flow["tiepoint_model_refused"]


def test_demo_qc_summary(demo_run: Path):
    summary = json.loads((demo_run / "results/qc/summary.json").read_text())
    optical = summary["2"]
    assert optical["before"]["points"] > 50 and optical["after"]["points"] > 50
    # the demo's misregistration is about 3 px before; co-registration removes most of it
    assert optical["before"]["pixels"]["mean"] > 2.0
    assert optical["after"]["pixels"]["mean"] < 0.5
    assert optical["after"]["metres"]["mean"] == pytest.approx(
        10 * optical["after"]["pixels"]["mean"], rel=1e-2
    )
    item = pystac.Item.from_file(str(demo_run / "results/stack/costack-demo.json"))
    assert item.properties["costack:qc"]["2"]["after"] == optical["after"]
    # no false alarm on the demo: both datasets pass, and the item says so
    assert summary["2"]["verdict"] == summary["3"]["verdict"] == "pass"
    assert summary["3"]["label"] == "sentinel-1a 2024-06-12"
    assert item.properties["costack:verdict"] == "pass"
    assert item.properties["costack:qc"]["3"]["verdict"] == "pass"


def test_demo_sar_qc_is_within_a_factor_2_of_the_truth(demo_run: Path, tmp_path: Path):
    """The SAR/optical QC (CFOG re-matching) rests on >= 20 points and reads the residual
    within [0.5x, 2x] of the true error of the co-registration (flow against the truth), the
    QC's own floor added to the upper bound: its reading of a perfect co-registration (the
    co-located SAR warped by the true field), the re-matching's noise on 20 m speckle
    (measured 0.71 px: the QC cannot tell the flow's 0.35-0.38 px from zero; the VV flow,
    0.377 px from the truth, read 0.728, 1.93x; with VV and VH, 0.349 px read 0.735, 2.1x)."""
    from costack.io.rasters import read_float32, read_flow_and_truth, write_float32
    from costack.registration.evaluation import flow_metrics
    from costack.registration.imaging import warp_array
    from costack.stages.qc import run_qc

    res = demo_run / "results"
    sar = json.loads((res / "qc/summary.json").read_text())["3"]
    assert sar["after"]["figure"] == "measured" and sar["after"]["points"] >= 20
    flow, truth = read_flow_and_truth(res / "flow/3.tif", REPO / "resources/demo/s1/truth.tif")
    true = flow_metrics(flow, truth)
    sec, grid, nodata = read_float32(res / "colocated/3.s0_db_c_vv.tif")
    write_float32(tmp_path / "perfect.tif", warp_array(sec, truth[0], truth[1]), grid, nodata)
    perfect = run_qc(res / "colocated/1.nir.tif", res / "colocated/3.s0_db_c_vv.tif",
                     tmp_path / "perfect.tif", tmp_path / "perfect.json")  # fmt: skip
    floor = perfect["after"]["pixels"]["mean"]
    got = sar["after"]["pixels"]["mean"]
    assert 0.5 * true["mean_epe"] <= got <= 2.0 * true["mean_epe"] + floor, (got, true, floor)


def _fresh_checkout(tmp_path: Path) -> Path:
    """The repository's workflow files as a fresh checkout has them: no results, no logs."""
    import shutil

    root = tmp_path / "checkout"
    root.mkdir()
    shutil.copy(REPO / "Snakefile", root)
    for folder in ("workflow", "config", "resources", "profiles", "envs"):
        shutil.copytree(REPO / folder, root / folder)
    return root


def _dry_run(cwd: Path, *extra: str):
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "snakemake", "-n", "--cores", "2", *extra]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_dry_run_on_a_fresh_checkout(tmp_path):
    """`snakemake -n` before anything exists: every job planned with integer threads."""
    root = _fresh_checkout(tmp_path)
    proc = _dry_run(root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "colocate_asset" in out and "Threads must be given" not in out
    assert not (root / "results").exists()


def test_user_configfile_gets_no_demo_values(tmp_path):
    """A user's --configfile is the whole run: the demo's expressions and item id stay out."""
    root = _fresh_checkout(tmp_path)
    (root / "my.yaml").write_text(
        f"inputs: [{REPO}/resources/demo/s2/item.json, {REPO}/resources/demo/l8/item.json]\n"
        "assets: 1.nir,2.nir\nreference: 1.nir\n"
    )
    proc = _dry_run(root, "--configfile", "my.yaml")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "evaluate_expression" not in out and "ndvi" not in out
    # the item's file is inside the catalog step's folder output: its log is named by it
    assert "logs/build_catalog/costack-stack.log" in out and "costack-demo" not in out


def test_cog_compression_reaches_the_rules(demo_run: Path, tmp_path: Path):
    """``cog_compression: zstd`` makes the rules write ZSTD COGs of the same pixels (a copy of
    the demo's run, the two kinds of COG rule rerun by Snakemake for the changed parameter)."""
    import shutil

    work = tmp_path / "run"
    shutil.copytree(demo_run, work, symlinks=True)
    targets = ["results/cog/1.nir.tif", "results/cog/2-displacement.tif"]
    cfg = {**demo_config(), "cog_compression": "zstd"}
    proc = run_snakemake(work, cfg, *targets)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for target in targets:
        with rasterio.open(work / target) as new, rasterio.open(demo_run / target) as old:
            assert (new.profile["compress"], old.profile["compress"]) == ("zstd", "deflate")
            np.testing.assert_array_equal(new.read(), old.read())
        assert is_valid_cog(work / target)
