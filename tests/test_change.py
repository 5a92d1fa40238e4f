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
    from costack.io.rasters import read_float32

    res = demo_run / "results"
    item = pystac.Item.from_file(str(res / "stack/costack-demo.json"))
    summary = json.loads((res / "qc/summary.json").read_text())
    for n in ("2", "3"):
        asset = item.assets[f"support:{n}"]
        assert asset.roles == ["metadata", "registration-support"]
        assert "stable surroundings" in asset.description
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
        ref, _, _ = read_float32(res / "colocated/1.nir.tif")
        sec, _, _ = read_float32(next((res / "colocated").glob(f"{n}.*.tif")))
        overlap = np.isfinite(ref) & np.isfinite(sec)
        assert abs((support[overlap] < 0.5).mean() - share) < 0.02
        assert share < 0.5 and summary[n]["verdict"] != "fail"


STAC_ITEMS = SHARED_DATA / "stac_items"


@pytest.mark.skipif(not STAC_ITEMS.exists(), reason="../shared/data/stac_items absent")
@pytest.mark.parametrize(
    ("stem", "expected"),
    [
        ("earthsearch-landsat-c2-l2", ("qa_pixel", "qa_pixel")),
        ("earthsearch-sentinel-2-c1-l2a", ("scl", "scl")),
        ("earthsearch-sentinel-2-l2a__S2A", ("scl", "scl")),
        ("earthsearch-sentinel-2-l2a__S2B", ("scl", "scl")),
        ("pc-sentinel-2-l2a__S2A", ("SCL", "scl")),
        ("pc-sentinel-2-l2a__S2B", ("SCL", "scl")),
    ],
)
def test_real_items_resolve_their_quality_masks(stem, expected):
    """Each real item's quality layer is found (by key; a COG, not its JP2 twin), with pystac
    as the workflow reads items; an item without one answers None, not an error."""
    import pystac

    from costack.io.masks import find_mask_asset

    path = next(STAC_ITEMS.glob(f"{stem}*.json"))
    item = pystac.Item.from_file(str(path))
    assert find_mask_asset(item.assets, item.id) == expected
    assert find_mask_asset(json.loads(path.read_text())["assets"]) == expected
    others = {k: a for k, a in item.assets.items() if k.lower() not in ("scl", "qa_pixel")}
    if stem.startswith("earthsearch-landsat"):  # by its roles when the key is another's
        assert find_mask_asset({"pq": item.assets["qa_pixel"], **others}) == ("pq", "qa_pixel")
    assert find_mask_asset(others) is None


S2_ITEM = "earthsearch-sentinel-2-c1-l2a__S2B_T20EPT_20250731T131905_L2A.json"


