"""Radar against optical from the pixels alone (costack.registration.modality): the speckle
index, the decision on real pairs and same-sensor pairs, and ROEWA's unbiased edge strength."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DEMO, SHARED_DATA

from costack.registration.evaluation import affine_sinusoid, displace
from costack.registration.folki import contrast_relation
from costack.registration.modality import (
    assess,
    gradient_magnitude,
    looks_like_db,
    resampling_ratio,
    roewa,
    speckle_index,
    structure_images,
)

UAVSAR = SHARED_DATA / "radar_optical_uavsar"
MISC = SHARED_DATA / "gefolki_misc"
FIELD = {"shift": (2.3, -1.6), "amplitude": 1.5, "wavelength": 400.0}


def _uavsar(size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    import rasterio

    stem = next(UAVSAR.glob("*_optique.tif")).name[: -len("_optique.tif")]
    out = []
    for kind in ("optique", "radar"):
        with rasterio.open(UAVSAR / f"{stem}_{kind}.tif") as src:
            out.append(src.read().astype(np.float32).mean(0)[:size, :size])
    return out[0], out[1]


def _speckled_steps(looks: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A scene of two reflectivities (10 and 1000, a vertical edge at column 64) under
    L-look gamma speckle, and the scene itself."""
    rng = np.random.default_rng(seed)
    scene = np.full((128, 128), 10.0)
    scene[:, 64:] = 1000.0
    speckle = rng.gamma(looks, 1.0 / looks, scene.shape)
    return (scene * speckle).astype(np.float32), scene.astype(np.float32)


def test_speckle_index_reads_multiplicative_noise_whatever_the_scale():
    """Gamma speckle of L looks gives a coefficient of variation about 1/sqrt(L) in the
    homogeneous windows, in linear power as in dB; the scene without speckle gives ~0."""
    sar, scene = _speckled_steps(looks=4)
    lin = speckle_index(sar)
    db = speckle_index(10 * np.log10(sar))
    assert db["db"] and not lin["db"]
    assert 0.3 < lin["index"] < 0.5  # 1/sqrt(4) = 0.5, the 10th percentile below it
    assert db["index"] == pytest.approx(lin["index"], rel=1e-3)
    assert speckle_index(scene + 5.0)["index"] < 0.01
    assert not looks_like_db(np.array([0.0, 3.0, 255.0]))


def test_roewa_is_unbiased_by_the_mean_where_a_difference_is_not():
    """Over homogeneous speckle, the ROEWA edge strength has the same level at reflectivity 10
    and 1000 (its distribution depends on the looks only: Fjortoft et al. 1998), while the
    gradient of the intensities grows with the mean; at the edge ROEWA peaks."""
    sar, _ = _speckled_steps(looks=4)
    r = roewa(sar)
    g = gradient_magnitude(sar)
    dark, bright = (slice(8, 120), slice(8, 48)), (slice(8, 120), slice(80, 120))
    assert np.median(r[bright]) / np.median(r[dark]) == pytest.approx(1.0, abs=0.15)
    assert np.median(g[bright]) / np.median(g[dark]) > 50
    cols = np.nanmedian(r[8:120], axis=0)
    assert 62 <= int(np.argmax(cols)) <= 65


def test_roewa_keeps_nodata_out():
    sar, _ = _speckled_steps()
    holed = sar.copy()
    holed[:, 20:30] = np.nan
    r = roewa(holed)
    assert np.isnan(r[:, 20:30]).all()
    assert np.isfinite(r[:, 40:60]).all()  # the nodata edge is no radar edge, and no NaN leaks
    far = (slice(None), slice(40, 60))
    assert np.nanmax(np.abs(r[far] - roewa(sar)[far])) < 0.05


