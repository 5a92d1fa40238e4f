"""Bad input and faults fail loudly and cleanly: refused before any job with one line, or run
correctly; bounded resources; nothing half-written; outputs that can be verified."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from conftest import (
    REPO,
    demo_config,
    loopback_server,
    run_snakemake,
    scene,
    write_item,
    write_raster,
)
from rasterio.crs import CRS
from rasterio.transform import Affine

from costack.errors import CostackError
from costack.io.files import atomic_path
from costack.plan import preflight
from costack.stages.bandmath import evaluate, parse

T = Affine(10, 0, 500_000, 0, -10, 5_000_000)
CLI = [sys.executable, "-m", "costack.cli"]


def _one_line(proc) -> str:
    lines = [x for x in proc.stderr.splitlines() if x.startswith("costack: error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return lines[0]


BAD_CONFIG = {
    "max_displacement_inf": ({"max_displacement": float("inf")}, r"^max_displacement: inf is"),
    "max_displacement_nan": ({"max_displacement": float("nan")}, r"^max_displacement: nan is"),
    "name_too_long": ({"expressions": ["a" * 240 + ":(+ 1.nir 1)"]}, r"240 characters long"),
    "name_periodic": ({"expressions": ["xxxxxxxxxxxx:(+ 1.nir 1)"]}, r"repeats one pattern"),
    "item_id_newline": ({"item_id": "stack\n"}, r"^item_id: 'stack\\n' cannot name"),
    "item_id_slash": ({"item_id": "../stack"}, r"^item_id: '\.\./stack' does not match"),
    "matching_unknown_band": ({"matching_assets": {2: "nonexistent"}},
                              r"^matching_assets: 2: 'nonexistent' is not a listed asset"),
    "matching_unknown_dataset": ({"matching_assets": {9: "nir"}},
                                 r"^matching_assets: key '9' is not a secondary dataset"),
    "matching_reference_dataset": ({"matching_assets": {1: "nir"}},
                                   r"^matching_assets: key '1' is not a secondary dataset"),
    "huge_sum": ({"expressions": ["s:(+ " + " ".join(["1.nir"] * 1600) + ")"]},
                 r"1600 asset operands, more than 64"),
    "memory_ceiling": ({"max_job_memory_mb": 64},
                       r"^assets: the grid is 4\d\d x 4\d\d px .* job would need about 0\.\d GB, "
                       r"above max_job_memory_mb = 64"),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(BAD_CONFIG))
def test_bad_config_values_are_refused_in_a_second(kind):
    change, message = BAD_CONFIG[kind]
    cfg = dict(demo_config(), **change)
    start = time.perf_counter()
    with pytest.raises(CostackError, match=message):
        preflight(cfg)
    assert time.perf_counter() - start < 5  # no data is read


@pytest.mark.parametrize(
    ("aoi", "message"),
    [
        (
            "POLYGON((4 43, 8 43, 8 47, 4 47, 4 43))",
            r"^aoi: the grid is 33\d+ x 45\d+ px \(1,5\d\d Mpx\), above max_grid_pixels",
        ),
        ("POLYGON((179 0, -179 0, -179 1, 179 1, 179 0))", r"crosses the antimeridian"),
        ("POLYGON((-180 -90, 180 -90, 180 90, -180 90, -180 -90))", r"above max_grid_pixels"),
    ],
)
def test_oversized_aois_are_refused_before_any_job(aoi, message):
    """A 4x4 degree AOI (1.5 Gpx) was OOM-killed in colocation; the whole world was said not
    to overlap; an antimeridian AOI asked for 4.31 TiB."""
    start = time.perf_counter()
    with pytest.raises(CostackError, match=message):
        preflight(dict(demo_config(), aoi=aoi))
    assert time.perf_counter() - start < 5


def test_every_job_of_a_huge_grid_is_bounded_in_memory():
    """With max_grid_pixels raised, the 4x4 degree AOI (1.5 Gpx) passes: every job streams,
    goes by strips or by tiles, so none is estimated above 3 GB."""
    from costack.plan import job_memory

    plan = preflight(dict(demo_config(), aoi="POLYGON((4 43, 8 43, 8 47, 4 47, 4 43))",
                          max_grid_pixels=2_000_000_000))  # fmt: skip
    assert plan.grid.width * plan.grid.height > 1_500_000_000
    need = job_memory(plan.cfg, plan.manifest, plan.grid)
    assert max(need.values()) < 3e9, need


def test_geographic_reference_is_refused(tmp_path):
    write_raster(tmp_path / "a.tif", scene(), crs=CRS.from_epsg(4326),
                 transform=Affine(0.0001, 0, 3.0, 0, -0.0001, 45.0))  # fmt: skip
    item = write_item(tmp_path, "geo", {"nir": {"href": "./a.tif"}})
    with pytest.raises(CostackError, match=r"^reference: 1.nir is in a geographic CRS"):
        preflight({"inputs": [str(item)], "assets": "1.nir", "reference": "1.nir"})


def test_interp_with_decreasing_xp_is_sorted_with_fp():
    x = np.array([[0.0, 0.25, 1.0]])
    parsed = parse("inv:(interp 1.a (asarray 1 0) (asarray 0 1))", {"1.a"})
    np.testing.assert_allclose(evaluate(parsed, {"1.a": x}), 1 - x)
    with pytest.raises(CostackError, match="repeats a value"):
        parse("bad:(interp 1.a (asarray 1 1) (asarray 0 1))", {"1.a"})


@pytest.mark.parametrize(
    ("content", "message"),
    [("- a\n- b\n", "holds a list, not a mapping"), ("inputs: [a\nassets: :", "not valid YAML")],
)
def test_costack_check_on_a_yaml_list_or_invalid_yaml(tmp_path, content, message):
    (tmp_path / "c.yaml").write_text(content)
    proc = subprocess.run([*CLI, "check", "--configfile", str(tmp_path / "c.yaml")],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and message in _one_line(proc)


@pytest.mark.parametrize("command", ["cog", "warp", "flow", "tiepoints", "colocate", "grid",
                                     "bandmath", "verify"])  # fmt: skip
def test_subcommands_on_missing_files_are_one_line(tmp_path, command):
    missing = str(tmp_path / "missing.tif")
    args = {
        "cog": [missing, str(tmp_path / "o.tif")],
        "warp": [missing, missing, str(tmp_path / "o.tif")],
        "flow": [missing, missing, str(tmp_path / "o.tif")],
        "tiepoints": [missing, missing, str(tmp_path / "o.csv")],
        "colocate": [missing, missing, "1.nir", str(tmp_path / "o.tif")],
        "grid": [missing, "1.nir", str(tmp_path / "g.json")],
        "bandmath": ["n:(+ 1.nir 1)", str(tmp_path / "o.tif"), "--asset", f"1.nir={missing}"],
        "verify": [str(tmp_path / "item.json")],
    }[command]
    proc = subprocess.run([*CLI, command, *args], capture_output=True, text=True)
    assert proc.returncode == 2
    _one_line(proc)


def _wrong_files(tmp_path: Path) -> dict[str, str]:
    """Files a user may give a subcommand by mistake: a good raster and a good grid to pair
    them with, text named .tif, a GeoTIFF cut after its header, JSON that is no model or grid,
    a CSV that is no manifest."""
    from costack.io.grids import Grid
    from costack.io.rasters import write_float32

    grid = Grid(CRS.from_epsg(32631), T, 64, 64)
    good = tmp_path / "good.tif"
    write_float32(good, scene(64, 64).astype(np.float32), grid)
    grid.save(tmp_path / "grid.json")
    (tmp_path / "text.tif").write_text("not a raster\n")
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(good.read_bytes()[:600])
    (tmp_path / "other.json").write_text('{"a": 1}\n')
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    names = {"grid": "grid.json", "text": "text.tif", "json": "other.json", "csv": "other.csv"}
    return {"good": str(good), "truncated": str(truncated),
            **{k: str(tmp_path / v) for k, v in names.items()}}  # fmt: skip


WRONG_FILES = {
    # subcommand arguments (names of _wrong_files' files in braces) -> the one line expected
    "cog text": (["cog", "{text}", "{out}"], r"^cog: .*text.tif.* not recognized"),
    "cog truncated": (["cog", "{truncated}", "{out}"], r"^cog: .*truncated.tif"),
    "warp text flow": (["warp", "{good}", "{text}", "{out}"], r"^warp: .*text.tif"),
    "warp raster as flow": (
        ["warp", "{good}", "{good}", "{out}"],
        r"^warp: .*good.tif is not a flow \(it has 1 band",
    ),
    "flow truncated": (["flow", "{good}", "{truncated}", "{out}"], r"^flow: .*truncated.tif"),
    "flow json as model": (
        ["flow", "{good}", "{good}", "{out}", "--model", "{json}"],
        r"^--model: .*other.json is not a tie-point model JSON \('chosen'",
    ),
    "flow raster as model": (
        ["flow", "{good}", "{good}", "{out}", "--model", "{good}"],
        r"^--model: .*good.tif is not a tie-point model JSON",
    ),
    "tiepoints text": (["tiepoints", "{good}", "{text}", "{out}"], r"^tiepoints: .*text.tif"),
    "colocate csv as manifest": (
        ["colocate", "{csv}", "{grid}", "1.nir", "{out}"],
        r"^manifest: .*other.csv is not a manifest CSV \(no column key",
    ),
    "colocate json as grid": (
        ["colocate", "{manifest}", "{json}", "1.nir", "{out}"],
        r"^grid: .*other.json is not a grid JSON \(no 'crs'\)",
    ),
    "colocate unknown key": (
        ["colocate", "{manifest}", "{grid}", "9.nir", "{out}"],
        r"^key: '9.nir' is not an asset of .*manifest.csv \(it has 1.nir\)",
    ),
    "grid raster as manifest": (
        ["grid", "{good}", "1.nir", "{out}"],
        r"^manifest: .*good.tif is not a manifest CSV",
    ),
    "grid unknown reference": (["grid", "{manifest}", "9.nir", "{out}"], r"^key: '9.nir'"),
    "bandmath text": (
        ["bandmath", "n:(+ 1.nir 1)", "{out}", "--asset", "1.nir={text}"],
        r"^bandmath: .*text.tif",
    ),
    "bandmath json as grid": (
        ["bandmath", "n:(+ 1 1)", "{out}", "--grid", "{json}"],
        r"^grid: .*other.json is not a grid JSON",
    ),
    "coregister text": (
        ["coregister", "{text}", "{out}"],
        r"^coregister: .*text.tif is not a readable raster",
    ),
}


@pytest.mark.parametrize("case", list(WRONG_FILES))
def test_subcommands_on_wrong_files_are_one_line(tmp_path, case):
    """Every step's subcommand given the wrong kind of file: exit 2, one line naming the file
    (or the parameter) and what to give, no traceback, no output."""
    files = _wrong_files(tmp_path)
    item = write_item(tmp_path, "x", {"nir": {"href": "./good.tif"}})
    from costack.config import parse_config
    from costack.stages.discover import run_discover

    run_discover(parse_config({"inputs": [str(item)], "assets": "1.nir", "reference": "1.nir"}),
                 tmp_path / "manifest.csv")  # fmt: skip
    files |= {"manifest": str(tmp_path / "manifest.csv"), "out": str(tmp_path / "out" / "o.tif")}
    argv, pattern = WRONG_FILES[case]
    proc = subprocess.run([*CLI, *(a.format(**files) for a in argv)], capture_output=True,
                          text=True)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = _one_line(proc).removeprefix("costack: error: ")
    assert re.search(pattern, line), line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_truncated_source_fails_colocation_with_one_line(tmp_path):
    from costack.config import parse_config
    from costack.stages.colocate import run_colocate
    from costack.stages.discover import run_discover
    from costack.stages.grid import run_grid

    tif = write_raster(tmp_path / "nir.tif", scene(256, 256), transform=T)
    data = tif.read_bytes()
    item = write_item(tmp_path, "x", {"nir": {"href": "./nir.tif"}})
    cfg = {"inputs": [str(item)], "assets": "1.nir", "reference": "1.nir"}
    run_discover(parse_config(cfg), tmp_path / "m.csv")
    run_grid(tmp_path / "m.csv", "1.nir", None, tmp_path / "g.json")
    tif.write_bytes(data[: len(data) // 2])  # the header survives, the pixels do not
    with pytest.raises(CostackError, match=r"^assets: 1.nir: cannot read .*nir.tif"):
        run_colocate(tmp_path / "m.csv", tmp_path / "g.json", "1.nir", tmp_path / "o.tif")
    assert not (tmp_path / "o.tif").exists()
    assert not list(tmp_path.glob(".o.tif.*"))


def test_temporaries_left_by_a_killed_job_are_removed(tmp_path):
    """SIGKILL leaves .NAME.XXXX.tmp beside an output; the next write of it removes them."""
    out = tmp_path / "flow" / "2.tif"
    out.parent.mkdir()
    stale = out.parent / ".2.tif.ab12cd.tmp"
    stale.write_bytes(b"half a raster")
    other = out.parent / ".3.tif.ab12cd.tmp"  # another output's: left alone
    other.write_bytes(b"x")
    with atomic_path(out) as tmp:
        Path(tmp).write_bytes(b"whole")
    assert out.read_bytes() == b"whole" and not stale.exists() and other.exists()


def test_unwritable_results_fail_the_job_with_one_line(tmp_path, capsys):
    """A results folder that cannot be written (here a path under the read-only sysfs): one
    line and exit 1, whatever the user (root included)."""
    from costack.io.rasters import write_float32
    from costack.jobs import run_step

    grid = SimpleNamespace(height=4, width=4, crs=CRS.from_epsg(32631), transform=T)
    fake = SimpleNamespace(log=[str(tmp_path / "job.log")], rule="colocate_asset")
    with pytest.raises(SystemExit) as stop:
        run_step(fake, lambda: write_float32("/sys/costack-test/o.tif", np.zeros((4, 4)), grid))
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert err.count("costack: error: colocate_asset:") == 1 and "writable" in err


@pytest.mark.workflow
def test_demo_verify_and_a_corrupted_cog(demo_run, tmp_path):
    stack = tmp_path / "stack"
    shutil.copytree(demo_run / "results" / "stack", stack)
    item = stack / "costack-demo.json"
    ok = subprocess.run([*CLI, "verify", str(item)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    cog = stack / "2.nir.tif"
    data = bytearray(cog.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte in the pixels
    cog.write_bytes(bytes(data))
    bad = subprocess.run([*CLI, "verify", str(item)], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "2.nir: ./2.nir.tif does not match its file:checksum" in bad.stderr
    assert "1 published file(s) differ" in _one_line(bad)


def test_dry_run_and_unlock_work_while_a_remote_source_is_down(tmp_path):
    """The preflight is cached: once a run has seen the sources, -n and --unlock do not need
    them (a lock left while the server is down can be removed)."""
    www = tmp_path / "www"
    write_raster(www / "nir.tif", scene(), transform=T)
    write_raster(www / "red.tif", scene(seed=3), transform=T)
    write_item(www, "remote", {"nir": {"href": "./nir.tif"}, "red": {"href": "./red.tif"}})
    with loopback_server(www) as (url, _):
        cfg = {"inputs": [f"{url}/item.json"], "assets": "1.nir,1.red", "reference": "1.nir",
               "allowed_sources": ["127.0.0.1"]}  # fmt: skip
        first = run_snakemake(tmp_path / "run", cfg, "-n")
        assert first.returncode == 0, first.stderr[-2000:]
    for extra in (["-n"], ["--unlock"]):
        proc = run_snakemake(tmp_path / "run", cfg, *extra)
        assert proc.returncode == 0, proc.stderr[-2000:]


def test_every_refusal_is_before_any_output(tmp_path):
    """The workflow refuses a bad value at parse time: exit 1, one line, no results folder."""
    cfg = dict(demo_config(), max_displacement=float("inf"))
    proc = run_snakemake(tmp_path / "run", cfg)
    assert proc.returncode != 0
    assert _one_line(proc).startswith("costack: error: max_displacement: inf")
    assert not (tmp_path / "run" / "results").exists()


def test_unlock_refuses_to_remove_a_live_runs_lock(tmp_path):
    import signal

    work = tmp_path / "run"
    work.mkdir()
    (work / "config.yaml").write_text(yaml.safe_dump(demo_config()))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work),
           "--configfile", str(work / "config.yaml"), "--cores", "1"]  # fmt: skip
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    run = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                           start_new_session=True)  # fmt: skip
    try:
        pid_file = work / ".snakemake" / "costack" / "run.pid"
        deadline = time.monotonic() + 120
        while not pid_file.exists() and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.2)
        assert pid_file.exists(), "the run did not start"
        proc = subprocess.run([*cmd, "--unlock"], capture_output=True, text=True, env=env)
        assert proc.returncode != 0
        assert f"a run (pid {run.pid}) is still working" in _one_line(proc)
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=30)
    # killed, it holds the lock no more: unlock works
    proc = subprocess.run([*cmd, "--unlock"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_write_beyond_the_file_size_limit_is_one_line(tmp_path):
    """The file-size limit (RLIMIT_FSIZE) makes writes fail as a full disk does: one line."""
    script = f"""
