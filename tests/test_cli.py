"""The costack command line: steps by hand on the files of the last, one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from conftest import REPO, SHARED_DATA, demo_config, scene, write_raster
from rasterio.crs import CRS
from rasterio.transform import Affine

from costack.cli import build_parser, main
from costack.errors import CostackError
from costack.io.grids import Grid
from costack.io.rasters import read_float32


def test_steps_by_hand_reproduce_the_workflow(demo_run, tmp_path, capsys):
    cfg = demo_config()
    assert main(["check", "--input", cfg["inputs"][0], "--input", cfg["inputs"][1],
                 "--assets", "1.nir,2.nir", "--reference", "1.nir"]) == 0  # fmt: skip
    assert "ok: 2 assets in 2 datasets" in capsys.readouterr().out
    res = demo_run / "results"
    assert (
        main(["grid", str(res / "discover/manifest.csv"), "1.nir", str(tmp_path / "g.json")]) == 0
    )
    assert (tmp_path / "g.json").read_text() == (res / "grid/grid.json").read_text()
    out = tmp_path / "2.nir.tif"
    assert main(["colocate", str(res / "discover/manifest.csv"), str(res / "grid/grid.json"),
                 "2.nir", str(out)]) == 0  # fmt: skip
    a, _, _ = read_float32(out)
    b, _, _ = read_float32(res / "colocated/2.nir.tif")
    np.testing.assert_array_equal(a, b)


def test_bandmath_by_hand(demo_run, tmp_path):
    res = demo_run / "results" / "coregistered"
    out = tmp_path / "ndvi.tif"
    code = main(["bandmath", "ndvi:(norm_diff 1.nir 1.red)", "--asset",
                 f"1.nir={res / '1.nir.tif'}", "--asset", f"1.red={res / '1.red.tif'}",
                 str(out)])  # fmt: skip
    assert code == 0
    ndvi, _, _ = read_float32(out)
    expected, _, _ = read_float32(demo_run / "results" / "bandmath" / "ndvi.tif")
    np.testing.assert_array_equal(ndvi, expected)


def test_error_is_one_line_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "costack.cli", "bandmath", "ndvi:(norm_diff 1.nir", "--asset",
         "1.nir=a.tif", str(tmp_path / "o.tif")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("costack: error: expressions: 'ndvi:(norm_diff 1.nir': ")
    assert not (tmp_path / "o.tif").exists()


def test_costack_flow_reproduces_the_rule(demo_run, tmp_path):
    """`costack flow REF SEC OUT --model MODEL.json` gives the bytes of results/flow/N.tif."""
    res = demo_run / "results"
    out = tmp_path / "2.tif"
    proc = subprocess.run(
        [sys.executable, "-m", "costack.cli", "flow", str(res / "colocated/1.nir.tif"),
         str(res / "colocated/2.nir.tif"), str(out), "--model",
         str(res / "tiepoints/2.model.json")], capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.read_bytes() == (res / "flow" / "2.tif").read_bytes()
    # the SAR dataset with the model and its other polarisation, as the rule gives them: auto
    # takes the structure mode from the kinds and the resolution ratio comes from the
    # co-located raster's tag, as in the rule
    out3 = tmp_path / "3.tif"
    proc = subprocess.run(
        [sys.executable, "-m", "costack.cli", "flow", str(res / "colocated/1.nir.tif"),
         str(res / "colocated/3.s0_db_c_vv.tif"), str(out3), "--model",
         str(res / "tiepoints/3.model.json"), "--stats", str(tmp_path / "3.json"),
         "--radar-aux", str(res / "colocated/3.s0_db_c_vh.tif")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out3.read_bytes() == (res / "flow" / "3.tif").read_bytes()
    stats = json.loads((tmp_path / "3.json").read_text())
    assert stats["mode"] == "structure" and stats["mode_choice"]["reason"] == "sar against optical"


def test_costack_catalog_by_hand_is_the_rules_item(demo_run, tmp_path):
    """`costack catalog` given what the rule build_catalog gets (assets, expressions, flows,
    the QC summary) writes the workflow's item: same assets, flows, QC and verdict."""
    import shutil

    res = demo_run / "results"
    stack = tmp_path / "stack"
    shutil.copytree(res / "stack", stack)
    theirs = json.loads((stack / "costack-demo.json").read_text())
    (stack / "costack-demo.json").unlink()
    cfg = yaml.safe_load((demo_run / "config.yaml").read_text())
    argv = [sys.executable, "-m", "costack.cli", "catalog", str(res / "discover/manifest.csv"),
            str(res / "grid/grid.json"), cfg["reference"], str(tmp_path / "catalog.json"),
            str(stack / "costack-demo.json"), "--item-id", "costack-demo",
            "--qc", str(res / "qc/summary.json")]  # fmt: skip
    for key in cfg["assets"].split(","):
        argv += ["--asset", f"{key}={stack / (key + '.tif')}"]
    for expr in cfg["expressions"]:
        name = expr.split(":", 1)[0]
        argv += ["--expression", f"{name}={stack / (name + '.tif')}"]
    for n in (2, 3):
        argv += ["--flow", f"{n}={stack / f'{n}-displacement.tif'},"
                           f"{stack / f'{n}-confidence.tif'},{res / f'flow/{n}.json'},"
                           f"{stack / f'{n}-support.tif'}"]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    mine = json.loads((stack / "costack-demo.json").read_text())
    assert sorted(mine["assets"]) == sorted(theirs["assets"])
    for key in ("costack:qc", "costack:verdict"):
        assert mine["properties"][key] == theirs["properties"][key]
    assert mine["properties"]["costack:registration"].keys() == theirs["properties"][
        "costack:registration"].keys()  # fmt: skip
    for key, asset in theirs["assets"].items():
        assert mine["assets"][key].get("file:checksum") == asset.get("file:checksum"), key
    # no wall-clock timing in the item: it is the same bytes at every rerun and in every folder
    assert '"seconds"' not in json.dumps(theirs["properties"]["costack:registration"])


