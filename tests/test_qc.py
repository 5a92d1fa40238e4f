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
