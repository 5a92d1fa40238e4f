"""Tie points after Yan et al. (2016): known affine recovered, safe fallbacks, file contract."""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import pandas as pd
import pytest
from rasterio.crs import CRS
from rasterio.transform import Affine
from scipy import ndimage
from skimage import data

from costack.errors import CostackError
from costack.io.grids import Grid
from costack.io.rasters import write_float32
from costack.registration.evaluation import displace
from costack.registration.tiepoint_model import apply_model, fit_models, rmse
from costack.stages.tiepoints import CSV_COLUMNS, TiePointParams, match_tiepoints

SHIFT, LIN = (2.3, -1.6), (0.002, -0.001, 0.0015, 0.001)


def _affine_pair(img):
    h, w = img.shape

    def e(c, r):
        return (SHIFT[0] + LIN[0] * (c - w / 2) + LIN[1] * (r - h / 2),
                SHIFT[1] + LIN[2] * (c - w / 2) + LIN[3] * (r - h / 2))  # fmt: skip

    return displace(img, e, order=5)


@pytest.fixture(scope="module")
def camera_affine():
    img = data.camera().astype(np.float32)
    sec, truth = _affine_pair(img)
    return img, sec, truth


def test_known_affine_is_recovered(camera_affine):
    img, sec, truth = camera_affine
    df = match_tiepoints(img, sec, TiePointParams())
    assert len(df) >= 50
    model, df = fit_models(df)
    assert model.chosen == "affine"
    h, w = img.shape
    rr, cc = np.mgrid[0:h, 0:w] + 0.5
    px, py = model.apply(cc, rr)
    np.testing.assert_array_equal(px, apply_model("affine", model.coefficients, cc, rr)[0])
    err = np.hypot(px - cc - truth[0], py - rr - truth[1])
    assert np.sqrt(np.mean(err**2)) < 0.05  # measured 0.022 px
    # translation is worse than affine on an affine field (paper's Table 2 pattern)
    assert model.fits["translation"]["rmse"] > model.fits["affine"]["rmse"]
    init = model.displacement(img.shape)
    assert abs(float(np.mean(init[0])) - SHIFT[0]) < 0.1


def test_rmse_uses_n_minus_t():
    src = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    dst = src + [[0.1, 0.0], [-0.1, 0.0], [0.1, 0.0], [-0.1, 0.0]]
    coef = np.array([[0.0], [0.0]])
    assert rmse(src, dst, "translation", coef) == pytest.approx(np.sqrt(0.04 / 3))


def test_few_points_fall_back_with_a_warning(caplog):
    df = pd.DataFrame(
        [(10.5, 10.5, 12.5, 9.5, 2, -1, 1, 0), (50.5, 20.5, 52.6, 19.5, 2.1, -1, 1, 0)],
        columns=CSV_COLUMNS[:8],
    )
    with caplog.at_level(logging.WARNING):
        model, _ = fit_models(df, label="dataset 7")
    assert model.chosen == "translation"
    assert "dataset 7: only 2 tie points" in caplog.text


def test_flat_image_gives_no_points_not_a_crash(tmp_path, caplog):
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    from costack.io.grids import Grid
    from costack.io.rasters import write_float32
    from costack.stages.tiepoints import run_tiepoints

    grid = Grid(CRS.from_epsg(32631), Affine(10, 0, 0, 0, -10, 0), 200, 200)
    write_float32(tmp_path / "a.tif", np.full((200, 200), 0.2, np.float32), grid)
    write_float32(tmp_path / "b.tif", np.full((200, 200), 0.3, np.float32), grid)
    with caplog.at_level(logging.WARNING):
        model = run_tiepoints(
            tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "t.csv", tmp_path / "t.json",
            tmp_path / "t.png", label="dataset 2",
        )  # fmt: skip
    assert model.chosen == "none" and "dataset 2: 0 tie points" in caplog.text
    assert list(pd.read_csv(tmp_path / "t.csv").columns) == CSV_COLUMNS
    assert json.loads((tmp_path / "t.json").read_text())["chosen"] == "none"
    assert (tmp_path / "t.png").stat().st_size > 0


def test_all_nodata_is_an_error():
    with pytest.raises(CostackError, match="no valid pixel"):
        match_tiepoints(np.full((64, 64), np.nan), np.ones((64, 64)))