import resource, signal, sys
import numpy as np
from types import SimpleNamespace
from rasterio.crs import CRS
from rasterio.transform import Affine
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
from costack.io.rasters import write_float32
from costack.jobs import run_step
grid = SimpleNamespace(height=1024, width=1024, crs=CRS.from_epsg(32631),
                       transform=Affine(10, 0, 500000, 0, -10, 5000000))
data = np.random.default_rng(0).random((1024, 1024)).astype("float32")
run_step(SimpleNamespace(log=[], rule="coregister_asset"),
         lambda: write_float32({str(tmp_path / "big.tif")!r}, data, grid))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr[-2000:]
    line = _one_line(proc)
    assert line.startswith("costack: error: coregister_asset:") and "free space" in line
    assert not (tmp_path / "big.tif").exists() and not list(tmp_path.glob(".big.tif.*"))


def test_a_truncated_raster_is_not_whole(tmp_path):
    """verify_raster (run on every raster before it is moved into place) reads the TIFF's block
    offsets and byte counts: an intermediate or a COG cut short by one byte or more is refused,
    a whole one passes."""
    from costack.io.cog import write_cog
    from costack.io.grids import Grid
    from costack.io.rasters import verify_raster, write_float32

    grid = Grid(CRS.from_epsg(32631), T, 600, 700)
    data = np.random.default_rng(0).random((2, 700, 600)).astype("float32")
    write_float32(tmp_path / "flow.tif", data, grid)
    write_cog(tmp_path / "flow.tif", tmp_path / "cog.tif")
    for name, cut in (("flow.tif", 1), ("flow.tif", 50_000), ("cog.tif", 8), ("cog.tif", 50_000)):
        verify_raster(tmp_path / name)
        part = tmp_path / f"cut-{cut}-{name}"
        whole = (tmp_path / name).read_bytes()
        part.write_bytes(whole[:-cut])
        with pytest.raises(Exception, match="not written whole|TIFF|Read|read"):
            verify_raster(part)