def _clouds(img: np.ndarray, seed: int = 3):
    """The secondary under the field with bright clouds and their shadows (in its own
    geometry), their footprint on the reference grid, and what a Sentinel-2 L2A SCL would say
    of it at 20 m (9/8/10 clouds by opacity, 3 shadows, 4/5 elsewhere)."""
    sec, truth = displace(img, field(img.shape), order=5)
    sec = np.where(np.isfinite(sec), sec, 0).astype(np.float32)
    rng = np.random.default_rng(seed)
    n = ndimage.gaussian_filter(rng.standard_normal(img.shape), 24.0, mode="wrap")
    n /= n.std()
    alpha = ndimage.gaussian_filter(np.clip((n - np.quantile(n, 0.9)) / 0.6, 0, 1), 3.0)
    shadow = 0.6 * np.roll(alpha, (27, 41), axis=(0, 1))
    hi = np.percentile(img, 98)
    sec = (sec * (1 - shadow) * (1 - alpha) + 1.1 * hi * alpha).astype(np.float32)
    h, w = img.shape
    a = alpha.reshape(h // 2, 2, w // 2, 2).mean((1, 3))
    s = shadow.reshape(h // 2, 2, w // 2, 2).mean((1, 3))
    scl = np.full(a.shape, 4, np.uint8)
    scl[s > 0.2] = 3
    scl[a > 0.2] = 10
    scl[a > 0.35] = 8
    scl[a > 0.65] = 9
    row, col = np.mgrid[0:h, 0:w].astype(np.float64)
    hit = ((alpha > 0.05) | (shadow > 0.05)).astype(np.float32)
    under = ndimage.map_coordinates(hit, [row + truth[1], col + truth[0]], order=1) > 0.5
    return sec, truth, under, scl


def _localised_s2_item(tmp_path, scl: np.ndarray):
    """The real Sentinel-2 L2A item, its scl asset pointed at a GeoTIFF made as the item
    declares it (EPSG:32720, 20 m from the tile's origin, uint8, nodata 0)."""
    import pystac

    item = pystac.Item.from_file(str(STAC_ITEMS / S2_ITEM))
    asset = item.assets["scl"]
    t = asset.extra_fields["proj:transform"]
    write_raster(tmp_path / "SCL.tif", scl, crs=rasterio.crs.CRS.from_epsg(32720),
                 transform=Affine(*t[:6]), nodata=0)  # fmt: skip
    asset.href = str(tmp_path / "SCL.tif")
    return item


@needs_optical
@pytest.mark.skipif(not STAC_ITEMS.exists(), reason="../shared/data/stac_items absent")
def test_item_scl_mask_holds_the_clouds(tmp_path):
    """Clouds and shadows over 15 % of a real orthophoto, with the SCL the real Sentinel-2 L2A
    item's ``scl`` asset provides: found by key, co-located once (nearest) on a 10 m grid, its
    cloud, cirrus and shadow classes excluded; with it the flow under the clouds is <= 0.05 px
    (the issue's figure), and the stacked secondary itself is untouched (a mask never alters
    values)."""
    from costack.io.grids import Grid
    from costack.io.masks import Exclusions, find_mask_asset
    from costack.stages.colocate import run_colocate_mask

    img = optical()
    sec, truth, under, scl = _clouds(img)
    item = _localised_s2_item(tmp_path, scl)
    key, kind = find_mask_asset(item.assets, item.id)
    t = item.assets["scl"].extra_fields["proj:transform"]
    grid = Grid(rasterio.crs.CRS.from_epsg(32720), Affine(10, 0, t[2], 0, -10, t[5]), SIZE, SIZE)
    grid.save(tmp_path / "grid.json")
    info = run_colocate_mask(tmp_path / "grid.json", tmp_path / "mask.tif", 2,
                             {"key": key, "kind": kind,
                              "href": item.assets[key].get_absolute_href(),
                              "item_href": str(tmp_path / "item.json")})  # fmt: skip
    with rasterio.open(tmp_path / "mask.tif") as src:
        mask = src.read(1)
        assert src.tags()["costack_mask_kind"] == "binary"
    expected = np.repeat(np.repeat(np.isin(scl, (0, 1, 3, 8, 9, 10, 11)), 2, 0), 2, 1)
    np.testing.assert_array_equal(mask.astype(bool), expected)
    assert info["item"]["excluded_fraction"] == pytest.approx(expected.mean(), abs=1e-4)
    for name, arr in (("ref.tif", img), ("sec.tif", sec)):
        write_raster(tmp_path / name, arr, crs=grid.crs, transform=grid.transform)
    before = (tmp_path / "sec.tif").read_bytes()
    inside = interior(img.shape, 16) & under
    errors = {}
    for masked in (True, False):
        masks = Exclusions(secondary=(str(tmp_path / "mask.tif"), "auto")) if masked else None
        stats = run_flow(tmp_path / "ref.tif", tmp_path / "sec.tif", tmp_path / "f.tif",
                         masks=masks)  # fmt: skip
        f = _flow(tmp_path / "f.tif")
        errors[masked] = np.hypot(f[0] - truth[0], f[1] - truth[1])[inside]
        assert stats["change"]["masks"]["secondary"] is masked
    assert errors[True].mean() <= 0.05, errors[True].mean()
    assert errors[True].mean() < errors[False].mean()
    assert stats["change"].get("masked_fraction", 0) == 0
    assert (tmp_path / "sec.tif").read_bytes() == before


def test_unreadable_mask_is_one_line_and_absent_is_none(tmp_path, capsys):
    """A mask that cannot be read stops `costack flow` with one line naming it, before any
    output; no mask given is no mask (not an error)."""
    from conftest import scene

    from costack.cli import main

    img = scene(96, 96)
    for name, arr in (("ref.tif", img), ("sec.tif", np.roll(img, 1, 1))):
        write_raster(tmp_path / name, arr, transform=TRANSFORM)
    (tmp_path / "bad.tif").write_bytes(b"II*\x00 not a tiff")
    out = tmp_path / "o.tif"
    argv = ["flow", str(tmp_path / "ref.tif"), str(tmp_path / "sec.tif"), str(out)]
    assert main([*argv, "--mask-secondary", str(tmp_path / "bad.tif")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("costack: error: mask (secondary):"), err
    assert not out.exists() and not (tmp_path / "o.support.tif").exists()
    assert main([*argv, "--exclude", "POINT(3 45)"]) == 2
    assert capsys.readouterr().err.startswith("costack: error: --exclude: ")
    assert main(argv) == 0 and out.exists()


def test_mask_defaults_are_one_source():
    """The schema's defaults, the CLI's and the code's classes and bits are the same."""
    from costack.cli import build_parser
    from costack.config import load_schema
    from costack.io.masks import QA_PIXEL_EXCLUDE_BITS, SCL_EXCLUDE

    props = load_schema()["properties"]
    assert tuple(props["mask_scl_classes"]["default"]) == SCL_EXCLUDE
    assert tuple(props["mask_qa_pixel_bits"]["default"]) == QA_PIXEL_EXCLUDE_BITS
    assert props["item_masks"]["default"] is True and props["flow_hold_changes"]["default"]
    args = build_parser().parse_args(["flow", "a.tif", "b.tif", "o.tif"])
    assert args.mask_scl_classes == ",".join(map(str, SCL_EXCLUDE))
    assert args.mask_qa_pixel_bits == ",".join(map(str, QA_PIXEL_EXCLUDE_BITS))
    assert args.no_hold is False


@pytest.mark.workflow
def test_workflow_user_mask_polygon(demo_run, tmp_path):
    """The demo with a user's polygon over part of dataset 2 (config ``masks``): the mask is
    co-located once (results/masks/2.tif) and reaches the tie points', flow's and QC's jobs;
    the flow says so; the stacked values of dataset 2 are not masked (same valid pixels as the
    demo's); a polygon that is not one stops the run in one line before any job."""
    from conftest import demo_config, run_snakemake
    from rasterio.warp import transform_bounds

    from costack.io.grids import Grid

    grid = Grid.load(demo_run / "results/grid/grid.json")
    w, s, e, n = transform_bounds(grid.crs, "EPSG:4326", *grid.bounds)
    x0, x1, y0, y1 = w + 0.4 * (e - w), w + 0.7 * (e - w), s + 0.4 * (n - s), s + 0.7 * (n - s)
    wkt = f"POLYGON(({x0} {y0}, {x1} {y0}, {x1} {y1}, {x0} {y1}, {x0} {y0}))"
    cfg = demo_config()
    cfg["masks"] = {2: "POINT(3 45)"}
    proc = run_snakemake(tmp_path / "bad", cfg)
    assert proc.returncode != 0
    assert "costack: error: masks[2]:" in proc.stderr
    assert not (tmp_path / "bad/results").exists()
    cfg["masks"] = {2: wkt}
    proc = run_snakemake(tmp_path / "run", cfg)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = tmp_path / "run/results"
    with rasterio.open(res / "masks/2.tif") as src:
        share = src.read(1).mean()
    assert 0.05 < share < 0.15  # the polygon: 0.3 x 0.3 of the grid's bounds
    assert not (res / "masks/1.tif").exists() and not (res / "masks/3.tif").exists()
    change = json.loads((res / "flow/2.json").read_text())["change"]
    assert change["masks"] == {"reference": False, "secondary": True}
    assert change["masked_fraction"] > 0.05
    for log in ("match_tiepoints/2.log", "estimate_flow/2.log", "assess_registration/2.log"):
        assert (tmp_path / "run/logs" / log).exists()
    for key in ("2.nir", "2.red"):
        with (
            rasterio.open(res / f"stack/{key}.tif") as a,
            rasterio.open(demo_run / f"results/stack/{key}.tif") as b,
        ):
            np.testing.assert_array_equal(np.isnan(a.read(1)), np.isnan(b.read(1)))


@needs_optical
def test_tiled_flow_takes_the_masks(tmp_path):
    """Scene-sized grids (by tiles) take the masks too, read tile by tile: a mask raster and
    polygons exclude the same pixels of a tile as of the whole grid, and with the clouds' mask
    the tiled flow under them is within the issue's 0.05 px."""
    from rasterio.windows import Window

    from costack.io.grids import Grid
    from costack.io.masks import Exclusions
    from costack.registration.folki import FlowParams
    from costack.stages._tiled import flow_tiled

    img = optical()
    sec, truth, under, _ = _clouds(img)
    ref_tif, sec_tif = _pair(tmp_path, img, sec)
    cloud = np.repeat(np.repeat(_clouds(img)[3] != 4, 2, 0), 2, 1).astype(np.uint8)
    write_raster(tmp_path / "m.tif", cloud, transform=TRANSFORM)
    grid = Grid(rasterio.crs.CRS.from_epsg(32631), TRANSFORM, SIZE, SIZE)
    # about columns 30-150, rows 100-250 of the grid
    poly = {"type": "Polygon", "coordinates": [[(3.0038, 45.1445), (3.0191, 45.1445),
                                                (3.0191, 45.1310), (3.0038, 45.1310),
                                                (3.0038, 45.1445)]]}  # fmt: skip
    both = Exclusions(secondary=(str(tmp_path / "m.tif"), "binary"), polygons=(poly,))
    win = Window(-20, 100, 150, 150)  # beyond the grid on the left: nothing excluded there
    ref_w, sec_w = both.read_window(grid, win)
    ref_g, sec_g = both.read(grid)
    np.testing.assert_array_equal(sec_w[:, 20:], sec_g[100:250, 0:130])
    np.testing.assert_array_equal(ref_w[:, 20:], ref_g[100:250, 0:130])
    assert not sec_w[:, :20].any() and 0.2 < ref_w.mean() < 0.8
    inside = interior(img.shape, 16) & under
    errs = {}
    for masked in (True, False):
        masks = Exclusions(secondary=(str(tmp_path / "m.tif"), "binary")) if masked else None
        flow_tiled(ref_tif, sec_tif, tmp_path / "f.tif", tmp_path / "c.tif",
                   FlowParams(mode="efolki"), tile=192, coarse_factor=2, hold_changes=True,
                   masks=masks)  # fmt: skip
        f = _flow(tmp_path / "f.tif")
        errs[masked] = np.hypot(f[0] - truth[0], f[1] - truth[1])[inside].mean()
    assert errs[True] <= 0.05 and errs[True] != errs[False], errs


def test_qc_masks_by_blocks_match_the_whole_grid(tmp_path):
    """The QC re-matching leaves the masked pixels out, on the whole grid in memory and by
    blocks alike (same points, same residuals), and fewer points than unmasked."""
    from conftest import scene

    from costack.io.grids import Grid
    from costack.io.masks import Exclusions
    from costack.io.rasters import write_float32
    from costack.stages.qc import run_qc

    h, w = 700, 420
    ref = scene(h, w, seed=3) + 3.0
    grid = Grid(rasterio.crs.CRS.from_epsg(32631), TRANSFORM, w, h)
    before, _ = displace(ref, lambda c, r: (np.full_like(c, 0.4), np.full_like(r, -0.3)))
    for name, a in (("ref", ref), ("before", before), ("after", ref)):
        write_float32(tmp_path / f"{name}.tif", a.astype(np.float32), grid)
    cloud = np.zeros((h, w), np.uint8)
    cloud[200:450, 100:380] = 1
    write_raster(tmp_path / "m.tif", cloud, transform=TRANSFORM)
    masks = Exclusions(secondary=(str(tmp_path / "m.tif"), "binary"))
    args = [tmp_path / f"{n}.tif" for n in ("ref", "before", "after")]
    plain = run_qc(*args, tmp_path / "p.json")
    whole = run_qc(*args, tmp_path / "w.json", masks=masks)
    blocks = run_qc(*args, tmp_path / "b.json", masks=masks, max_in_memory_pixels=0,
                    block_bytes=1)  # fmt: skip
    for when in ("before", "after"):
        assert 0 < whole[when]["points"] < plain[when]["points"]
        assert blocks[when]["points"] == whole[when]["points"]
        for k, v in whole[when]["pixels"].items():
            assert blocks[when]["pixels"][k] == pytest.approx(v, abs=2e-4), (when, k)
    assert blocks["coverage"] == whole["coverage"] == plain["coverage"]
    # the sampled QC (lattices over qc_points): no point drawn in the masked area
    from costack.stages.qc import _residuals_sampled

    kw = {"multimodal": False, "reference_blur": 0.0}
    got = _residuals_sampled(tuple(args), grid, kw, None, 60, 0, masks)
    free = _residuals_sampled(tuple(args), grid, kw, None, 60, 0, None)
    for g in (got, free):
        assert len(g["before_points"]) >= 20
    r, c = got["before_points"].T
    assert not cloud[r, c].any() and cloud[tuple(free["before_points"].T)].any()
    assert got["coverage"] == free["coverage"]


@pytest.mark.parametrize("sliver", [60, 500, 1500])
def test_a_sliver_of_support_does_not_extrapolate_the_field(sliver):
    """A tile at the edge of an orbit: the secondary has data in a corner triangle only (0.04
    to 23 % of the tile) and its flow there is noisy (smooth random field, 1 px range). The
    held field across the empty rest stays within the supported range widened by its span:
    a quadratic fitted to the sliver's noise extrapolated to 1500-3300 px before (the stack
    benchmark's orbit-edge date: 1981 px in its flow raster)."""
    from costack.registration.change import hold
    from costack.registration.folki import FlowParams, FlowResult

    n = 1104
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:n, 0:n]
    valid = cols + (n - rows) < sliver
    ref = rng.random((n, n)).astype(np.float32)
    sec = np.where(valid, ref, np.nan).astype(np.float32)

    def noisy(mean: float) -> np.ndarray:
        field = ndimage.gaussian_filter(rng.normal(0, 1, (n, n)), 15) * 15 + mean
        return np.where(valid, field, np.nan).astype(np.float32)

    dx, dy = noisy(0.35), noisy(-0.25)
    conf = np.where(valid, 0.9, 0.0).astype(np.float32)
    held = hold(FlowResult(dx, dy, conf, FlowParams(), {}), ref, sec)
    for own, out in ((dx, held.dx), (dy, held.dy)):
        lo, hi = np.nanmin(own), np.nanmax(own)
        margin = max(hi - lo, 1.0)
        assert np.isfinite(out).all()
        assert lo - margin <= out.min() and out.max() <= hi + margin, (out.min(), out.max())
    assert (held.support[~valid] < 0.5).mean() > 0.95