@pytest.mark.skipif(not UAVSAR.exists(), reason="../shared/data (UAVSAR pair) absent")
def test_the_real_uavsar_pair_is_radar_against_optical_without_a_tag():
    """The UAVSAR L-band image against the orthophoto: the radar is found on whichever side it
    is; the orthophoto against itself displaced is no radar pair."""
    opt, radar = _uavsar()
    why = assess(opt, radar, contrast_relation(opt, radar))
    assert why["radar"] == "secondary" and why["multimodal"], why
    why = assess(radar, opt, contrast_relation(radar, opt))
    assert why["radar"] == "reference", why
    sec, _ = displace(opt, affine_sinusoid(opt.shape, **FIELD), order=5)
    why = assess(opt, sec, contrast_relation(opt, sec))
    assert why["radar"] is None and not why["multimodal"], why
    a, b = structure_images(opt, radar, "secondary")
    assert a.shape == b.shape == opt.shape


@pytest.mark.skipif(not MISC.exists(), reason="../shared/data (GeFolki images) absent")
def test_real_sar_chips_read_as_speckled_and_the_lidar_image_as_one_sensor():
    """Sandia's Ku-band SAR chip (Washington DC) is speckled in the sense of the index; the
    demo's Sentinel-1-like VV (dB) reads as dB and speckled; the demo's optical NIR is not."""
    import imageio.v3 as iio
    import rasterio

    chip = iio.imread(MISC / "WhashingtonDC_sandiaKu_project.png").astype(np.float32)
    chip = chip[..., :3].mean(-1)
    chip[chip == 0] = np.nan  # the projection's black margins
    assert speckle_index(chip)["index"] > 0.1
    with rasterio.open(DEMO / "s1" / "s0_db_c_vv.tif") as src:
        vv = src.read(1).astype(np.float32)
        vv[vv == src.nodata] = np.nan
    with rasterio.open(DEMO / "s2" / "nir.tif") as src:
        nir = src.read(1).astype(np.float32)
    got = speckle_index(vv)
    assert got["db"] and got["index"] > 0.2
    assert speckle_index(nir)["index"] < 0.05


def test_optical_gradient_sees_no_edge_at_nodata():
    rng = np.random.default_rng(1)
    img = (100 + rng.normal(0, 1, (64, 64))).astype(np.float32)
    holed = img.copy()
    holed[:, :20] = np.nan
    g = gradient_magnitude(holed)
    assert np.isnan(g[:, :20]).all()
    assert np.nanmax(g[:, 20:23]) < 2 * np.nanmax(g[:, 30:])  # a false edge: about 50


def _plain_copy(src_tif, dst_tif) -> None:
    """``src_tif`` rewritten without any ``costack_*`` tag (a raster costack did not write)."""
    import rasterio

    with rasterio.open(src_tif) as src:
        prof, data = src.profile, src.read()
        tags = {k: v for k, v in src.tags().items() if not k.startswith("costack")}
    with rasterio.open(dst_tif, "w", **prof) as dst:
        dst.write(data)
        dst.update_tags(**tags)


def _cli_flow(tmp_path, ref, sec, name, *extra) -> tuple[np.ndarray, dict]:
    import json
    import subprocess
    import sys

    import rasterio

    out, stats = tmp_path / f"{name}.tif", tmp_path / f"{name}.json"
    cmd = [sys.executable, "-m", "costack.cli", "flow", str(ref), str(sec), str(out),
           "--stats", str(stats), *extra]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with rasterio.open(out) as src:
        return src.read(), json.loads(stats.read_text())


