"""Generate the embedded demo datasets in resources/demo (deterministic; run from the repo root).

A synthetic landscape (fields with row texture, forest, a town with streets, roads, a meandering
river) is rendered on a 5 m "world" grid in UTM 31N and imaged by three sensors:

1. ``s2``: optical reference, 10 m, EPSG:32631, assets ``red`` and ``nir`` (Charter-style keys).
2. ``l8``: optical, 30 m, EPSG:32632 (another CRS), assets ``B04``/``B05`` carrying the common
   names red/nir (public-catalog style), four days later (some fields harvested), misregistered
   by a known affine of a few pixels (the Landsat-8/Sentinel-2 case of Yan et al. 2016), with a
   fill-value corner.
3. ``s1``: SAR sigma0 in dB (VV, VH) with 4-look speckle and bright point scatterers, 20 m,
   georeferenced only by a 10x21 GCP grid in EPSG:4326 whose points give the *centre* of the
   pixel they index (Sentinel-1 GRD convention), misregistered by a shift plus distortion.

For each secondary dataset N the true displacement is stored beside it as ``truth.tif``: a
2-band Float32 raster on the reference's 10 m grid with dx (columns) and dy (rows) in reference
pixels such that the secondary, co-located on the reference grid and sampled at
(col + dx, row + dy), shows the ground that the reference shows at (col, row).

Usage: ``python resources/generate_demo.py [OUT_DIR] [--speckle-seed N] [--sar-extra JSON]``
(default ``resources/demo``). ``--speckle-seed`` draws the SAR's speckle from its own generator
seeded N (the scene, geometry and truths unchanged), for ``bench/sar_bench.py``.
``--sar-extra`` adds a known field to the SAR's misregistration, in the sensor's own sampling
(before any co-location), for ``bench/sar_pairs_bench.py``: a JSON object with ``shift`` (px),
``affine`` (2x2, per px about the grid centre) and ``waves`` (as :data:`SAR_WAVES`); the SAR's
speckle, geometry and GCPs stay those of the run without it, and its ``truth.tif`` is the
combined field. Without either option the output is the embedded demo, byte for byte.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pystac
import rasterio
from pyproj import Transformer
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.transform import Affine
from scipy import ndimage
from scipy.spatial import cKDTree
from shapely.geometry import Polygon, mapping

RNG = np.random.default_rng(20240610)

REF_CRS = CRS.from_epsg(32631)
REF_RES = 10.0
REF_X0, REF_Y0 = 735_000.0, 4_930_000.0  # upper-left corner of the reference grid
REF_SIZE = 512
FINE = 5.0  # world grid spacing (m)
MARGIN = 1500.0  # world extends this far beyond the reference on every side
FILL = -9999.0

# Optical reflectance (red, nir) and SAR sigma0 (VV, VH in dB) per land-cover class.
CLASSES = {
    "water": ((0.03, 0.02), (-22.0, -28.0)),
    "crop": ((0.05, 0.42), (-9.0, -15.0)),
    "bare": ((0.19, 0.26), (-13.0, -21.0)),
    "grass": ((0.07, 0.31), (-11.0, -18.0)),
    "forest": ((0.035, 0.29), (-7.5, -12.5)),
    "urban": ((0.15, 0.19), (-4.0, -11.0)),
    "road": ((0.12, 0.14), (-17.0, -24.0)),
}
NAMES = list(CLASSES)


def smooth_noise(shape: tuple[int, int], sigma: float, amplitude: float) -> np.ndarray:
    """Band-limited noise with standard deviation ``amplitude``."""
    n = ndimage.gaussian_filter(RNG.standard_normal(shape), sigma, mode="wrap")
    return (amplitude * n / (n.std() + 1e-12)).astype(np.float32)


def world() -> tuple[dict[str, np.ndarray], tuple[float, float], np.ndarray]:
    """Render the landscape: class map and per-band fields on the fine grid.

    Returns (bands, (fine_x0, fine_y0), class map) with bands red, nir, red2, nir2 (second
    date), vv, vh (linear power).
    """
    size_m = REF_SIZE * REF_RES + 2 * MARGIN
    n = int(size_m / FINE)
    fx0, fy0 = REF_X0 - MARGIN, REF_Y0 + MARGIN
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    # Irregular field boundaries: Voronoi cells on warped coordinates.
    wx = xx + smooth_noise((n, n), 40, 12)
    wy = yy + smooth_noise((n, n), 40, 12)
    seeds = RNG.uniform(0, n, size=(260, 2))
    _, label = cKDTree(seeds).query(np.column_stack([wy.ravel(), wx.ravel()]))
    label = label.reshape(n, n)
    field_class = RNG.choice(
        ["crop", "bare", "grass", "forest", "crop", "grass"], size=len(seeds)
    ).astype(object)
    # A town around one point.
    town = np.hypot(seeds[:, 0] - 0.62 * n, seeds[:, 1] - 0.35 * n) < 0.13 * n
    field_class[town] = "urban"
    cls = np.vectorize(NAMES.index)(field_class)[label].astype(np.int8)
    # Streets in the town: a rotated grid of lines.
    ang = np.deg2rad(17.0)
    u = xx * np.cos(ang) + yy * np.sin(ang)
    v = -xx * np.sin(ang) + yy * np.cos(ang)
    streets = ((np.mod(u, 36) < 2.5) | (np.mod(v, 44) < 2.5)) & (cls == NAMES.index("urban"))
    cls[streets] = NAMES.index("road")
    # Roads: straight and gently curved lines across the scene.
    for _ in range(6):
        a = RNG.uniform(0, np.pi)
        c = RNG.uniform(0.1, 0.9) * n
        bend = RNG.uniform(-30, 30)
        d = (
            xx * np.cos(a)
            + yy * np.sin(a)
            - c
            - bend * np.sin(2 * np.pi * (-xx * np.sin(a) + yy * np.cos(a)) / n)
        )
        cls[np.abs(d) < RNG.uniform(1.2, 2.5)] = NAMES.index("road")
    # A meandering river with a varying width.
    centre = (
        0.55 * n
        + 90 * np.sin(2 * np.pi * xx / (0.7 * n))
        + 35 * np.sin(2 * np.pi * xx / (0.23 * n) + 1.0)
    )
    width = 7 + 3 * np.sin(2 * np.pi * xx / (0.4 * n))
    cls[np.abs(yy - centre) < width] = NAMES.index("water")
    # A lake.
    cls[np.hypot(xx - 0.2 * n, yy - 0.25 * n) < 0.05 * n + smooth_noise((n, n), 20, 6)] = (
        NAMES.index("water")
    )

    red = np.zeros((n, n), np.float32)
    nir = np.zeros((n, n), np.float32)
    vv = np.zeros((n, n), np.float32)
    vh = np.zeros((n, n), np.float32)
    for i, name in enumerate(NAMES):
        m = cls == i
        (r, ni), (sv, sh) = CLASSES[name]
        red[m], nir[m], vv[m], vh[m] = r, ni, sv, sh
    # Per-field brightness, crop rows, forest canopy texture, multi-scale variation.
    field_gain = RNG.uniform(0.8, 1.2, size=len(seeds)).astype(np.float32)[label]
    rows_angle = RNG.uniform(0, np.pi, size=len(seeds))[label]
    rows_period = RNG.uniform(3, 7, size=len(seeds))[label]
    rows = 0.5 + 0.5 * np.sin(
        2 * np.pi * (xx * np.cos(rows_angle) + yy * np.sin(rows_angle)) / rows_period
    )
    is_crop = cls == NAMES.index("crop")
    is_forest = cls == NAMES.index("forest")
    canopy = smooth_noise((n, n), 1.5, 1.0)
    texture = 1 + smooth_noise((n, n), 25, 0.06) + smooth_noise((n, n), 4, 0.03)
    land = cls != NAMES.index("water")
    for band in (red, nir):
        band *= np.where(land, field_gain * texture, 1.0).astype(np.float32)
        band *= np.where(is_crop, 0.85 + 0.3 * rows, 1.0).astype(np.float32)
        band *= np.where(is_forest, 1 + 0.15 * canopy, 1.0).astype(np.float32)
    vv += np.where(land, 1.5 * smooth_noise((n, n), 6, 1.0), 0)
    vh += np.where(land, 1.5 * smooth_noise((n, n), 6, 1.0), 0)
    # Second optical date: a quarter of the crop fields harvested (bare), other gain/offset.
    harvested = (RNG.uniform(size=len(seeds)) < 0.25)[label] & is_crop
    red2 = 0.96 * red + 0.004
    nir2 = 1.04 * nir - 0.006
    red2[harvested] = CLASSES["bare"][0][0] * field_gain[harvested]
    nir2[harvested] = CLASSES["bare"][0][1] * field_gain[harvested]
    # Power: point scatterers in the town (corner reflectors of buildings).
    vv_lin = 10 ** (vv / 10)
    vh_lin = 10 ** (vh / 10)
    urban_idx = np.flatnonzero(cls.ravel() == NAMES.index("urban"))
    bright = RNG.choice(urban_idx, size=min(400, urban_idx.size), replace=False)
    vv_lin.ravel()[bright] *= 300.0
    vh_lin.ravel()[bright] *= 60.0
    bands = {"red": red, "nir": nir, "red2": red2, "nir2": nir2, "vv": vv_lin, "vh": vh_lin}
    return bands, (fx0, fy0), cls


#: the SAR dataset's misregistration: shift (px) and waves (amplitude x, y px, wavelength px,
#: phase); bench/sar_bench.py fits this form
SAR_SHIFT = (-1.7, 2.2)
SAR_WAVES = [(0.4, 0.35, 240.0, 1.1)]


def wave_arguments(col: np.ndarray, row: np.ndarray, wavelength: float):
    """Arguments (radians, before the phase) of a wave's x and y terms at (col, row)."""
    return (2 * np.pi * (col + 0.7 * row) / wavelength,
            2 * np.pi * (row - 0.4 * col) / wavelength)  # fmt: skip