def test_prior_shift_sign_and_masks():
    """The prior is the (row, col) shift d with sec(p + d) = ref(p), nodata ignored."""
    from costack.registration.matching import prior_shift

    img = ndimage.gaussian_filter(np.random.default_rng(1).normal(size=(140, 150)), 2)
    ref = img[20:120, 20:120].astype(np.float32)
    sec = img[23:123, 15:115].astype(np.float32)  # sec(p + (-3, 5)) = ref(p)
    ok = np.ones(ref.shape, bool)
    sec_ok = ok.copy()
    sec_ok[:, 60:70] = False  # a nodata strip with wild values must not matter
    sec = np.where(sec_ok, sec, 1e6).astype(np.float32)
    dy, dx = prior_shift(ref[None], ok, np.where(sec_ok, sec, 0)[None], sec_ok, 8)
    assert abs(dy + 3) < 0.3 and abs(dx - 5) < 0.3


def test_cfog_ignores_contrast_inversion_and_nodata():
    from costack.registration.matching import cfog

    img = data.camera().astype(np.float32)[:128, :128]
    ok = np.ones(img.shape, bool)
    ok[:, :10] = False
    a = cfog(np.where(ok, img, 1e6), ok)
    b = cfog(np.where(ok, 255 - img, -1e6), ok)
    assert np.allclose(a, b, atol=1e-4)  # float32 rounding only
    assert (a[:, :, :12] == 0).all() and a[:, 20:-20, 20:-20].std() > 0


def test_lsm_subpixel_translation():
    """Cubic-spline LSM recovers a sub-pixel shift of a smooth real image to 0.02 px."""
    from costack.registration.matching import lsm, prepare

    img = ndimage.gaussian_filter(data.camera().astype(np.float32), 1.5)[100:300, 100:300]
    sec, truth = displace(img, lambda c, r: (0.37 + 0 * c, -0.61 + 0 * r), order=5)
    ok1, ok2 = np.isfinite(img), np.isfinite(sec)
    m = prepare(img, ok1, np.where(ok2, sec, 0), ok2, False)
    errs = []
    for r, c in [(60, 60), (100, 120), (140, 80)]:
        got = lsm(m, (r + 0.5, c + 0.5), (r + 0.5, c + 0.5), 17)
        assert got is not None and got[1] > 0.995
        (mr, mc), _ = got
        errs.append(np.hypot(mc - c - 0.5 - 0.37, mr - r - 0.5 + 0.61))
    assert max(errs) < 0.02


def test_lsm_recovers_a_patch_affine_and_cfog_translation():
    """The compiled LSM loop: the 6-parameter patch geometry follows a local affine (rotation
    and scale of the image) to 0.02 px at the patch centre, and the translation-only CFOG
    matcher finds a shift of an inverted-contrast copy to 0.1 px."""
    from costack.registration.matching import lsm, prepare

    img = ndimage.gaussian_filter(data.camera().astype(np.float32), 1.5)[100:300, 100:300]
    th, s = 0.02, 1.01  # rotation (rad) and scale about the image centre

    def field(c, r):
        x, y = c - 100.0, r - 100.0
        return (s * (np.cos(th) * x - np.sin(th) * y) - x + 0.3,
                s * (np.sin(th) * x + np.cos(th) * y) - y - 0.2)  # fmt: skip

    sec, truth = displace(img, field, order=5)
    ok1, ok2 = np.isfinite(img), np.isfinite(sec)
    m = prepare(img, ok1, np.where(ok2, sec, 0), ok2, False)
    for r, c in [(70, 80), (110, 120)]:
        dx, dy = truth[:, r, c]
        got = lsm(m, (r + 0.5, c + 0.5), (r + 0.5 + round(dy), c + 0.5 + round(dx)), 17)
        assert got is not None and got[1] > 0.995
        (mr, mc), _ = got
        assert np.hypot(mc - c - 0.5 - dx, mr - r - 0.5 - dy) < 0.02
    # CFOG descriptors, translation only, NCC: 255 - image shifted by (1.4, -0.7)
    sec, _ = displace(255 - img, lambda c, r: (1.4 + 0 * c, -0.7 + 0 * r), order=5)
    ok2 = np.isfinite(sec)
    m = prepare(img, ok1, np.where(ok2, sec, 0), ok2, True)
    got = lsm(m, (100.5, 100.5), (100.5, 100.5), 25)
    assert got is not None and got[1] > 0.5
    (mr, mc), _ = got
    assert np.hypot(mc - 100.5 - 1.4, mr - 100.5 + 0.7) < 0.1


def test_small_solver_matches_numpy_and_refuses_a_singular_system():
    """The LSM kernel's normal-equation solver: numpy's answer on well-posed systems (2x2 and
    6x6), NaN where a pivot is zero (numpy raises LinAlgError)."""
    from costack.registration._kernels import _solve_small

    rng = np.random.default_rng(3)
    for n in (2, 6):
        j = rng.normal(size=(40, n))
        m, y = j.T @ j, rng.normal(size=n)
        assert np.allclose(_solve_small(m, y), np.linalg.solve(m, y), rtol=1e-10, atol=1e-12)
    singular = np.array([[1.0, 2.0], [2.0, 4.0]])
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.solve(singular, np.ones(2))
    assert np.isnan(_solve_small(singular, np.ones(2))).all()