def test_an_untagged_sar_pair_gets_the_tagged_pairs_flow(demo_run, tmp_path):
    """The demo's co-located NIR and SAR VV written again without any costack tag: ``costack
    flow`` with no option reads the radar and the resolution ratio (20 m on the 10 m grid)
    from the pixels, runs the structure mode and gives the flow of the tagged pair (within
    0.01 px), the evidence in the statistics JSON."""
    import rasterio

    col = demo_run / "results" / "colocated"
    with rasterio.open(col / "3.s0_db_c_vv.tif") as src:
        ratio = float(src.tags()["costack_resolution_ratio"])
    ref, sec = tmp_path / "ref.tif", tmp_path / "sec.tif"
    _plain_copy(col / "1.nir.tif", ref)
    _plain_copy(col / "3.s0_db_c_vv.tif", sec)
    tagged, why_tagged = _cli_flow(tmp_path, col / "1.nir.tif", col / "3.s0_db_c_vv.tif", "t")
    plain, why = _cli_flow(tmp_path, ref, sec, "u")
    assert why_tagged["mode_choice"]["kinds_from"] == "tags"
    assert why_tagged["resolution_ratio"] == {"value": ratio, "from": "tag"}
    choice = why["mode_choice"]
    assert why["mode"] == "structure" and choice["kinds"] == ["optical", "sar"], choice
    assert choice["kinds_from"] == "pixels" and choice["modality"]["radar"] == "secondary"
    assert choice["modality"]["speckle"]["secondary"]["db"]
    read = why["resolution_ratio"]
    assert read["from"] == "pixels" and abs(read["value"] - ratio) < 0.02 * ratio, read
    ok = np.isfinite(tagged).all(0)
    assert ok.mean() > 0.9 and (np.isfinite(plain).all(0) == ok).all()
    assert np.hypot(*(tagged - plain))[ok].max() <= 0.01


def test_an_untagged_coarse_optical_secondary_gets_the_tagged_pairs_flow(demo_run, tmp_path):
    """The demo's 30 m Landsat NIR co-located on the 10 m grid, untagged: same-sensor optical,
    where the reference is blurred to the secondary's resolution by the exact ratio (sigma
    0.5 sqrt(r^2 - 1)); the ratio read from the pixels gives the tagged pair's flow within
    0.01 px, where the ratio 1 an untagged raster had before did not."""
    import rasterio

    col = demo_run / "results" / "colocated"
    with rasterio.open(col / "2.nir.tif") as src:
        ratio = float(src.tags()["costack_resolution_ratio"])
    assert ratio == 3.0
    ref, sec = tmp_path / "ref.tif", tmp_path / "sec.tif"
    _plain_copy(col / "1.nir.tif", ref)
    _plain_copy(col / "2.nir.tif", sec)
    tagged, _ = _cli_flow(tmp_path, col / "1.nir.tif", col / "2.nir.tif", "t")
    plain, why = _cli_flow(tmp_path, ref, sec, "u")
    one, _ = _cli_flow(tmp_path, ref, sec, "one", "--resolution-ratio", "1")
    assert why["resolution_ratio"]["from"] == "pixels"
    assert abs(why["resolution_ratio"]["value"] - 3.0) < 0.01
    ok = np.isfinite(tagged).all(0)
    assert np.hypot(*(tagged - plain))[ok].max() <= 0.01
    assert np.hypot(*(tagged - one))[ok].max() > 0.05  # the ratio matters here


def _upsampled(img: np.ndarray, ratio: float, degrees: float, method: str, n: int) -> np.ndarray:
    """``img`` interpolated by GDAL's warper (``method``) onto a grid ``ratio`` times finer,
    rotated by ``degrees`` (a radar in its own geometry warped onto a map grid), n x n px."""
    from affine import Affine
    from rasterio.warp import Resampling, reproject

    src_t = Affine(1.0, 0, 500000, 0, -1.0, 5000000)
    centre = Affine.translation(500000 + img.shape[1] / 2, 5000000 - img.shape[0] / 2)
    dst_t = (centre @ Affine.rotation(degrees) @ Affine.scale(1 / ratio, -1 / ratio)
             @ Affine.translation(-n / 2 + 0.3, -n / 2 + 0.7))  # fmt: skip
    out = np.full((n, n), np.nan, np.float32)
    reproject(img.astype(np.float32), out, src_transform=src_t, dst_transform=dst_t,
              src_crs="EPSG:32631", dst_crs="EPSG:32631", resampling=Resampling[method],
              src_nodata=np.nan, dst_nodata=np.nan)  # fmt: skip
    return out