def misregistration(
    shift: tuple[float, float], affine: np.ndarray, waves: list[tuple[float, float, float, float]]
):
    """A displacement e(u) in reference pixels (affine about the grid centre + sinusoids).

    ``waves`` holds (amplitude_x, amplitude_y, wavelength px, phase).
    """
    c = REF_SIZE / 2.0

    def e(col: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ex = shift[0] + affine[0, 0] * (col - c) + affine[0, 1] * (row - c)
        ey = shift[1] + affine[1, 0] * (col - c) + affine[1, 1] * (row - c)
        for ax, ay, wl, ph in waves:
            arg_x, arg_y = wave_arguments(col, row, wl)
            ex = ex + ax * np.sin(arg_x + ph)
            ey = ey + ay * np.cos(arg_y + ph)
        return ex, ey

    return e


def truth_field(e) -> np.ndarray:
    """d(p) solving d = e(p + d) on the reference grid (fixed-point iteration)."""
    row, col = np.mgrid[0:REF_SIZE, 0:REF_SIZE].astype(np.float64) + 0.5
    dx = np.zeros_like(col)
    dy = np.zeros_like(row)
    for _ in range(50):
        nx, ny = e(col + dx, row + dy)
        delta = max(np.abs(nx - dx).max(), np.abs(ny - dy).max())
        dx, dy = nx, ny
        if delta < 1e-9:
            break
    return np.stack([dx, dy]).astype(np.float32)


def sample(
    band: np.ndarray, origin: tuple[float, float], xs: np.ndarray, ys: np.ndarray, psf_m: float
) -> np.ndarray:
    """Sample a world band at map coordinates (31N) after a Gaussian PSF of ``psf_m`` metres."""
    blurred = ndimage.gaussian_filter(band, psf_m / FINE / 2.355, mode="nearest")
    j = (xs - origin[0]) / FINE - 0.5
    i = (origin[1] - ys) / FINE - 0.5
    return ndimage.map_coordinates(blurred, [i, j], order=3, mode="nearest").astype(np.float32)


def displaced_map_coords(xs: np.ndarray, ys: np.ndarray, e) -> tuple[np.ndarray, np.ndarray]:
    """Where a sensor that is misregistered by ``e`` actually images map point (xs, ys)."""
    col = (xs - REF_X0) / REF_RES
    row = (REF_Y0 - ys) / REF_RES
    ex, ey = e(col, row)
    return xs - ex * REF_RES, ys + ey * REF_RES


def write_tif(path: Path, arrays: np.ndarray, profile: dict, gcps=None) -> None:
    """Write a GeoTIFF (deflate, floating-point predictor)."""
    if arrays.ndim == 2:
        arrays = arrays[None]
    prof = dict(
        driver="GTiff", dtype="float32", count=arrays.shape[0], height=arrays.shape[1],
        width=arrays.shape[2], compress="deflate", predictor=3, nodata=FILL,
    )  # fmt: skip
    prof.update(profile)
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(arrays.astype(np.float32))
        if gcps is not None:
            dst.gcps = gcps


def footprint_4326(xs: np.ndarray, ys: np.ndarray, crs: CRS) -> Polygon:
    """Outline polygon in EPSG:4326 from outline points in ``crs``."""
    tr = Transformer.from_crs(crs, 4326, always_xy=True)
    lon, lat = tr.transform(xs, ys)
    return Polygon(zip(lon, lat, strict=True))


def make_item(
    out: Path,
    item_id: str,
    when: datetime,
    platform: str,
    foot: Polygon,
    assets: dict,
    props: dict,
) -> None:
    """Write the dataset's STAC item with relative asset hrefs."""
    item = pystac.Item(
        id=item_id, geometry=mapping(foot), bbox=list(foot.bounds), datetime=when,
        properties={"platform": platform, "processing:level": "L2", **props},
    )  # fmt: skip
    for key, fields in assets.items():
        item.add_asset(
            key,
            pystac.Asset(
                href=f"./{key}.tif", media_type=pystac.MediaType.GEOTIFF, roles=["data"],
                title=fields.pop("title"), extra_fields=fields,
            ),
        )  # fmt: skip
    item.stac_extensions = [
        "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
        "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    ]
    if any(k.startswith("sar:") for k in props):
        item.stac_extensions.append("https://stac-extensions.github.io/sar/v1.0.0/schema.json")
    item.set_self_href(str(out / "item.json"))
    item.make_asset_hrefs_relative()
    item.save_object(include_self_link=False)


def main(out: Path, speckle_seed: int | None = None, sar_extra: dict | None = None) -> None:
    """Build the three datasets and their truths under ``out`` (``speckle_seed``: the SAR's
    speckle from its own generator instead of the shared one; ``sar_extra``: a field added to
    the SAR's misregistration, see the module's usage)."""
    bands, origin, _ = world()
    n = REF_SIZE
    # 1. Reference: 10 m, UTM 31N.
    d1 = out / "s2"
    d1.mkdir(parents=True, exist_ok=True)
    rr, cc = np.mgrid[0:n, 0:n].astype(np.float64) + 0.5
    xs, ys = REF_X0 + cc * REF_RES, REF_Y0 - rr * REF_RES
    ref_t = Affine(REF_RES, 0, REF_X0, 0, -REF_RES, REF_Y0)
    for key in ("red", "nir"):
        data = sample(bands[key], origin, xs, ys, 10.0)
        data += RNG.normal(0, 0.002, data.shape).astype(np.float32)
        write_tif(d1 / f"{key}.tif", np.round(data, 4), {"crs": REF_CRS, "transform": ref_t})
    ox = REF_X0 + np.array([0, n, n, 0]) * REF_RES
    oy = REF_Y0 - np.array([0, 0, n, n]) * REF_RES
    make_item(
        d1, "demo-s2-20240610", datetime(2024, 6, 10, 10, 30, tzinfo=UTC), "sentinel-2a",
        footprint_4326(ox, oy, REF_CRS),
        {
            "red": {"title": "Red reflectance",
                    "eo:bands": [{"name": "B04", "common_name": "red"}]},
            "nir": {"title": "NIR reflectance",
                    "eo:bands": [{"name": "B08", "common_name": "nir"}]},
        },
        {"gsd": 10},
    )  # fmt: skip

    # 2. Optical 30 m, UTM 32N, misregistered by an affine, fill-value corner. (Non-affine
    # distortion is in the SAR dataset here, and in bench/flow_bench.py on real images.)
    d2 = out / "l8"
    d2.mkdir(parents=True, exist_ok=True)
    e2 = misregistration((2.6, -1.8), np.array([[0.004, 0.002], [-0.0015, 0.003]]), [])
    crs2 = CRS.from_epsg(32632)
    to2 = Transformer.from_crs(REF_CRS, crs2, always_xy=True)
    to1 = Transformer.from_crs(crs2, REF_CRS, always_xy=True)
    ax = np.array([REF_X0 + 700, REF_X0 + n * REF_RES + 1300])
    ay = np.array([REF_Y0 - n * REF_RES - 1100, REF_Y0 - 500])
    bx, by = to2.transform(np.repeat(ax, 2), np.tile(ay, 2))
    x2 = np.floor(min(bx) / 30) * 30
    y2 = np.ceil(max(by) / 30) * 30
    w2 = int(np.ceil((max(bx) - x2) / 30))
    h2 = int(np.ceil((y2 - min(by)) / 30))
    t2 = Affine(30.0, 0, x2, 0, -30.0, y2)
    r2, c2 = np.mgrid[0:h2, 0:w2].astype(np.float64) + 0.5
    mx, my = to1.transform(x2 + c2 * 30, y2 - r2 * 30)
    sx, sy = displaced_map_coords(mx, my, e2)
    corner = (c2 + r2) < 0.18 * (w2 + h2)  # scene edge: fill value
    for key, src in (("B04", "red2"), ("B05", "nir2")):
        data = sample(bands[src], origin, sx, sy, 30.0)
        data += RNG.normal(0, 0.002, data.shape).astype(np.float32)
        data[corner] = FILL
        write_tif(d2 / f"{key}.tif", np.round(data, 4), {"crs": crs2, "transform": t2})
    truth2 = truth_field(e2)
    write_tif(
        d2 / "truth.tif", np.round(truth2, 3), {"crs": REF_CRS, "transform": ref_t, "nodata": None}
    )
    ox2 = x2 + np.array([0, w2, w2, 0]) * 30
    oy2 = y2 - np.array([0, 0, h2, h2]) * 30
    make_item(
        d2, "demo-l8-20240614", datetime(2024, 6, 14, 10, 20, tzinfo=UTC), "landsat-8",
        footprint_4326(ox2, oy2, crs2),
        {
            "B04": {"title": "Band 4 (red)", "eo:bands": [{"name": "B4", "common_name": "red"}]},
            "B05": {"title": "Band 5 (nir)", "eo:bands": [{"name": "B5", "common_name": "nir08"},
                                                          {"name": "B5", "common_name": "nir"}]},
        },
        {"gsd": 30},
    )  # fmt: skip

    # 3. SAR 20 m ground range, rotated and curved geometry, GCP grid (pixel-centre convention).
    d3 = out / "s1"
    d3.mkdir(parents=True, exist_ok=True)
    extra = sar_extra or {}
    e3 = misregistration(
        tuple(np.add(SAR_SHIFT, extra.get("shift", (0.0, 0.0)))),
        np.asarray(extra.get("affine", np.zeros((2, 2))), np.float64),
        SAR_WAVES + [tuple(w) for w in extra.get("waves", [])],
    )
    w3, h3, spacing = 300, 290, 20.0
    theta = np.deg2rad(-11.0)
    xs0, ys0 = REF_X0 - 300.0, REF_Y0 + 350.0

    def sar_geometry(col: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map coordinates (31N) of SAR pixel index (col, row) centre: rotation + curvature."""
        s, l_ = col * spacing, row * spacing
        x = xs0 + np.cos(theta) * s + np.sin(theta) * l_ + 4e-6 * s**2
        y = ys0 + np.sin(theta) * s - np.cos(theta) * l_ - 3e-6 * s * l_
        return x, y

    r3, c3 = np.mgrid[0:h3, 0:w3].astype(np.float64)
    mx3, my3 = sar_geometry(c3, r3)
    sx3, sy3 = displaced_map_coords(mx3, my3, e3)
    to_ll = Transformer.from_crs(REF_CRS, 4326, always_xy=True)
    gcps = []
    for gl in np.linspace(0, h3 - 1, 10).round():
        for gp in np.linspace(0, w3 - 1, 21).round():
            gx, gy = sar_geometry(np.array(gp), np.array(gl))
            lon, lat = to_ll.transform(gx, gy)
            gcps.append(
                GroundControlPoint(
                    row=float(gl),
                    col=float(gp),
                    x=float(lon),
                    y=float(lat),
                    z=0.0,
                    id=str(len(gcps) + 1),
                )
            )
    speckle_rng = RNG if speckle_seed is None else np.random.default_rng(speckle_seed)
    for key, src in (("s0_db_c_vv", "vv"), ("s0_db_c_vh", "vh")):
        power = sample(bands[src], origin, sx3, sy3, 20.0)
        speckle = speckle_rng.gamma(4.0, 1 / 4.0, size=power.shape).astype(np.float32)
        db = 10 * np.log10(np.maximum(power * speckle, 1e-6))
        write_tif(
            d3 / f"{key}.tif",
            np.round(db, 2),
            {"crs": None, "transform": None},
            gcps=(gcps, CRS.from_epsg(4326)),
        )
    truth3 = truth_field(e3)
    write_tif(
        d3 / "truth.tif", np.round(truth3, 3), {"crs": REF_CRS, "transform": ref_t, "nodata": None}
    )
    edge_c = np.concatenate([np.arange(w3), np.full(h3, w3 - 1), np.arange(w3)[::-1], np.zeros(h3)])
    edge_r = np.concatenate([np.zeros(w3), np.arange(h3), np.full(w3, h3 - 1), np.arange(h3)[::-1]])
    fx, fy = sar_geometry(edge_c[::25], edge_r[::25])
    sar_props = {
        "sar:instrument_mode": "IW", "sar:frequency_band": "C", "sar:center_frequency": 5.405,
        "sar:polarizations": ["VV", "VH"], "sar:product_type": "GRD",
        "sar:observation_direction": "right", "constellation": "sentinel-1",
    }  # fmt: skip
    make_item(
        d3, "demo-s1-20240612", datetime(2024, 6, 12, 17, 45, tzinfo=UTC), "sentinel-1a",
        footprint_4326(fx, fy, REF_CRS),
        {
            "s0_db_c_vv": {"title": "Sigma0 VV (dB)", "raster:bands": [{"unit": "dB"}]},
            "s0_db_c_vh": {"title": "Sigma0 VH (dB)", "raster:bands": [{"unit": "dB"}]},
        },
        sar_props,
    )  # fmt: skip
    print(f"demo written to {out}")


if __name__ == "__main__":
    args = sys.argv[1:]
    seed = None
    if "--speckle-seed" in args:
        i = args.index("--speckle-seed")
        seed = int(args[i + 1])
        del args[i : i + 2]
    extra = None
    if "--sar-extra" in args:
        import json

        i = args.index("--sar-extra")
        extra = json.loads(args[i + 1])
        del args[i : i + 2]
    main(Path(args[0]) if args else Path(__file__).parent / "demo", seed, extra)
