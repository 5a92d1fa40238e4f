"""Change-aware registration (issue 35): changed, masked and unsupported areas take their
displacement from the stable surroundings; where they did is published."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from conftest import SHARED_DATA, write_raster
from rasterio.transform import Affine
from scipy import ndimage

from costack.registration.evaluation import displace, interior
from costack.stages.flow import run_flow

UAVSAR = SHARED_DATA / "radar_optical_uavsar"
needs_optical = pytest.mark.skipif(
    not UAVSAR.exists(), reason="../shared/data (UAVSAR orthophoto) absent"
)
SIZE = 384
TRANSFORM = Affine(10, 0, 500000, 0, -10, 5000000)


def optical(size: int = SIZE) -> np.ndarray:
    """A crop of the real UAVSAR orthophoto's luminance."""
    path = next(UAVSAR.glob("*_optique.tif"))
    with rasterio.open(path) as src:
        return src.read(window=((200, 200 + size), (200, 200 + size))).astype(np.float32).mean(0)


def field(shape):
    """Yan-like affine (5.4, -2.1 px, linear terms 1e-3) plus a 0.3 px / 1000 px sinusoid."""
    cy, cx = shape[0] / 2.0, shape[1] / 2.0

    def e(col, row):
        x, y = col - cx, row - cy
        ex = 5.4 + 1e-3 * x - 6e-4 * y + 0.3 * np.sin(2 * np.pi * (col + 0.5 * row) / 1000)
        ey = -2.1 + 8e-4 * x + 5e-4 * y + 0.3 * np.cos(2 * np.pi * (row - 0.3 * col) / 1300)
        return ex, ey

    return e


def flood(img: np.ndarray, fraction: float = 0.12, seed: int = 1):
    """The secondary under the field with blobs of flat dark water (in its own geometry), the
    truth, and the flood's footprint seen from the reference grid."""
    sec, truth = displace(img, field(img.shape), order=5)
    sec = np.where(np.isfinite(sec), sec, 0).astype(np.float32)
    rng = np.random.default_rng(seed)
    n = ndimage.gaussian_filter(rng.standard_normal(img.shape), 20.0, mode="wrap")
    water = n > np.quantile(n, 1 - fraction)
    lo = np.percentile(img, 2)
    sec = np.where(water, lo + rng.normal(0, 1.5, img.shape), sec).astype(np.float32)
    h, w = img.shape
    row, col = np.mgrid[0:h, 0:w].astype(np.float64)
    seen = ndimage.map_coordinates(water.astype(np.float32), [row + truth[1], col + truth[0]],
                                   order=1) > 0.5  # fmt: skip
    return sec, truth, seen


def _pair(tmp_path, ref, sec):
    write_raster(tmp_path / "ref.tif", ref, transform=TRANSFORM)
    write_raster(tmp_path / "sec.tif", sec, transform=TRANSFORM)
    return tmp_path / "ref.tif", tmp_path / "sec.tif"


def _flow(path):
    with rasterio.open(path) as src:
        return src.read().astype(np.float64)


@needs_optical
def test_flow_holds_a_flood_to_its_surroundings(tmp_path):
    """`costack flow`'s defaults over a flat flood (12 % of a real orthophoto): inside it the
    displacement is the surroundings' (mean <= 0.05 px, <= 1 % beyond 0.5 px, as the issue
    asks); unheld, the flow bends the flood (the same run with hold_changes=False is several
    times worse). The evidence: the share in the JSON and the support raster's zeros."""
    img = optical()
    sec, truth, water = flood(img)
    ref_tif, sec_tif = _pair(tmp_path, img, sec)
    inside = interior(img.shape, 16) & water
    errors = {}
    for hold in (True, False):
        out = tmp_path / f"flow-{hold}.tif"
        stats = run_flow(ref_tif, sec_tif, out, tmp_path / f"c-{hold}.tif",
                         stats_json=tmp_path / f"f-{hold}.json",
                         support_tif=tmp_path / f"s-{hold}.tif", hold_changes=hold)  # fmt: skip
        f = _flow(out)
        errors[hold] = np.hypot(f[0] - truth[0], f[1] - truth[1])[inside]
        assert json.loads((tmp_path / f"f-{hold}.json").read_text())["change"] == stats["change"]
    held = errors[True]
    assert held.mean() <= 0.05, held.mean()
    assert (held > 0.5).mean() <= 0.01
    assert errors[False].mean() > 3 * held.mean()
    change = json.loads((tmp_path / "f-True.json").read_text())["change"]
    assert change["held"] is True
    # the flood (about 12 % of the overlap, widened by a window) is what was held
    assert 0.08 < change["unsupported_fraction"] < 0.4, change
    with rasterio.open(tmp_path / "s-True.tif") as src:
        support = src.read(1)
        assert "surroundings" in src.tags()["costack_support"]
    assert (support[inside] < 0.5).mean() > 0.9
    # away from the flood (its widening and the blend: about 30 px) and the border (the zeros
    # the field brings in): the data's own
    for px, least in ((32, 0.5), (48, 1.0)):
        far = interior(img.shape, 32) & ~ndimage.binary_dilation(water, iterations=px)
        assert (support[far] >= least).mean() > 0.99
    unheld = json.loads((tmp_path / "f-False.json").read_text())["change"]
    assert unheld["held"] is False and "unsupported_fraction" not in unheld