def test_flow_defaults_are_one_set():
    """`costack flow`, the rule's config schema and FlowParams share their defaults."""
    from costack.config import load_schema
    from costack.stages.flow import FlowParams

    args = build_parser().parse_args(["flow", "a.tif", "b.tif", "o.tif"])
    props = load_schema()["properties"]
    assert args.radii is props["flow_radii"]["default"] is FlowParams().radii is None
    assert args.max_displacement == props["max_displacement"]["default"]
    assert args.mode == props["flow_mode"]["default"] == "auto"


def _readme_commands() -> list[str]:
    """The `costack ...` commands of the step table (docs/pipeline.md) that rewrite one output."""
    import re

    text = (Path(__file__).parent.parent / "docs" / "pipeline.md").read_text(encoding="utf-8")
    table = text[text.index("| stage (module) |") :].split("\n\n", 1)[0]
    commands = []
    for row in table.splitlines()[2:]:
        for cmd in re.findall(r"`(costack [^`]+)`", row.split("|")[4]):
            if cmd.split()[1] not in ("check", "catalog", "report"):  # tested elsewhere
                commands.append(cmd)
    return commands


def test_readme_commands_reproduce_the_rules(demo_run, tmp_path):
    """Each command of the step table (docs/pipeline.md), run in a copy of the demo's folder
    with its output removed, writes that output again with the rule's bytes (the config is the
    demo run's, whose inputs are absolute paths)."""
    import shlex
    import shutil

    commands = _readme_commands()
    assert len(commands) >= 10, commands
    work = tmp_path / "demo"
    shutil.copytree(demo_run / "results", work / "results")
    (work / "config").mkdir()
    shutil.copy(demo_run / "config.yaml", work / "config" / "config.yaml")
    for cmd in commands:
        argv = shlex.split(cmd)
        positional, i = [], 2
        while i < len(argv):  # options with a value skip it; the output is the last positional
            if argv[i].startswith("--"):
                i += 1 if argv[i] in ("--db", "--multimodal", "--gcp-corner") else 2
            else:
                positional.append(argv[i])
                i += 1
        out = positional[-1]
        also = {"tiepoints": [out.replace(".csv", ".model.json")],
                "flow": [out.replace(".tif", ".confidence.tif")]}.get(argv[1], [])  # fmt: skip
        for name in (out, *also):
            (work / name).unlink()
        proc = subprocess.run([sys.executable, "-m", "costack.cli", *argv[1:]], cwd=work,
                              capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == 0, (cmd, proc.stderr[-2000:])
        for name in (out, *also):
            assert (work / name).read_bytes() == (demo_run / name).read_bytes(), (cmd, name)


@pytest.mark.parametrize("radii", [["0"], ["-3"], ["16", "65"]])
def test_flow_refuses_radii_out_of_range(tmp_path, capsys, radii):
    """--radii outside the config's flow_radii bounds: one line, exit 2, no output written."""
    for name in ("a.tif", "b.tif"):
        (tmp_path / name).write_bytes(b"")  # never opened: the radii are checked first
    code = main(["flow", str(tmp_path / "a.tif"), str(tmp_path / "b.tif"),
                 str(tmp_path / "o.tif"), "--radii", *radii])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--radii" in err[0] and "from 1 to 64" in err[0], err
    assert not (tmp_path / "o.tif").exists()


UAVSAR = SHARED_DATA / "radar_optical_uavsar"


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.skipif(not UAVSAR.exists(), reason="../shared/data (UAVSAR pair) absent")
def test_pair_steps_refuse_the_real_uavsar_files_as_they_are(tmp_path, capsys):
    """The public UAVSAR pair as downloaded: 3-band RGB GeoTIFFs whose grids differ (pixel
    sizes 5.558e-5 and 5.556e-5 degrees, origins 0.68 px apart). The pair steps once read
    band 1 without a word; now the bands, then the grid, are refused in one line, exit 2, with
    the command that fixes each, and nothing is written."""
    opt = next(UAVSAR.glob("*_optique.tif"))
    radar = next(UAVSAR.glob("*_radar.tif"))
    out = tmp_path / "flow.tif"
    assert main(["flow", str(opt), str(radar), str(out)]) == 2
    line = _one_line_error(capsys)
    assert f"flow: {opt} has 3 bands" in line and f"rio stack {opt} --bidx 1" in line, line
    # one band of each, each on its own grid, as rio stack writes them
    bands = {}
    for name, path in (("opt", opt), ("radar", radar)):
        with rasterio.open(path) as src:
            bands[name] = write_raster(tmp_path / f"{name}.tif", src.read(1), crs=src.crs,
                                       transform=src.transform)  # fmt: skip
    for argv in (["flow", str(bands["opt"]), str(bands["radar"]), str(out)],
                 ["tiepoints", str(bands["opt"]), str(bands["radar"]), str(tmp_path / "t.csv")],
                 ["qc", str(bands["opt"]), str(bands["radar"]), str(bands["radar"]),
                  str(tmp_path / "qc.json")]):  # fmt: skip
        assert main(argv) == 2, argv
        line = _one_line_error(capsys)
        assert f"{argv[0]}: {bands['radar']} is not on the grid of {bands['opt']}" in line
        assert "up to 0.938 px away" in line and f"--like {bands['opt']}" in line, line
    assert not [p.name for p in tmp_path.iterdir() if p.stem in ("flow", "t", "qc")]
    assert not (tmp_path / "qc.json").exists()


def test_one_grid_up_to_rounding_other_crs_or_flow_grid_refused(tmp_path, capsys):
    """A transform rounded differently (1e-9 px) is the same grid; the same numbers in another
    UTM zone are not (named); a flow on another grid is refused by warp with its own fix."""
    from costack.io.grids import SAME_GRID_PX, grid_offset_px
    from costack.io.rasters import require_colocated

    img = scene(64, 64).astype(np.float32)
    t = Affine(10.0, 0, 500_000.0, 0, -10.0, 4_000_000.0)
    a = write_raster(tmp_path / "a.tif", img, transform=t)
    rounded = t @ Affine.translation(1e-9, 0)
    b = write_raster(tmp_path / "b.tif", img, transform=rounded)
    grid = require_colocated("flow", a, b)
    assert 0 < grid_offset_px(grid, Grid(grid.crs, rounded, 64, 64)) < SAME_GRID_PX
    c = write_raster(tmp_path / "c.tif", img, crs=CRS.from_epsg(32632), transform=t)
    with pytest.raises(CostackError, match="its CRS is EPSG:32632, not EPSG:32631"):
        require_colocated("flow", a, c)
    half = t @ Affine.translation(0.5, 0)
    d = write_raster(tmp_path / "d.tif", img, transform=half)
    flow = write_raster(tmp_path / "f.tif", np.zeros((2, 64, 64), np.float32), transform=half)
    assert main(["warp", str(a), str(flow), str(tmp_path / "w.tif")]) == 2
    line = _one_line_error(capsys)
    assert "up to 0.5 px away" in line and "the flow estimated on this raster's grid" in line
    assert not (tmp_path / "w.tif").exists()
    assert main(["bandmath", "s:(+ 1.nir 2.nir)", "--asset", f"1.nir={a}", "--asset",
                 f"2.nir={d}", str(tmp_path / "s.tif")]) == 2  # fmt: skip
    assert f"bandmath: {d} is not on the grid of {a}" in _one_line_error(capsys)
    assert not (tmp_path / "s.tif").exists()


GEFOLKI_LIDAR = SHARED_DATA / "gefolki_misc" / "lidar_georef.png"


@pytest.mark.skipif(not GEFOLKI_LIDAR.exists(), reason="../shared/data (GeFolki images) absent")
def test_flow_on_plain_images_is_quiet_and_right(tmp_path):
    """Two PNGs without georeferencing (GeFolki's public LIDAR image: a crop, and the same crop
    with its content 2 columns right and 1 row down): one pixel grid, the flow recovers the
    shift, and no NotGeoreferencedWarning per open on stderr. A georeferenced raster against them is
    refused (CRS none)."""
    with rasterio.open(GEFOLKI_LIDAR) as src:
        img = src.read(1)
    ref, sec = img[500:756, 500:756], img[499:755, 498:754]
    for name, arr in (("a.png", ref), ("b.png", sec)):
        with rasterio.open(tmp_path / name, "w", driver="PNG", width=256, height=256, count=1,
                           dtype="uint8") as dst:  # fmt: skip
            dst.write(arr, 1)
    out = tmp_path / "f.tif"
    argv = ["flow", str(tmp_path / "a.png"), str(tmp_path / "b.png"), str(out)]
    proc = subprocess.run([sys.executable, "-m", "costack.cli", *argv], capture_output=True,
                          text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Georeferenced" not in proc.stderr, proc.stderr
    flow, _, _ = read_float32(out, band=None)
    inner = flow[:, 32:-32, 32:-32]
    # the secondary's content sits 2 columns right, 1 row down: sampled at (col + 2, row + 1)
    assert np.nanmedian(inner[0]) == pytest.approx(2.0, abs=0.02)
    assert np.nanmedian(inner[1]) == pytest.approx(1.0, abs=0.02)
    geo = write_raster(tmp_path / "g.tif", ref, transform=Affine(10.0, 0, 0, 0, -10.0, 0))
    with pytest.raises(CostackError, match="its CRS is none, not EPSG:32631"):
        from costack.io.rasters import require_colocated

        require_colocated("flow", geo, tmp_path / "a.png")


def _lidar_pngs(folder: Path, crops: dict[str, tuple[int, int, int]]) -> dict[str, Path]:
    """Crops (row, col, size) of GeFolki's public LIDAR image written as PNGs."""
    with rasterio.open(GEFOLKI_LIDAR) as src:
        img = src.read(1)
    paths = {}
    for name, (r, c, n) in crops.items():
        paths[name] = folder / f"{name}.png"
        with rasterio.open(paths[name], "w", driver="PNG", width=n, height=n, count=1,
                           dtype="uint8") as dst:  # fmt: skip
            dst.write(img[r : r + n, c : c + n], 1)
    return paths


@pytest.mark.skipif(not GEFOLKI_LIDAR.exists(), reason="../shared/data (GeFolki images) absent")
def test_flow_refuses_a_model_of_another_pair(tmp_path, capsys):
    """The tie-point model records the pair it was fitted on; `costack flow --model` starts
    from it only on that pair: the model of (a, b) is used for (a, b) and refused, in one line
    and before anything is written, for (a, c) (another secondary) and for a pair on another
    grid, where it used to seed the flow with that pair's field without a word."""
    png = _lidar_pngs(tmp_path, {"a": (500, 500, 256), "b": (499, 498, 256), "c": (400, 400, 256),
                                 "d": (500, 500, 200), "e": (499, 498, 200)})  # fmt: skip
    assert main(["tiepoints", str(png["a"]), str(png["b"]), str(tmp_path / "ab.csv")]) == 0
    model = tmp_path / "ab.model.json"
    data = json.loads(model.read_text())
    assert data["rasters"] == {"reference": "a.png", "secondary": "b.png"}
    assert (data["grid"]["width"], data["grid"]["height"], data["grid"]["crs"]) == (256, 256, None)
    stats = tmp_path / "ab.json"
    assert main(["flow", str(png["a"]), str(png["b"]), str(tmp_path / "ab.tif"), "--model",
                 str(model), "--stats", str(stats)]) == 0  # fmt: skip
    assert json.loads(stats.read_text())["start"]["kind"] != "global search"
    said = capsys.readouterr().out  # the summary line says how the flow was decided
    assert "mode efolki (same kind, contrast not inverted), start: tie-point model" in said, said
    grid_why = "was fitted on another grid (the model's size is 256x256 px, not 200x200)"
    for sec, ref, why in ((png["c"], png["a"], "was fitted on b.png, not c.png"),
                          (png["e"], png["d"], grid_why)):  # fmt: skip
        out = tmp_path / f"{sec.stem}.tif"
        assert main(["flow", str(ref), str(sec), str(out), "--model", str(model)]) == 2
        line = _one_line_error(capsys)
        assert line.startswith(f"costack: error: --model: {model} {why}"), line
        assert not out.exists() and not out.with_suffix(".confidence.tif").exists()
    data["grid"]["transform"] = "abc"  # edited by hand: one line, not a traceback
    model.write_text(json.dumps(data))
    assert main(["flow", str(png["a"]), str(png["b"]), str(tmp_path / "x.tif"), "--model",
                 str(model)]) == 2  # fmt: skip
    assert "has a malformed grid record" in _one_line_error(capsys)


def test_warp_and_qc_refuse_another_datasets_files(demo_run, tmp_path, capsys):
    """The flow's tags name the pair it was estimated on and co-registration keeps the asset's
    key: warping an asset of dataset 3 with dataset 2's flow, warping an optical asset with
    --db, and a QC of one asset before against another after are refused in one line with
    nothing written (they used to give a wrongly warped raster or QC figures, exit 0)."""
    res = demo_run / "results"
    with rasterio.open(res / "flow/3.tif") as src:
        assert src.tags()["costack_flow_secondary"] == "3.s0_db_c_vv"
        assert src.tags()["costack_flow_reference"] == "1.nir"
    with rasterio.open(res / "coregistered/3.s0_db_c_vh.tif") as src:
        assert src.tags()["costack_key"] == "3.s0_db_c_vh"
        # still dB, warped as linear power: a second warp reads it so, as co-location's
        assert src.tags()["costack_resampling_domain"].startswith("linear power (dB")
    cases = [
        (["warp", str(res / "colocated/3.s0_db_c_vh.tif"), str(res / "flow/2.tif")],
         "warp: " + f"{res / 'flow/2.tif'} is dataset 2's flow (estimated on 2.nir)"),
        (["warp", str(res / "colocated/2.nir.tif"), str(res / "flow/2.tif"), "--db"],
         "--db: " + f"{res / 'colocated/2.nir.tif'} is not in dB"),
        (["qc", str(res / "colocated/1.nir.tif"), str(res / "colocated/2.nir.tif"),
          str(res / "coregistered/3.s0_db_c_vh.tif")], "qc: "),
    ]  # fmt: skip
    for argv, start in cases:
        out = tmp_path / ("o.json" if argv[0] == "qc" else "o.tif")
        assert main([*argv, str(out)]) == 2, argv
        line = _one_line_error(capsys)
        assert line.startswith(f"costack: error: {start}"), line
        assert not out.exists()


def test_a_gcp_raster_off_the_grid_is_sent_to_the_colocate_step(demo_run, tmp_path, capsys):
    """The demo's Sentinel-1-like VV (GCPs only, pixel-centre convention) given to a pair step
    as it is: refused, and the fix is the colocate step, not rio warp (GDAL alone would take
    the GCPs at pixel corners, half a pixel off)."""
    res = demo_run / "results"
    raw = REPO / "resources/demo/s1/s0_db_c_vv.tif"
    out = tmp_path / "f.tif"
    assert main(["flow", str(res / "colocated/1.nir.tif"), str(raw), str(out)]) == 2
    line = _one_line_error(capsys)
    assert f"{raw} is not on the grid of" in line and "its CRS is none" in line, line
    assert "colocate step" in line and "pixel centres" in line and "rio warp" not in line, line
    assert not out.exists()


def test_tiled_flow_and_warp_write_the_in_memory_tags(demo_run, tmp_path, monkeypatch):
    """Above TILED_ABOVE the flow and the warp go tile by tile; they write the same costack
    tags as the in-memory writers (they wrote none), so warp's and QC's checks hold there too."""
    import costack.stages.coregister
    import costack.stages.flow
    from costack.stages.coregister import run_warp
    from costack.stages.flow import run_flow

    monkeypatch.setattr(costack.stages.flow, "TILED_ABOVE", 1000)
    monkeypatch.setattr(costack.stages.coregister, "TILED_ABOVE", 1000)
    res = demo_run / "results"
    flow = tmp_path / "3.tif"
    stats = run_flow(res / "colocated/1.nir.tif", res / "colocated/3.s0_db_c_vv.tif", flow,
                     tmp_path / "3.confidence.tif")  # fmt: skip
    assert "tiled" in stats
    with rasterio.open(flow) as src:
        assert src.tags()["costack_flow_secondary"] == "3.s0_db_c_vv", src.tags()
    out = tmp_path / "w.tif"
    run_warp(res / "colocated/3.s0_db_c_vh.tif", flow, out)
    with rasterio.open(out) as src:
        assert src.tags()["costack_key"] == "3.s0_db_c_vh" and src.tags()["costack_flow"]
    with pytest.raises(CostackError, match="is dataset 3's flow"):
        run_warp(res / "colocated/2.nir.tif", flow, tmp_path / "w2.tif")


def test_catalog_refuses_swapped_assets_and_flows(demo_run, tmp_path, capsys):
    """`costack catalog` with two assets' COGs swapped, or dataset 2's flow given as dataset
    3's: refused from the COGs' own tags, in one line, before the catalog is written."""
    res = demo_run / "results"
    stack = res / "stack"
    cfg = yaml.safe_load((demo_run / "config.yaml").read_text())
    keys = cfg["assets"].split(",")
    flows = {n: f"{stack / f'{n}-displacement.tif'},{stack / f'{n}-confidence.tif'},"
                f"{res / f'flow/{n}.json'}" for n in (2, 3)}  # fmt: skip
    base = ["catalog", str(res / "discover/manifest.csv"), str(res / "grid/grid.json"),
            cfg["reference"], str(tmp_path / "catalog.json"), str(tmp_path / "item.json"),
            "--item-id", "costack-demo", "--qc", str(res / "qc/summary.json")]  # fmt: skip
    a, b = keys[0], keys[1]
    swapped = {
        **{k: stack / f"{k}.tif" for k in keys},
        a: stack / f"{b}.tif",
        b: stack / f"{a}.tif",
    }
    cases = [
        ([x for k in keys for x in ("--asset", f"{k}={swapped[k]}")]
         + [x for n in (2, 3) for x in ("--flow", f"{n}={flows[n]}")],
         f"--asset: {stack / f'{b}.tif'} is asset {b}, given as {a}"),
        ([x for k in keys for x in ("--asset", f"{k}={stack / f'{k}.tif'}")]
         + ["--flow", f"2={flows[2]}", "--flow", f"3={flows[2]}"],
         f"--flow: {stack / '2-displacement.tif'} is dataset 2's flow"),
    ]  # fmt: skip
    for extra, start in cases:
        assert main([*base, *extra]) == 2
        line = _one_line_error(capsys)
        assert line.startswith(f"costack: error: {start}"), line
        assert not (tmp_path / "catalog.json").exists() and not (tmp_path / "item.json").exists()