def test_listed_assets_named_like_flow_outputs_keep_their_keys(tmp_path):
    """Listed assets 2.confidence and 2.displacement and dataset 2's flow layers all reach the
    item (the flow's are keyed confidence:2 and displacement:2)."""
    from costack.config import parse_config
    from costack.io.cog import write_cog
    from costack.io.rasters import write_float32
    from costack.stages.catalog import run_catalog
    from costack.stages.discover import run_discover
    from costack.stages.grid import run_grid

    t2 = Affine(10, 0, 500_000, 0, -10, 5_000_000)
    write_raster(tmp_path / "d1" / "nir.tif", scene(64, 64, 1), transform=T)
    for name in ("confidence", "displacement"):
        write_raster(tmp_path / "d2" / f"{name}.tif", scene(64, 64, 2), transform=t2)
    i1 = write_item(tmp_path / "d1", "d1", {"nir": {"href": "./nir.tif"}})
    i2 = write_item(tmp_path / "d2", "d2", {k: {"href": f"./{k}.tif"} for k in
                                           ("confidence", "displacement")})  # fmt: skip
    cfg = {"inputs": [str(i1), str(i2)], "assets": "1.nir,2.confidence,2.displacement",
           "reference": "1.nir"}  # fmt: skip
    run_discover(parse_config(cfg), tmp_path / "m.csv")
    grid = run_grid(tmp_path / "m.csv", "1.nir", None, tmp_path / "g.json")
    cogs = {}
    for key in ("1.nir", "2.confidence", "2.displacement"):
        write_float32(tmp_path / f"{key}.g.tif", scene(64, 64, 3), grid)
        write_cog(tmp_path / f"{key}.g.tif", tmp_path / "stack" / f"{key}.tif")
        cogs[key] = tmp_path / "stack" / f"{key}.tif"
    write_float32(tmp_path / "flow.tif", np.zeros((2, 64, 64)), grid)
    write_cog(tmp_path / "flow.tif", tmp_path / "stack" / "2-displacement.tif")
    write_float32(tmp_path / "conf.tif", np.ones((64, 64)), grid)
    write_cog(tmp_path / "conf.tif", tmp_path / "stack" / "2-confidence.tif")
    (tmp_path / "flow.json").write_text(json.dumps({"mode": "efolki"}))
    stack = tmp_path / "stack"
    flows = {2: (stack / "2-displacement.tif", stack / "2-confidence.tif", tmp_path / "flow.json")}
    run_catalog(tmp_path / "m.csv", tmp_path / "g.json", cogs, "1.nir", "x",
                tmp_path / "catalog.json", stack / "x.json", flows=flows)  # fmt: skip
    keys = set(json.loads((tmp_path / "stack" / "x.json").read_text())["assets"])
    assert keys == {"1.nir", "2.confidence", "2.displacement", "displacement:2", "confidence:2"}


