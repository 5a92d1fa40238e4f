"""The QC stage: residual misregistration measured the same way in memory and by blocks."""

import numpy as np
import pytest
from conftest import scene
from rasterio.crs import CRS
from rasterio.transform import Affine

from costack.io.grids import Grid
from costack.io.rasters import write_float32
from costack.registration.evaluation import displace
from costack.stages.qc import run_qc


@pytest.mark.parametrize("multimodal", [False, True])
def test_qc_by_strips_matches_the_whole_grid(tmp_path, multimodal):
    """A 700 x 420 pair with a known 0.4 px shift before and a NaN band across a block border:
    the blocks (256 x 256 px, 3 x 2 of them, 96 px margins) re-match the same lattice points to
    the same residuals as the whole grid in memory."""
    h, w = 700, 420
    ref = scene(h, w, seed=3) + 3.0
    grid = Grid(CRS.from_epsg(32631), Affine(10, 0, 500_000, 0, -10, 5_000_000), w, h)
    before, _ = displace(ref, lambda c, r: (np.full_like(c, 0.4), np.full_like(r, -0.3)))
    before[250:262, :] = np.nan  # nodata across the first strip's lower border
    after = ref.copy()
    after[500:, 300:] = np.nan
    for name, a in (("ref", ref), ("before", before), ("after", after)):
        write_float32(tmp_path / f"{name}.tif", a.astype(np.float32), grid)
    args = [tmp_path / f"{n}.tif" for n in ("ref", "before", "after")]
    whole = run_qc(*args, tmp_path / "whole.json", multimodal=multimodal)
    strips = run_qc(*args, tmp_path / "strips.json", multimodal=multimodal,
                    max_in_memory_pixels=0, block_bytes=1)  # fmt: skip
    assert whole["before"]["figure"] == "measured" and whole["after"]["figure"] == "measured"
    for when in ("before", "after"):
        assert strips[when]["points"] == whole[when]["points"]
        for k, v in whole[when]["pixels"].items():
            assert strips[when]["pixels"][k] == pytest.approx(v, abs=2e-4), (when, k)
    assert strips["coverage"] == whole["coverage"] and strips["overlap"] == whole["overlap"]
    assert whole["before"]["pixels"]["median"] == pytest.approx(0.5, abs=0.1)


def test_report_figures_of_a_large_grid_come_from_reduced_reads(tmp_path, monkeypatch):
    """Beyond FIGURE_MAX_SIDE the composites find their windows on a reduced read and read
    only those at full resolution; the flow maps are drawn reduced. Same figures' kind, no
    whole-grid read (here the limit is lowered to 128 px on a 400 x 300 grid)."""
    from costack.stages import report

    h, w = 400, 300
    ref = scene(h, w, seed=5) + 3.0
    ref[:, :40] = np.nan
    grid = Grid(CRS.from_epsg(32631), Affine(10, 0, 500_000, 0, -10, 5_000_000), w, h)
    for name, a in (("ref", ref), ("sec", ref + 0.1)):
        write_float32(tmp_path / f"{name}.tif", a.astype(np.float32), grid)
    flow = np.stack([np.full((h, w), 0.3, np.float32), np.full((h, w), -0.2, np.float32)])
    write_float32(tmp_path / "flow.tif", flow, grid)
    write_float32(tmp_path / "conf.tif", np.full((h, w), 0.8, np.float32), grid)
    seen = []
    real = report.high_contrast_windows

    def spy(img, size, **kw):
        seen.append(img.shape)
        return real(img, size, **kw)

    monkeypatch.setattr(report, "high_contrast_windows", spy)
    monkeypatch.setattr(report, "FIGURE_MAX_SIDE", 128)
    ref_tif, sec_tif = tmp_path / "ref.tif", tmp_path / "sec.tif"
    report.plot_composites(ref_tif, sec_tif, sec_tif, tmp_path / "c.png", "test")
    report.plot_flow(tmp_path / "flow.tif", tmp_path / "conf.tif", tmp_path / "f.png", "test")
    assert seen == [(100, 75)]  # reduced by 4: the windows were searched on 100 x 75 px
    assert (tmp_path / "c.png").stat().st_size > 5_000
    assert (tmp_path / "f.png").stat().st_size > 5_000


