"""Correct or loud: each secondary dataset's registration gets a verdict; a failed one publishes
nothing unless asked to; AOIs that leave too little data are refused or flagged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import REPO, demo_config, run_snakemake
from rasterio.windows import from_bounds
from scipy import ndimage

from costack.io.rasters import read_float32
from costack.registration.tiepoint_model import TiePointModel
from costack.stages.qc import VerdictThresholds, judge

OVERHANG = "POLYGON((6.0 44.46, 6.1 44.46, 6.1 44.52, 6.0 44.52, 6.0 44.46))"
TINY = "POLYGON((5.98 44.44, 5.99 44.44, 5.99 44.441, 5.98 44.441, 5.98 44.44))"


def _measured(points: int, median: float) -> dict:
    return {"points": points, "figure": "measured", "pixels": {"median": median, "mean": median}}


@pytest.mark.parametrize(
    ("qc", "flow", "model", "verdict", "reason"),
    [
        ({"before": _measured(140, 3.0), "after": _measured(250, 0.1), "coverage": 0.85,
          "overlap": 0.85}, {"valid_fraction": 0.85}, {}, "pass", None),
        ({"before": {"points": 0, "figure": "insufficient"}, "after": {"points": 2,
          "figure": "insufficient"}, "overlap": 1}, {}, {}, "fail", "no independent evidence"),
        ({"before": _measured(40, 0.4), "after": _measured(40, 0.8), "overlap": 1}, {}, {},
         "fail", "worse than before"),
        ({"before": _measured(40, 0.01), "after": _measured(40, 0.01), "overlap": 1}, {}, {},
         "pass", None),
        ({"after": _measured(40, 1.5), "overlap": 1}, {}, {}, "fail", "above max_residual_px"),
        ({"after": {"points": 5, "figure": "insufficient"}, "before": _measured(30, 2.0),
          "overlap": 1}, {}, {}, "warn", "QC residual insufficient: 5 re-matched points"),
        ({"after": _measured(40, 0.2), "coverage": 0.07, "overlap": 0.07}, {}, {}, "warn",
         "covers 7.0% of the grid"),
        ({"after": _measured(40, 0.2), "overlap": 0.8}, {"valid_fraction": 0.2}, {}, "fail",
         "flow known on 25% of the overlap"),
        ({"after": _measured(40, 0.2), "overlap": 1}, {"diverged_fraction": 0.3}, {}, "fail",
         "flow diverged on 30%"),
        ({"after": _measured(40, 0.2), "overlap": 1}, {"mean_dx": 3.0, "mean_dy": 0.0},
         {"chosen": "affine", "tiepoints": 50, "mean_shift": [1.0, 0.0]}, "warn",
         "disagree by 2.00 px"),
        ({"after": _measured(40, 0.2), "overlap": 1}, {"change": {"unsupported_fraction": 0.6}},
         {}, "warn", "registered from the stable surroundings on 60% of the overlap"),
        ({"after": _measured(40, 0.2), "overlap": 1}, {"change": {"unsupported_fraction": 0.4}},
         {}, "pass", None),
    ],
)  # fmt: skip
def test_judge(qc, flow, model, verdict, reason):
    got = judge(qc, flow, TiePointModel(model), VerdictThresholds())
    assert got["verdict"] == verdict
    if reason:
        assert any(reason in r for r in got["reasons"]), got["reasons"]
    else:
        assert got["reasons"] == []


def _noise_dataset(folder: Path) -> Path:
    """The demo's 30 m dataset with its rasters replaced by textured noise (same georeference,
    same fill corner): an image that has nothing to do with the reference."""
    src = REPO / "resources" / "demo" / "l8"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    for name in ("B04.tif", "B05.tif"):
        with rasterio.open(src / name) as s:
            profile, data = s.profile, s.read(1)
        noise = ndimage.gaussian_filter(rng.standard_normal(data.shape), 1.5)
        noise = (noise / noise.std() * 0.05 + 0.25).astype(data.dtype)
        if profile.get("nodata") is not None:
            noise[data == profile["nodata"]] = profile["nodata"]
        with rasterio.open(folder / name, "w", **profile) as d:
            d.write(noise, 1)
    shutil.copy(src / "item.json", folder / "item.json")
    return folder / "item.json"


@pytest.mark.workflow
def test_noise_secondary_fails_and_publishes_nothing_then_publishes_flagged(tmp_path):
    cfg = demo_config()
    cfg.update(inputs=[cfg["inputs"][0], str(_noise_dataset(tmp_path / "noise"))],
               assets="1.nir,2.nir", expressions=[], item_id="noise")  # fmt: skip
    work = tmp_path / "run"
    # the catalogue is the target (not the figures of `rule all`): what is checked here
    proc = run_snakemake(work, cfg, "results/catalog.json")
    assert proc.returncode != 0
    line = [x for x in proc.stderr.splitlines() if x.startswith("costack: error: registration")]
    assert line and "dataset 2 (landsat-8 2024-06-14) failed: no independent evidence" in line[0]
    assert "costack: registration of dataset 2 (landsat-8 2024-06-14): fail" in proc.stderr
    assert not (work / "results" / "catalog.json").exists()
    assert not (work / "results" / "stack" / "noise.json").exists()
    summary = json.loads((work / "results" / "qc" / "summary.json").read_text())
    assert summary["2"]["verdict"] == "fail"
    # the overview page is there to say why (written before the refused COGs)
    page = (work / "results" / "report.html").read_text(encoding="utf-8")
    assert "no independent evidence" in page and ">FAIL<" in page
    assert "the catalog step publishes no item" in page
    # asked to, the run publishes it, flagged
    proc = run_snakemake(work, dict(cfg, on_failed_registration="publish"), "results/catalog.json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    item = json.loads((work / "results" / "stack" / "noise.json").read_text())
    assert item["properties"]["costack:verdict"] == "fail"
    assert item["properties"]["costack:qc"]["2"]["verdict"] == "fail"
    assert item["properties"]["costack:qc"]["2"]["reasons"]


@pytest.mark.workflow
def test_overhanging_aoi_keeps_sar_within_a_pixel_and_flags_coverage(tmp_path):
    cfg = demo_config()
    cfg.update(aoi=OVERHANG, assets="1.nir,3.s0_db_c_vv", expressions=[], item_id="overhang",
               on_failed_registration="publish")  # fmt: skip
    work = tmp_path / "run"
    proc = run_snakemake(work, cfg, "results/catalog.json")  # without the figures
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = work / "results"
    flow, grid, _ = read_float32(res / "flow" / "3.tif", band=None)
    with rasterio.open(REPO / "resources" / "demo" / "s1" / "truth.tif") as t:
        win = from_bounds(*grid.bounds, transform=t.transform).round_offsets().round_lengths()
        truth = t.read(window=win, boundless=True, fill_value=np.nan).astype(np.float32)
    sec, _, _ = read_float32(res / "colocated" / "3.s0_db_c_vv.tif")
    err = np.hypot(flow[0] - truth[0], flow[1] - truth[1])
    ok = np.isfinite(err) & np.isfinite(sec)
    assert ok.sum() > 20_000
    assert float(err[ok].mean()) < 1.0  # 7.8 px before the flow worked on the overlap only
    # the registration is right, but the run cannot vouch for it on 7 % of the grid: flagged
    summary = json.loads((res / "qc" / "summary.json").read_text())
    assert summary["3"]["verdict"] in ("warn", "fail")
    assert any("covers 7.9% of the grid" in r for r in summary["3"]["reasons"])
    assert "costack: registration of dataset 3 (sentinel-1a 2024-06-12): " in proc.stderr
    item = json.loads((res / "stack" / "overhang.json").read_text())
    assert item["properties"]["costack:verdict"] == summary["3"]["verdict"]


def test_tiny_aoi_is_refused_before_any_job(tmp_path):
    cfg = dict(demo_config(), aoi=TINY)
    work = tmp_path / "run"
    proc = run_snakemake(work, cfg, "-n")
    assert proc.returncode != 0
    lines = [x for x in proc.stderr.splitlines() if x.startswith("costack: error:")]
    assert len(lines) == 1
    assert lines[0].startswith("costack: error: aoi: the AOI overlaps 1.red over ")
    assert "under 64 px along each axis (min_overlap_px)" in lines[0]
    assert not (work / "results").exists()


def test_inputs_that_no_asset_uses_are_named(tmp_path):
    cfg = dict(demo_config(), assets="1.nir,1.red", expressions=[])
    proc = run_snakemake(tmp_path / "run", cfg, "-n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    warning = [x for x in proc.stderr.splitlines() if x.startswith("costack: warning:")]
    assert len(warning) == 1 and "inputs[2]" in warning[0] and "inputs[3]" in warning[0]