def test_publishing_links_whole_cogs_or_leaves_none(tmp_path, monkeypatch):
    """The catalog step publishes the COGs of results/cog into the item's folder: hard links
    where the file system has them, whole copies where it has not; a failed verdict publishes
    nothing, and an item that cannot be written takes its published COGs away with it."""
    from costack.config import parse_config
    from costack.io.cog import write_cog
    from costack.io.rasters import write_float32
    from costack.stages import catalog
    from costack.stages.discover import run_discover
    from costack.stages.grid import run_grid

    write_raster(tmp_path / "d1" / "nir.tif", scene(64, 64, 1), transform=T)
    write_raster(tmp_path / "d2" / "nir.tif", scene(64, 64, 2), transform=T)
    items = [write_item(tmp_path / d, d, {"nir": {"href": "./nir.tif"}}) for d in ("d1", "d2")]
    cfg = {"inputs": [str(i) for i in items], "assets": "1.nir,2.nir", "reference": "1.nir"}
    run_discover(parse_config(cfg), tmp_path / "m.csv")
    grid = run_grid(tmp_path / "m.csv", "1.nir", None, tmp_path / "g.json")
    staged = tmp_path / "cog"
    cogs = {}
    for key in ("1.nir", "2.nir"):
        write_float32(tmp_path / f"{key}.g.tif", scene(64, 64, 3), grid)
        write_cog(tmp_path / f"{key}.g.tif", staged / f"{key}.tif")
        cogs[key] = staged / f"{key}.tif"
    write_float32(tmp_path / "flow.tif", np.zeros((2, 64, 64)), grid)
    write_cog(tmp_path / "flow.tif", staged / "2-displacement.tif")
    write_float32(tmp_path / "conf.tif", np.ones((64, 64)), grid)
    write_cog(tmp_path / "conf.tif", staged / "2-confidence.tif")
    (tmp_path / "flow.json").write_text(json.dumps({"mode": "efolki"}))
    flow_json = tmp_path / "flow.json"
    flows = {2: (staged / "2-displacement.tif", staged / "2-confidence.tif", flow_json)}
    names = {"1.nir.tif", "2.nir.tif", "2-displacement.tif", "2-confidence.tif"}

    def run(stack: Path, qc: Path | None = None) -> None:
        catalog.run_catalog(tmp_path / "m.csv", tmp_path / "g.json", cogs, "1.nir", "x",
                            stack.parent / "catalog.json", stack / "x.json", flows=flows,
                            qc_json=qc, publish_dir=stack)  # fmt: skip

    failed = tmp_path / "summary.json"
    failed.write_text(json.dumps({"2": {"verdict": "fail", "reasons": ["no evidence"]}}))
    with pytest.raises(CostackError, match="registration"):
        run(tmp_path / "refused" / "stack", failed)
    assert not (tmp_path / "refused").exists()
    run(tmp_path / "linked" / "stack")
    stack = tmp_path / "linked" / "stack"
    assert {p.name for p in stack.glob("*.tif")} == names
    assert all((stack / n).samefile(staged / n) for n in names)
    # one date for all: no published COG (its staged twin) is newer than another (Snakemake)
    dates = {(stack / n).stat().st_mtime_ns for n in names}
    assert len(dates) == 1
    # ... the file system's own date, never after the item and catalog written after it
    date = dates.pop()
    assert (stack / "x.json").stat().st_mtime_ns >= date
    assert (stack.parent / "catalog.json").stat().st_mtime_ns >= date
    item = json.loads((stack / "x.json").read_text())
    assert item["assets"]["1.nir"]["href"] == "./1.nir.tif"

    def no_links(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(catalog.os, "link", no_links)
    run(tmp_path / "copied" / "stack")
    stack = tmp_path / "copied" / "stack"
    assert {p.name for p in stack.glob("*.tif")} == names
    for n in names:
        assert not (stack / n).samefile(staged / n)
        assert (stack / n).read_bytes() == (staged / n).read_bytes()

    def no_item(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(catalog, "_write_item", no_item)
    with pytest.raises(OSError, match="No space"):
        run(tmp_path / "full" / "stack")
    assert list((tmp_path / "full" / "stack").iterdir()) == []
    assert {p.name for p in staged.glob("*.tif")} == names  # the staged COGs stay


def test_a_full_filesystem_fails_colocation_with_one_line(tmp_path):
    """A real full filesystem (a 300 kB tmpfs; needs root): the streamed co-location's scratch
    files and output hit ENOSPC; one line naming the job and the fix, nothing left behind."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(disk)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode()[:200]}")
    try:
        src = write_raster(tmp_path / "noise.tif",
                           np.random.default_rng(0).random((1024, 1024)).astype("float32"),
                           transform=T)  # fmt: skip
        script = f"""
from types import SimpleNamespace
from rasterio.crs import CRS
from rasterio.transform import Affine
from costack.stages.colocate import colocate_asset
from costack.io.grids import Grid
from costack.jobs import run_step
grid = Grid(CRS.from_epsg(32631), Affine(10, 0, 500000, 0, -10, 5000000), 1024, 1024)
out = {str(disk / "1.nir.tif")!r}
run_step(SimpleNamespace(log=[], rule="colocate_asset", output=[out]),
         lambda: colocate_asset({str(src)!r}, grid, out))
"""
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        assert proc.returncode == 1, proc.stderr[-2000:]
        line = _one_line(proc)
        assert line.startswith(
            f"costack: error: colocate_asset: no space left on the device of {disk}"
        )
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_flow_whose_confidence_cannot_be_written_leaves_no_flow(tmp_path, capsys):
    """The flow and its confidence are written on two threads: when one cannot be written (the
    confidence under the read-only sysfs), the step fails with one line and leaves neither."""
    from costack.cli import main
    from costack.io.rasters import write_float32

    grid = SimpleNamespace(height=96, width=96, crs=CRS.from_epsg(32631), transform=T)
    img = np.random.default_rng(3).random((96, 96)).astype(np.float32)
    write_float32(tmp_path / "ref.tif", img, grid)
    write_float32(tmp_path / "sec.tif", np.roll(img, 1, axis=1), grid)
    out = tmp_path / "flow.tif"
    code = main(["flow", str(tmp_path / "ref.tif"), str(tmp_path / "sec.tif"), str(out),
                 "--confidence", "/sys/costack-test/c.tif"])  # fmt: skip
    assert code == 2
    assert capsys.readouterr().err.count("costack: error: flow:") == 1
    assert not out.exists() and not list(tmp_path.glob(".flow.tif.*"))


def test_the_flow_memory_estimate_covers_a_sar_optical_flow(tmp_path):
    """The plan's in-memory flow estimate (GEFolki's path, the larger: two starts and the CFOG
    comparisons) is above the peak resident memory of a real `costack flow --mode gefolki`
    process (1000x1000: 0.55 GB measured, 0.81 GB estimated)."""
    from costack.io.rasters import write_float32
    from costack.plan import FLOW_BASE_BYTES, FLOW_BYTES_PER_PIXEL

    n = 1000
    grid = SimpleNamespace(height=n, width=n, crs=CRS.from_epsg(32631), transform=T)
    yy, xx = np.mgrid[0:n, 0:n]
    img = (np.sin(xx / 17.0) * np.cos(yy / 23.0)).astype(np.float32)
    speckle = np.random.default_rng(2).gamma(4.0, 0.25, (n, n)).astype(np.float32)
    write_float32(tmp_path / "ref.tif", img, grid)
    write_float32(tmp_path / "sec.tif", -np.roll(img, 2, axis=1) * speckle, grid)
    hwm = tmp_path / "hwm.txt"
    wrap = ("import runpy, sys\nout, sys.argv = sys.argv[1], ['costack', *sys.argv[2:]]\n"
            "try:\n    runpy.run_module('costack.cli', run_name='__main__')\nfinally:\n"
            "    open(out, 'w').write(next(x.split()[1] for x in open('/proc/self/status')"
            " if x.startswith('VmHWM')))\n")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", wrap, str(hwm), "flow", str(tmp_path / "ref.tif"),
                           str(tmp_path / "sec.tif"), str(tmp_path / "f.tif"), "--mode",
                           "gefolki"], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak = int(hwm.read_text()) * 1024
    assert peak < FLOW_BASE_BYTES + FLOW_BYTES_PER_PIXEL * n * n, peak


def test_a_jobs_parallel_loops_follow_its_threads():
    """run_step gives numba's parallel loops the rule's threads (numba would otherwise run one
    thread per core of the machine in every job, the one-core rules too)."""
    script = """
import numba
from types import SimpleNamespace
from costack.jobs import run_step
seen = []
run_step(SimpleNamespace(log=[], rule="coregister_asset", threads=1),
         lambda: seen.append(numba.get_num_threads()))
print(seen[0], numba.config.NUMBA_NUM_THREADS)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "NUMBA_NUM_THREADS": "2"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["1", "2"]