def _pair(tmp_path, h, w, shift_right=0.4):
    """ref, before (displaced by 0.2 px on the left two thirds, ``shift_right`` px on the right
    third, a NaN band), after (the ref with a NaN corner), a confidence raster 0 on the right
    third, 1 elsewhere."""
    ref = scene(h, w, seed=3) + 3.0
    grid = Grid(CRS.from_epsg(32631), Affine(10, 0, 500_000, 0, -10, 5_000_000), w, h)

    def field(c, r):
        dx = np.where(c < 2 * w / 3, 0.2, shift_right)
        return dx, np.full_like(r, -0.1)

    before, _ = displace(ref, field)
    before[250:262, :] = np.nan
    after = ref.copy()
    after[500:, 300:] = np.nan
    conf = np.where(np.arange(w)[None, :] < 2 * w / 3, 1.0, 0.0) * np.ones((h, 1))
    for name, a in (("ref", ref), ("before", before), ("after", after), ("conf", conf)):
        write_float32(tmp_path / f"{name}.tif", a.astype(np.float32), grid)
    return [tmp_path / f"{n}.tif" for n in ("ref", "before", "after")], grid, ref, before


@pytest.mark.parametrize("multimodal", [False, True])
def test_sampled_windows_rematch_as_the_whole_grid(tmp_path, multimodal):
    """Each sampled point re-matched in its own window gives the residual the whole grid in
    memory gives at that point (the window's margin covers the filters' reach)."""
    from costack.stages.qc import _residuals_sampled, residual_misregistration

    paths, grid, ref, before = _pair(tmp_path, 700, 420)
    kw = {"multimodal": multimodal, "reference_blur": 0.0 if multimodal else 1.2}
    got = _residuals_sampled(paths, grid, kw, tmp_path / "conf.tif", 60, seed=4)
    assert len(got["before"]) >= 30
    for (rg, cg), shift in zip(got["before_points"][::6], got["before"][::6], strict=True):
        whole = residual_misregistration(ref, before, point_rows=(rg, rg + 1),
                                         point_cols=(cg, cg + 1), **kw)  # fmt: skip
        assert whole.shape == (1, 2)
        assert shift == pytest.approx(whole[0], abs=1e-4), (rg, cg)


def test_sampled_qc_estimates_the_whole_lattice(tmp_path):
    """A residual of 0.2 px on the left two thirds and 0.9 px on the right third, where the
    flow's confidence is 0: the sample (150 of 448 points) puts about 2/3 of its points on the
    right, and its figures weighted by 1 / pi are those of the whole lattice within 10 %
    (unweighted, the mean would read about 0.2 px too high); the record says how it was
    drawn."""
    paths, _, _, _ = _pair(tmp_path, 700, 420, shift_right=0.9)
    whole = run_qc(*paths, tmp_path / "whole.json", multimodal=False, sample_points=0)
    part = run_qc(*paths, tmp_path / "part.json", multimodal=False, sample_points=150,
                  confidence_tif=tmp_path / "conf.tif")  # fmt: skip
    assert "sampling" not in whole and part["sampling"]["weighted_by_confidence"]
    assert part["sampling"]["sampled"] == 150 and part["sampling"]["lattice_points"] > 400
    b, p = whole["before"]["pixels"], part["before"]["pixels"]
    assert b["mean"] == pytest.approx(0.45, abs=0.1) and b["median"] < 0.3 < b["p90"]
    for k in ("mean", "median", "p90"):
        assert p[k] == pytest.approx(b[k], rel=0.1), k
    assert part["coverage"] == whole["coverage"] and part["overlap"] == whole["overlap"]
    assert part["after"]["pixels"]["median"] < 0.05


def test_a_sample_with_too_few_matches_is_drawn_again_larger(tmp_path, monkeypatch):
    """Fewer than QC_SAMPLE_MIN_MEASURED re-matched points (here the minimum raised to 100 for
    a sample of 40): the sample is drawn twice as large until enough match (40 -> 80 -> 160)."""
    from costack.stages import qc

    monkeypatch.setattr(qc, "QC_SAMPLE_MIN_MEASURED", 100)
    paths, _, _, _ = _pair(tmp_path, 700, 420)
    got = run_qc(*paths, tmp_path / "part.json", multimodal=False, sample_points=40)
    assert got["sampling"]["size"] == 40 and got["sampling"]["drawn"] == 160
    assert got["sampling"]["sampled"] == 160 and got["before"]["points"] >= 100
