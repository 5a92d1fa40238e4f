"""Localise two real Earth Search items (Sentinel-2 L2A 13TDE and Landsat C2 L2 033032, same
day) per ../shared/data/stac_items/README.md, over one ground: the UAVSAR orthophoto's texture
placed at 5 m on the map, sampled by each sensor at its own lattice (area mean), Landsat
displaced by a known (+45 m, -30 m) shift plus a gentle affine. Writes FOLDER/s2/item.json,
FOLDER/ls/item.json: a pair to run the workflow on by hand (a config listing both items; the
Landsat shift is the truth). Usage: python bench/real_items.py FOLDER"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import rasterio
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from catalogue import ES_L2A_13TDE, ES_LANDSAT, encode, lattice, load, localise  # noqa: E402

ORTHO = (Path(__file__).resolve().parents[2] / "shared/data/radar_optical_uavsar/"
         "lngley_05521_09059_000_090813_L090_CX_01_pauli_x016_y020_optique.tif")  # fmt: skip
S2_WIN = (5000, 6000, 400, 400)  # rows, cols of the 10 m lattice: 4 km
TEXEL = 5.0


def main(folder: Path) -> None:
    with rasterio.open(ORTHO) as src:
        rgb = src.read().astype(np.float64)
    lum = rgb.mean(axis=0) / 255.0
    red_t = rgb[0] / 255.0
    _, t = lattice(load(ES_L2A_13TDE), "nir")
    x0, y0 = t * (S2_WIN[1], S2_WIN[0])  # map origin of the texture (upper-left)

    def sample(tex: np.ndarray, transform, window, shift=(0.0, 0.0), px=10.0) -> np.ndarray:
        r0, c0, h, w = window
        rows, cols = np.mgrid[r0 : r0 + h, c0 : c0 + w] + 0.5
        xs, ys = transform * (cols, rows)
        xs = np.asarray(xs) - shift[0] + 2e-3 * (np.asarray(ys) - y0)  # a gentle shear
        ys = np.asarray(ys) - shift[1]
        tr, tc = (y0 - ys) / TEXEL - 0.5, (xs - x0) / TEXEL - 0.5
        blurred = ndimage.gaussian_filter(tex, 0.45 * px / TEXEL)
        return ndimage.map_coordinates(blurred, [tr, tc], order=1, mode="nearest")

    s2, ls = {}, {}
    for band, tex, (lo, hi) in (("nir", lum, (0.12, 0.45)), ("red", red_t, (0.03, 0.15))):
        refl = lo + (hi - lo) * tex
        _, ts = lattice(load(ES_L2A_13TDE), band)
        s2[band] = (S2_WIN, encode(ES_L2A_13TDE, sample(refl, ts, S2_WIN)))
        key = "nir08" if band == "nir" else band
        _, tl = lattice(load(ES_LANDSAT), key)
        inv = ~tl
        c, r = inv * (x0, y0)
        win = (int(r) + 2, int(c) + 2, 128, 128)
        ls[key] = (win, encode(ES_LANDSAT, sample(refl, tl, win, shift=(45.0, -30.0), px=30.0)))
    localise(ES_L2A_13TDE, folder / "s2", s2)
    localise(ES_LANDSAT, folder / "ls", ls, nodata_tag=False)
    print(folder / "s2" / "item.json", folder / "ls" / "item.json")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