@pytest.mark.parametrize("method", ["bilinear", "cubic"])
def test_the_resolution_ratio_is_read_from_an_interpolations_trace(method):
    """A speckled scene (4-look gamma over a smooth reflectivity) upsampled by GDAL 2.047x on
    a grid rotated by 11 degrees (the demo's radar) and 3x on an aligned grid (a Landsat band
    on a Sentinel-2 grid): the ratio read back within 0.5 %; the scene itself and the scene
    with a nodata corner read 1 (no resampling)."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    scene = np.exp(ndimage.gaussian_filter(rng.normal(0, 1, (400, 400)), 6) * 8) + 1
    img = (scene * rng.gamma(4, 0.25, scene.shape)).astype(np.float32)
    for ratio, degrees in ((2.047, 11.0), (3.0, 0.0)):
        got = resampling_ratio(_upsampled(img, ratio, degrees, method, 512))
        assert abs(got["ratio"] - ratio) < 0.005 * ratio, got
    assert resampling_ratio(img)["ratio"] == 1.0
    holed = img.copy()
    rows, cols = np.mgrid[0:400, 0:400]
    holed[rows + cols < 250] = np.nan
    native = resampling_ratio(holed)
    assert native["ratio"] == 1.0 and native["sharpness"] < 50, native


@pytest.mark.skipif(not UAVSAR.exists(), reason="../shared/data (UAVSAR pair) absent")
def test_real_rasters_read_their_native_resolution():
    """The real UAVSAR radar (native) reads 1, and interpolated 2x by GDAL on a grid rotated
    by 7 degrees, 2 (within 0.5 %). Its orthophoto, whose columns show a resampling trace
    (period 3.7 px) and its rows none, reads 1: a trace along one axis is not a coarser grid
    (taken as a ratio of 3.7, it took a same-sensor flow's error from 0.02 to 0.54 px)."""
    optical, radar = _uavsar(1024)
    assert resampling_ratio(radar)["ratio"] == 1.0
    one_axis = resampling_ratio(optical)
    assert one_axis["ratio"] == 1.0 and one_axis["sharpness"] > 100, one_axis
    assert "one-dimensional" in one_axis["reason"]
    got = resampling_ratio(_upsampled(radar, 2.0, 7.0, "bilinear", 600))
    assert abs(got["ratio"] - 2.0) < 0.01, got


def test_a_tag_wins_over_the_pixels(demo_run, tmp_path):
    """The same SAR raster tagged optical (as a user's own tag would say): the tags decide,
    the pixels are not read for the kinds."""
    import shutil

    import rasterio

    from costack.stages._common import decide_mode

    col = demo_run / "results" / "colocated"
    sec = tmp_path / "sec.tif"
    shutil.copy(col / "3.s0_db_c_vv.tif", sec)
    with rasterio.open(sec, "r+") as dst:
        dst.update_tags(costack_kind="optical")
    mode, why = decide_mode("auto", col / "1.nir.tif", sec)
    assert why["kinds"] == ["optical", "optical"] and why["kinds_from"] == "tags"
    assert "modality" not in why
    mode, why = decide_mode("auto", col / "1.nir.tif", col / "3.s0_db_c_vv.tif")
    assert mode == "structure" and why["kinds_from"] == "tags" and why["radar"] == "secondary"


@pytest.mark.skipif(not UAVSAR.exists(), reason="../shared/data (UAVSAR pair) absent")
def test_an_unsure_guess_runs_both_modes_and_keeps_the_more_similar(tmp_path):
    """An untagged pair that is multimodal but in which neither side is speckled (the
    orthophoto against itself with the contrast inverted over the right half): the flow runs
    the other mode too and keeps the one whose co-registered secondary is the more similar to
    the reference by the CFOG similarity, both scores in the JSON."""
    from conftest import write_raster
    from rasterio.transform import Affine

    opt, _ = _uavsar(256)
    sec, _ = displace(opt, affine_sinusoid(opt.shape, **FIELD), order=5)
    sec = np.where(np.isfinite(sec), sec, np.nanmean(sec)).astype(np.float32)
    sec[:, 128:] = 255.0 - sec[:, 128:]
    ref_tif, sec_tif = tmp_path / "ref.tif", tmp_path / "sec.tif"
    grid = Affine(10, 0, 500000, 0, -10, 5000000)
    write_raster(ref_tif, opt[None], transform=grid)
    write_raster(sec_tif, sec[None], transform=grid)
    _, stats = _cli_flow(tmp_path, ref_tif, sec_tif, "f")
    choice = stats["mode_choice"]
    assert choice["modality"]["multimodal"] and choice["modality"]["radar"] is None, choice
    other = "efolki" if choice["verify_with"] == "efolki" else "gefolki"
    scores = choice["verified"]["cfog_similarity"]
    assert set(scores) == {"efolki", "gefolki"} and other in scores
    kept = max(scores, key=scores.get)
    assert choice["verified"]["kept"] == kept == stats["mode"]


@pytest.mark.parametrize("value", ["0", "-2", "nan"])
def test_an_impossible_resolution_ratio_is_one_line_and_writes_nothing(tmp_path, value):
    """``--resolution-ratio`` 0, negative or NaN: one line naming the option, non-zero exit,
    no flow written."""
    import subprocess
    import sys

    from conftest import write_raster
    from rasterio.transform import Affine

    rng = np.random.default_rng(0)
    img = rng.random((96, 96), dtype=np.float32)
    grid = Affine(10, 0, 500000, 0, -10, 5000000)
    write_raster(tmp_path / "ref.tif", img[None], transform=grid)
    write_raster(tmp_path / "sec.tif", img[None], transform=grid)
    out = tmp_path / "flow.tif"
    cmd = [sys.executable, "-m", "costack.cli", "flow", str(tmp_path / "ref.tif"),
           str(tmp_path / "sec.tif"), str(out), "--resolution-ratio", value]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "--resolution-ratio" in lines[0] and "Traceback" not in proc.stderr
    assert not out.exists()


def test_a_second_polarisation_averages_the_radar_edge_strengths():
    """``structure_images`` with another polarisation: the radar side's edge strength is the
    mean of both ROEWA strengths where both have data, the radar's own where the other has
    none; the optical side is untouched; an aux off the radar image's grid is refused."""
    from costack.registration.modality import structure_images

    vv, scene = _speckled_steps(seed=1)
    vh, _ = _speckled_steps(seed=2)
    vh = 0.2 * vh  # another polarisation: weaker, its own speckle
    opt = scene.copy()
    g, alone = structure_images(opt, vv, "secondary")
    g2, both = structure_images(opt, vv, "secondary", [vh])
    assert np.array_equal(g, g2, equal_nan=True)
    own_vh = roewa(vh)
    ok = np.isfinite(alone) & np.isfinite(own_vh)
    assert np.allclose(both[ok], 0.5 * (alone[ok] + own_vh[ok]), rtol=1e-5)
    holed = vh.copy()
    holed[:, :40] = np.nan
    _, part = structure_images(opt, vv, "secondary", [holed])
    far = np.zeros(vv.shape, bool)
    far[:, :30] = True  # beyond ROEWA's reach of the hole's edge
    assert np.allclose(part[far & np.isfinite(alone)], alone[far & np.isfinite(alone)])
    # the same polarisation twice is the polarisation itself
    _, same = structure_images(opt, vv, "secondary", [vv])
    assert np.allclose(same, alone, equal_nan=True)
    with pytest.raises(ValueError, match="grid"):
        structure_images(opt, vv, "secondary", [vh[:-1]])


def test_vv_and_vh_bring_the_demo_radar_closer_to_its_truth(demo_run, tmp_path):
    """The demo's 20 m SAR against its 10 m NIR (tagged, as co-location wrote them): ``costack
    flow`` with VH given as ``--radar-aux`` is closer to the stored truth than with VV alone
    (measured 0.377 -> 0.354 px mean), says so in its JSON, and the workflow's flow of that
    dataset used VH too (the rule passes the SAR dataset's other polarisation)."""
    import json

    from conftest import REPO

    from costack.io.rasters import read_flow_and_truth
    from costack.registration.evaluation import flow_metrics

    col = demo_run / "results" / "colocated"
    truth = REPO / "resources" / "demo" / "s1" / "truth.tif"
    ref, vv, vh = col / "1.nir.tif", col / "3.s0_db_c_vv.tif", col / "3.s0_db_c_vh.tif"
    _, alone = _cli_flow(tmp_path, ref, vv, "vv")
    _, both = _cli_flow(tmp_path, ref, vv, "vvvh", "--radar-aux", str(vh))
    assert alone["radar_aux"] == {"rasters": [], "used": False}
    assert both["radar_aux"] == {"rasters": [str(vh)], "used": True}
    one = flow_metrics(*read_flow_and_truth(tmp_path / "vv.tif", truth))["mean_epe"]
    two = flow_metrics(*read_flow_and_truth(tmp_path / "vvvh.tif", truth))["mean_epe"]
    assert two < one - 0.01 and two <= 0.37, (one, two)
    run = json.loads((demo_run / "results" / "flow" / "3.json").read_text())
    assert run["radar_aux"]["used"] and run["radar_aux"]["rasters"] == [
        "results/colocated/3.s0_db_c_vh.tif"]  # fmt: skip
    optical = json.loads((demo_run / "results" / "flow" / "2.json").read_text())
    assert optical["radar_aux"] == {"rasters": [], "used": False}


def test_a_radar_aux_off_the_grid_is_one_line(demo_run, tmp_path):
    """``--radar-aux`` on another grid (the demo's 30 m Landsat band as it came) or missing:
    one line naming the problem, non-zero exit, no flow written."""
    import subprocess
    import sys

    from conftest import REPO

    col = demo_run / "results" / "colocated"
    for aux, word in ((REPO / "resources" / "demo" / "l8" / "B05.tif", "grid"),
                      (tmp_path / "absent.tif", "--radar-aux")):  # fmt: skip
        out = tmp_path / "flow.tif"
        cmd = [sys.executable, "-m", "costack.cli", "flow", str(col / "1.nir.tif"),
               str(col / "3.s0_db_c_vv.tif"), str(out), "--radar-aux", str(aux)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1, proc.stderr
        assert word in lines[0] and "Traceback" not in proc.stderr
        assert not out.exists()


def test_tiles_read_the_other_polarisation_too(demo_run, tmp_path, monkeypatch):
    """Scene-sized grids (here: the demo with the tiling threshold lowered) read the other
    polarisation with every tile and for the coarse pass: the flow differs from VV's alone,
    covers the same pixels, and the JSON says VH was used."""
    import costack.stages.flow
    from costack.io.rasters import read_float32
    from costack.registration.folki import FlowParams
    from costack.stages.flow import run_flow

    monkeypatch.setattr(costack.stages.flow, "TILED_ABOVE", 1000)
    col = demo_run / "results" / "colocated"
    ref, vv, vh = col / "1.nir.tif", col / "3.s0_db_c_vv.tif", col / "3.s0_db_c_vh.tif"
    flows = {}
    for name, aux in (("vv", ()), ("both", (vh,))):
        stats = run_flow(ref, vv, tmp_path / f"{name}.tif", tmp_path / f"{name}.c.tif",
                         FlowParams(mode="auto"), radar_aux=aux)  # fmt: skip
        assert "tiled" in stats and stats["mode"] == "structure"
        assert stats["radar_aux"]["used"] == bool(aux)
        flows[name] = read_float32(tmp_path / f"{name}.tif", band=None)[0]
    ok = np.isfinite(flows["vv"]).all(0)
    assert (np.isfinite(flows["both"]).all(0) == ok).all() and ok.mean() > 0.9
    assert np.hypot(*(flows["vv"] - flows["both"]))[ok].mean() > 0.01