def test_tiles_of_a_large_grid_give_the_whole_grids_model(tmp_path, camera_affine):
    """A grid over max_in_memory_pixels is matched tile by tile (tiles of half the limit: here 4
    of 256 x 256 on the 512 x 512 camera under a known affine) and one model is fitted to all
    their points: it is the whole grid's model within a few hundredths of a pixel."""
    from costack.stages.tiepoints import run_tiepoints

    img, sec, truth = camera_affine
    grid = Grid(CRS.from_epsg(32631), Affine(10, 0, 500_000, 0, -10, 5_000_000), 512, 512)
    write_float32(tmp_path / "ref.tif", img, grid)
    write_float32(tmp_path / "sec.tif", sec.astype(np.float32), grid)
    fields = {}
    for name, limit in (("whole", 10**9), ("tiles", 2 * 256 * 256)):
        model = run_tiepoints(tmp_path / "ref.tif", tmp_path / "sec.tif",
                              tmp_path / f"{name}.csv", tmp_path / f"{name}.json",
                              tmp_path / f"{name}.png", TiePointParams(multimodal=False),
                              max_in_memory_pixels=limit)  # fmt: skip
        assert model.chosen == "affine" and model.tiepoints >= 40, (name, model.tiepoints)
        fields[name] = np.stack(model.displacement(img.shape))
    rms = float(np.sqrt(np.mean((fields["tiles"] - fields["whole"]) ** 2)))
    err = float(np.sqrt(np.mean((fields["tiles"] - truth) ** 2)))
    assert rms < 0.05 and err < 0.05, (rms, err)  # measured: see the closing note
    assert (tmp_path / "tiles.png").stat().st_size > 10_000
    # tiles of half the limit whatever the thread count: two at a time give the same points,
    # in the same order, byte for byte, as one at a time (a rerun with --cores 1 is the same);
    # at this limit, tiles sized by the thread count would be 2 x 2 on one thread, 3 x 3 on two
    for name, threads in (("one", 1), ("two", 2)):
        run_tiepoints(tmp_path / "ref.tif", tmp_path / "sec.tif", tmp_path / f"{name}.csv", None,
                      None, TiePointParams(multimodal=False), max_in_memory_pixels=2 * 200 * 200,
                      threads=threads)  # fmt: skip
    assert (tmp_path / "two.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()


def test_pyramid_levels_from_the_level_above_are_the_direct_ones(camera_affine):
    """Each coarse level made from the one above (the low-pass whose variance completes the
    direct one's) is the level made from the full resolution within 1.5 % of the image's range
    (with a NaN hole: the same masked pixels); a chain that repeats the whole 0.5 f low-pass
    at each step would blur more and miss by several times that."""
    from costack.stages.tiepoints import _masked_level, pyramid

    img = camera_affine[0].copy()
    img[100:140, 300:360] = np.nan
    valid = np.isfinite(img)
    a = np.where(valid, img, 0).astype(np.float32)
    span = float(np.nanmax(img) - np.nanmin(img))
    chained = pyramid(a, valid, (1, 3, 6, 12))
    for f, (level, ok) in zip((1, 3, 6, 12), chained, strict=True):
        direct, dok = _masked_level(a, valid, f)
        assert level.shape == direct.shape
        np.testing.assert_array_equal(ok, dok)
        assert float(np.abs(level - direct)[ok].max()) < 0.015 * span, f


def test_candidates_are_capped_and_stay_spread(camera_affine):
    """``max_points`` thins the Förstner candidates to at most about that many, the strongest
    per larger cell: every quadrant keeps its share."""
    from costack.stages.tiepoints import feature_points

    img = camera_affine[0]
    valid = np.ones(img.shape, bool)
    every = feature_points(img, valid, 2, 0.2, margin=12)
    few = feature_points(img, valid, 2, 0.2, margin=12, max_points=200)
    assert len(every) > 1000 and 100 <= len(few) <= 200
    for top in (True, False):
        for left in (True, False):
            inq = ((few[:, 0] < 256) == top) & ((few[:, 1] < 256) == left)
            assert inq.sum() >= 0.1 * len(few)


def test_foerstner_operator_is_scikit_images(camera_affine):
    """The tie points' Förstner operator (SciPy primitives, no scipy.stats import) gives
    scikit-image's corner_foerstner bit for bit: a real photograph, its secondary with a NaN
    strip (w and q 0 where the tensor is not finite) and a flat patch (trace 0)."""
    from skimage.feature import corner_foerstner

    from costack.stages.tiepoints import foerstner

    _, sec, _ = camera_affine
    holed = sec.copy()
    holed[200:230] = np.nan
    holed[:40, :40] = 7.0
    for img in (camera_affine[0], holed, holed.astype(np.float64)):
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w0, q0 = corner_foerstner(img, sigma=1.0)
        w, q = foerstner(img, sigma=1.0)
        assert w.dtype == img.dtype and q.dtype == img.dtype
        np.testing.assert_array_equal(w, np.nan_to_num(w0))
        np.testing.assert_array_equal(q, np.nan_to_num(q0))
    assert (w[10:30, 10:30] == 0).all() and (q[10:30, 10:30] == 0).all()
    assert (w[205:225] == 0).all()


def test_grid_sampler_is_the_pointwise_sampler_bit_for_bit():
    """The translation-only matching's sampler (a grid of rows and columns) gives the samples
    of the point-by-point bilinear sampler exactly, inside the image and where the patch
    mirrors beyond its edges; and LSM on CFOG descriptors (the path that uses it) still
    recovers a known translation."""
    from costack.registration import _kernels as K
    from costack.registration.matching import lsm, prepare

    rng = np.random.default_rng(3)
    a, b, c = (rng.standard_normal((3, 40, 50)).astype(np.float32) for _ in range(3))
    for r0, c0 in ((10.37, 12.81), (-1.6, 45.2), (38.9, -0.4)):
        rv = r0 + np.arange(-4, 5, dtype=np.float64)
        cv = c0 + np.arange(-6, 7, dtype=np.float64)
        rows, cols = (x.ravel() for x in np.meshgrid(rv, cv, indexing="ij"))
        want = [np.empty((3, rows.size)) for _ in range(3)]
        got = [np.empty((3, rows.size)) for _ in range(3)]
        K._sample_into(a, b, c, 3, rows, cols, 1, *want)
        K._sample_grid_bilinear(a, b, c, 3, rv, cv, *got)
        for w, g in zip(want, got, strict=True):
            np.testing.assert_array_equal(g, w)
    img = ndimage.gaussian_filter(data.camera().astype(np.float32), 1.0)[100:260, 100:260]
    sec, _ = displace(img, lambda x, y: (1.25 + 0 * x, -0.75 + 0 * y), order=5)
    ok1, ok2 = np.isfinite(img), np.isfinite(sec)
    m = prepare(img, ok1, np.where(ok2, sec, 0), ok2, True)
    (row, col), sim = lsm(m, (80.5, 80.5), (80.5, 80.5), 25, max_iterations=20)
    assert abs(row - 80.5 - (-0.75)) < 0.1 and abs(col - 80.5 - 1.25) < 0.1 and sim > 0.8


@pytest.mark.parametrize("multimodal", [False, True])
def test_full_resolution_prepared_around_each_point_matches_as_prepared_whole(
    camera_affine, monkeypatch, multimodal
):
    """The full resolution prepared around each point that reaches it (the spline, gradients,
    nearest fill or CFOG of a crop) gives the points of the level prepared whole: the same
    points, positions and similarities to 1e-9, with nodata and with a contrast-inverted
    secondary matched on descriptors; and a scene tile's few hundred points take that path."""
    from costack.registration import matching

    img, sec, _ = camera_affine
    sec = np.array(sec, dtype=np.float32)
    sec[300:380, 40:200] = np.nan  # nodata inside the grid
    if multimodal:
        sec = 255.0 - sec
    params = TiePointParams(multimodal=multimodal, max_candidates=120)
    runs = {}
    for name, local in (("whole", False), ("local", True)):
        pays = classmethod(lambda cls, *a, local=local: local)
        monkeypatch.setattr(matching.LocalLevel, "pays", pays)
        runs[name] = match_tiepoints(img, sec, params)
    whole, local = runs["whole"], runs["local"]
    assert len(whole) >= (8 if multimodal else 60)
    assert whole[["ref_col", "ref_row"]].equals(local[["ref_col", "ref_row"]])
    for col in ("sec_col", "sec_row", "similarity"):
        np.testing.assert_allclose(local[col], whole[col], rtol=0, atol=1e-9)
    monkeypatch.undo()
    # 256 candidates of a 2745 px tile (issue 40) are prepared locally; a small grid is whole
    assert matching.LocalLevel.pays(256, TiePointParams().patch_fine // 2, (2745, 2745))
    assert not matching.LocalLevel.pays(512, TiePointParams().patch_fine // 2, (512, 512))
