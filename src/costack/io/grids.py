"""The common grid as a contract (``results/grid/grid.json``): CRS, transform and size, read
and written by every stage that works on the grid.

The grid stage (:mod:`costack.stages.grid`) computes it; :class:`Grid` is what the others hold.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.warp import transform_geom
from shapely.geometry import Polygon, box, mapping, shape

from costack.errors import CostackError
from costack.io.georef import WGS84


@dataclass(frozen=True)
class Grid:
    """A north-up pixel grid: CRS, affine transform (GDAL convention) and size."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols)."""
        return self.height, self.width

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the grid's CRS."""
        return rasterio.transform.array_bounds(self.height, self.width, self.transform)[:4]

    def footprint(self, crs: CRS = WGS84) -> Polygon:
        """The grid's outline in ``crs`` (EPSG:4326 by default), densified along its edges."""
        outline = box(*self.bounds).segmentize(max(self.bounds[2] - self.bounds[0], 1) / 16)
        return shape(transform_geom(self.crs, crs, mapping(outline)))

    def to_json(self) -> dict:
        """A JSON-able description (CRS as WKT and EPSG code where it has one; None for the
        pixel grid of rasters without georeferencing)."""
        return {
            "crs": self.crs.to_wkt() if self.crs else None,
            "epsg": self.crs.to_epsg() if self.crs else None,
            "transform": list(self.transform)[:6],
            "width": self.width,
            "height": self.height,
            "bounds": list(self.bounds),
        }

    @classmethod
    def from_json(cls, data: dict) -> Grid:
        """Inverse of :meth:`to_json`."""
        return cls(
            CRS.from_wkt(data["crs"]) if data["crs"] else None,
            Affine(*data["transform"]),
            int(data["width"]),
            int(data["height"]),
        )

    def save(self, path: str | Path) -> None:
        """Write the grid as JSON (the contract of the grid step), atomically."""
        from costack.io.files import write_json  # which imports this module

        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Grid:
        """Read a grid written by :meth:`save`; a file that is not one is refused with one
        line naming it."""
        fix = "give the grid step's grid.json (results/grid/grid.json)"
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls.from_json(data)
        except FileNotFoundError as err:
            raise CostackError("grid", f"{path} does not exist", fix) from err
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
            what = f"no {err}" if isinstance(err, KeyError) else " ".join(str(err).split())[:120]
            raise CostackError("grid", f"{path} is not a grid JSON ({what})", fix) from err


def resolution_ratio(res_x: float, res_y: float, grid: Grid) -> float:
    """An asset's native pixel size (the larger side) over the grid's, to 3 decimals: how much
    coarser than the grid the asset really is (a 30 m asset on a 10 m grid: 3)."""
    return round(float(max(res_x, res_y)) / abs(grid.transform.a), 3)


#: Largest disagreement (pixels of the first grid) between two rasters' georeferencing that is
#: still one grid: the rounding of transforms written by other software, not a misplacement.
SAME_GRID_PX = 1e-6


def grid_offset_px(a: Grid, b: Grid) -> float:
    """How far apart (pixels of ``a``) the transforms of ``a`` and ``b`` put the corners of
    ``a``'s pixel grid: 0 for one grid, the shift for a translated one, and it also catches a
    pixel size or a rotation that differ."""
    inv = ~a.transform
    worst = 0.0
    for col, row in ((0, 0), (a.width, 0), (0, a.height), (a.width, a.height)):
        c2, r2 = inv @ (b.transform @ (col, row))
        worst = max(worst, float(np.hypot(c2 - col, r2 - row)))
    return worst


def grid_difference(a: Grid, b: Grid) -> str | None:
    """How grid ``b`` differs from grid ``a`` (CRS, size, or pixels more than
    :data:`SAME_GRID_PX` away), in words; None when they are one grid."""
    if a.crs != b.crs:
        return f"its CRS is {_crs_name(b.crs)}, not {_crs_name(a.crs)}"
    if b.shape != a.shape:
        return f"its size is {b.width}x{b.height} px, not {a.width}x{a.height}"
    if (off := grid_offset_px(a, b)) > SAME_GRID_PX:
        return f"its pixels are up to {off:.3g} px away from the first's"
    return None


def _crs_name(crs) -> str:
    if crs is None:
        return "none"
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else "a custom CRS"