@needs_optical
def test_stable_scene_is_not_held(tmp_path):
    """No change: nothing (or nearly nothing) is taken from the surroundings and the flow is
    today's to 0.001 px."""
    img = optical()
    sec, truth = displace(img, field(img.shape), order=5)
    sec = np.where(np.isfinite(sec), sec, 0).astype(np.float32)
    ref_tif, sec_tif = _pair(tmp_path, img, sec)
    mask = interior(img.shape, 16)
    means = {}
    for hold in (True, False):
        stats = run_flow(ref_tif, sec_tif, tmp_path / f"{hold}.tif", hold_changes=hold,
                         support_tif=tmp_path / f"{hold}.support.tif")  # fmt: skip
        f = _flow(tmp_path / f"{hold}.tif")
        means[hold] = np.hypot(f[0] - truth[0], f[1] - truth[1])[mask].mean()
        if hold:
            # the zeros the field brings in at the border only (about 2 % of the image)
            assert stats["change"]["unsupported_fraction"] < 0.15, stats["change"]
            with rasterio.open(tmp_path / f"{hold}.support.tif") as src:
                assert (src.read(1)[interior(img.shape, 32)] == 1).all()
    assert stats["change"]["held"] is False
    assert means[True] <= means[False] + 0.001, means


@needs_optical
def test_tiled_flow_holds_each_tile(tmp_path):
    """Scene-sized grids flow by tiles: each tile (with its halo) is held to its surroundings
    as the in-memory flow is, and the support raster and share are written likewise."""
    from costack.registration.folki import FlowParams
    from costack.stages._tiled import flow_tiled

    img = optical()
    sec, truth, water = flood(img)
    ref_tif, sec_tif = _pair(tmp_path, img, sec)
    inside = interior(img.shape, 16) & water
    params = FlowParams(mode="efolki")
    errors = {}
    for hold in (True, False):
        stats = flow_tiled(ref_tif, sec_tif, tmp_path / "f.tif", tmp_path / "c.tif", params,
                           tile=192, coarse_factor=2, support_tif=tmp_path / f"s{hold}.tif",
                           hold_changes=hold)  # fmt: skip
        f = _flow(tmp_path / "f.tif")
        errors[hold] = np.hypot(f[0] - truth[0], f[1] - truth[1])[inside].mean()
    assert stats["tiles"] == 4 and "unsupported_fraction" not in stats
    assert errors[True] <= 0.05 and errors[False] > 3 * errors[True], errors
    with rasterio.open(tmp_path / "sTrue.tif") as src:
        assert (src.read(1)[inside] < 0.5).mean() > 0.9
    with rasterio.open(tmp_path / "sFalse.tif") as src:
        assert (src.read(1) == 1).all()


def test_demo_publishes_where_registration_came_from_the_surroundings(demo_run):
    """The demo run: each secondary's support raster is a COG asset of the item with the role
    ``registration-support`` and a description; its share is in the item, the QC summary and
    the report's table; it agrees with the raster itself."""
    import pystac

    from costack.io.cog import is_valid_cog

    res = demo_run / "results"
    item = pystac.Item.from_file(str(res / "stack/costack-demo.json"))
    summary = json.loads((res / "qc/summary.json").read_text())
    for n in ("2", "3"):
        asset = item.assets[f"support:{n}"]
        assert asset.roles == ["metadata", "registration-support"]
        assert "stable surroundings" in asset.extra_fields["description"]
        assert is_valid_cog(asset.get_absolute_href())
        share = json.loads((res / f"flow/{n}.json").read_text())["change"][
            "unsupported_fraction"]  # fmt: skip
        assert asset.extra_fields["costack:unsupported_fraction"] == share
        reg = item.properties["costack:registration"]["datasets"][n]
        assert reg["change"]["unsupported_fraction"] == share
        assert summary[n]["unsupported_fraction"] == share
        with rasterio.open(asset.get_absolute_href()) as src:
            support = src.read(1)
            assert src.tags()["costack_flow_secondary"].startswith(f"{n}.")
        with (
            rasterio.open(res / "colocated/1.nir.tif") as a,
            rasterio.open(next((res / "colocated").glob(f"{n}.*.tif"))) as b,
        ):
            overlap = np.isfinite(a.read(1)) & np.isfinite(b.read(1))
        assert abs((support[overlap] < 0.5).mean() - share) < 0.02
        assert share < 0.5 and summary[n]["verdict"] != "fail"
