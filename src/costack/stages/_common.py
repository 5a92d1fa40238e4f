"""What several stages read the same way (not a stage: no rule of its own). The flow mode of a
co-located pair decided from the rasters themselves (the tie-point, flow and QC steps each take
the same decision on the same pair), and the tie-point model JSON read and written through
:mod:`costack.io.files` into :class:`~costack.registration.tiepoint_model.TiePointModel`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio

from costack.io.files import read_json, write_json
from costack.registration.tiepoint_model import MODEL_FIX, TiePointModel


def read_model(path: str | Path) -> TiePointModel:
    """Read a tie-point model JSON; a missing file or one that is not a model is a one-line
    error (``--model``)."""
    return TiePointModel.from_data(
        read_json(path, "--model", "a tie-point model JSON", MODEL_FIX), path
    )


def write_model(model: TiePointModel, path: str | Path) -> None:
    """Write a tie-point model JSON atomically."""
    write_json(path, model.data)


def decide_mode(
    requested: str, ref_tif: str | Path, sec_tif: str | Path, max_displacement: float = 16.0
) -> tuple[str, dict]:
    """The GeFolki-family mode for a co-located pair of rasters and the evidence for it.

    ``auto`` follows :func:`costack.registration.folki.resolve_mode`: GEFolki when the assets'
    kinds differ
    (the ``costack_kind`` tags co-location writes; untagged rasters count as optical) or when
    their local contrast is inverted in a quarter of the windows, else EFolki. Both rasters are
    read reduced to at most 512 px (GDAL average of the valid pixels), so the tie-point, flow
    and QC steps, which each call this on the same pair, take the same decision cheaply at any
    raster size. Another mode is returned as asked."""
    import math

    from costack.io.rasters import read_average
    from costack.registration.folki import resolve_mode

    def reduced(path: str | Path) -> tuple[np.ndarray, str, int]:
        with rasterio.open(path) as src:
            f = max(1, math.ceil(max(src.height, src.width) / 512))
            shape = (math.ceil(src.height / f), math.ceil(src.width / f))
            return read_average(src, shape), src.tags().get("costack_kind", "optical"), f

    if requested != "auto":
        return requested, {"requested": requested, "reason": "as requested"}
    ref, ref_kind, f = reduced(ref_tif)
    sec, sec_kind, _ = reduced(sec_tif)
    if ref.shape != sec.shape:
        from costack.errors import CostackError

        raise CostackError(
            "flow", f"{sec_tif} is not on the grid of {ref_tif}", "co-locate both first"
        )
    mode, evidence = resolve_mode(requested, ref, sec, ref_kind, sec_kind, max_displacement / f)
    if "contrast" in evidence:
        rel = evidence["contrast"]
        rel["coarse_shift"] = [c * f for c in rel["coarse_shift"]]
        rel["read_reduced_by"] = f
    return mode, evidence


def matches_on_descriptors(
    ref_tif: str | Path, sec_tif: str | Path, max_displacement: float = 16.0
) -> tuple[bool, dict]:
    """Whether the tie points and the QC match this pair on CFOG descriptors rather than on
    intensities, from the rasters themselves whatever flow mode the user asked for: the pairs
    ``auto`` sends to GEFolki (kinds differ: SAR against optical) and those whose local contrast
    is inverted (:func:`decide_mode`); with the decision's evidence."""
    mode, why = decide_mode("auto", ref_tif, sec_tif, max_displacement)
    return mode == "gefolki" or bool(why.get("invert_secondary")), why
