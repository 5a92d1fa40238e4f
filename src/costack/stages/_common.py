"""What several stages read the same way (not a stage: no rule of its own). The flow mode of a
co-located pair decided from the rasters themselves (the tie-point, flow and QC steps each take
the same decision on the same pair), and the tie-point model JSON read and written through
:mod:`costack.io.files` into :class:`~costack.registration.tiepoint_model.TiePointModel`."""

from __future__ import annotations

import math
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
    kinds differ (the ``costack_kind`` tags co-location writes) or when their local contrast is
    inverted in a quarter of the windows, else EFolki. When neither raster carries a kind tag
    (rasters costack did not write), the kinds come from the pixels
    (:func:`costack.registration.modality.assess`: a multimodal pair one of whose images is
    speckled is radar against optical) and the evidence is kept under ``modality``; a tag, when
    present, wins. A multimodal untagged pair in which no side reads as radar is marked
    ``verify_with`` the other mode: the flow runs both and keeps the one whose co-registered
    secondary is the more similar (:func:`better_by_similarity`), so that a wrong guess costs
    little. Both rasters are read reduced to at most 512 px (GDAL average of the valid pixels)
    for the contrast and at full resolution over their central 1024 px for the speckle, so the
    tie-point, flow and QC steps, which each call this on the same pair, take the same decision
    cheaply at any raster size. Another mode is returned as asked."""
    from costack.io.rasters import read_average
    from costack.registration.folki import resolve_mode

    def reduced(path: str | Path) -> tuple[np.ndarray, str | None, int]:
        with rasterio.open(path) as src:
            f = max(1, math.ceil(max(src.height, src.width) / 512))
            shape = (math.ceil(src.height / f), math.ceil(src.width / f))
            return read_average(src, shape), src.tags().get("costack_kind"), f

    if requested != "auto":
        return requested, {"requested": requested, "reason": "as requested"}
    ref, ref_kind, f = reduced(ref_tif)
    sec, sec_kind, _ = reduced(sec_tif)
    if ref.shape != sec.shape:
        from costack.errors import CostackError

        raise CostackError(
            "flow", f"{sec_tif} is not on the grid of {ref_tif}", "co-locate both first"
        )
    untagged = ref_kind is None and sec_kind is None
    ref_kind, sec_kind = ref_kind or "optical", sec_kind or "optical"
    modality = None
    if untagged:
        modality = _modality_from_pixels(ref_tif, sec_tif, ref, sec, max_displacement / f)
        if modality["radar"] == "reference":
            ref_kind = "sar"
        elif modality["radar"] == "secondary":
            sec_kind = "sar"
    rel = None if modality is None else modality["contrast"]
    mode, evidence = resolve_mode(
        requested, ref, sec, ref_kind, sec_kind, max_displacement / f, contrast=rel
    )
    if modality is not None:
        if "contrast" in evidence:  # the same relation, read once
            modality.pop("contrast", None)
        evidence["kinds_from"] = "pixels"
        evidence["modality"] = modality
        if modality["radar"] is not None:
            evidence["reason"] = f"{evidence['reason']}, read from the pixels: {modality['reason']}"
        elif modality["multimodal"] and not evidence.get("invert_secondary"):
            evidence["verify_with"] = "efolki" if mode == "gefolki" else "gefolki"
    else:
        evidence["kinds_from"] = "tags"
    for rel in (evidence.get("contrast"), (modality or {}).get("contrast")):
        if rel is not None and "read_reduced_by" not in rel:
            rel["coarse_shift"] = [c * f for c in rel["coarse_shift"]]
            rel["read_reduced_by"] = f
    return mode, evidence


def _modality_from_pixels(
    ref_tif: str | Path, sec_tif: str | Path, ref: np.ndarray, sec: np.ndarray, max_shift: float
) -> dict:
    """:func:`costack.registration.modality.assess` of an untagged pair: the contrast relation
    of the reduced images, then, when it reads as multimodal, the speckle of the central
    1024 px (:data:`~costack.registration.modality.SPECKLE_CROP`) of each raster read at full
    resolution (a pair that correlates as one sensor is not read further: nothing to decide)."""
    from rasterio.windows import Window

    from costack.registration.folki import contrast_relation
    from costack.registration.modality import assess, central_crop, is_multimodal

    def centre(path: str | Path) -> np.ndarray:
        with rasterio.open(path) as src:
            rows, cols = central_crop((src.height, src.width))
            win = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
            data = src.read(1, window=win, masked=True)
        return np.ma.filled(data.astype(np.float32), np.nan)

    rel = contrast_relation(ref, sec, max_shift)
    if not is_multimodal(rel):
        return {"multimodal": False, "radar": None, "contrast": rel,
                "reason": "the pair correlates as one sensor"}  # fmt: skip
    out = assess(centre(ref_tif), centre(sec_tif), rel)
    out["contrast"] = rel
    return out


def decide_ratio(given: float | None, sec_tif: str | Path) -> tuple[float, dict]:
    """The secondary's native pixel over the grid's (``resolution_ratio`` of the tie-point,
    flow and QC steps) and where it comes from: as ``given`` (the workflow passes the plan's,
    a user ``--resolution-ratio``); else the ``costack_resolution_ratio`` tag co-location
    writes; else read from the pixels of the raster's central 1024 px
    (:func:`costack.registration.modality.resampling_ratio`: the periodic trace of an
    interpolation from a coarser grid), so that rasters costack did not write get the ratio
    their co-location would have tagged. Returns (ratio, evidence)."""
    from rasterio.windows import Window

    from costack.registration.modality import central_crop, resampling_ratio

    if given is not None:
        ratio = float(given)
        if not (math.isfinite(ratio) and ratio > 0):
            from costack.errors import CostackError

            raise CostackError(
                "--resolution-ratio",
                f"{given} is not a positive number",
                "give the secondary's native pixel over the grid's, e.g. 2",
            )
        return ratio, {"value": ratio, "from": "given"}
    with rasterio.open(sec_tif) as src:
        tag = src.tags().get("costack_resolution_ratio")
        if tag is None:
            rows, cols = central_crop((src.height, src.width))
            win = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
            crop = np.ma.filled(src.read(1, window=win, masked=True).astype(np.float32), np.nan)
    if tag is not None:
        try:
            ratio = float(tag)
        except ValueError:
            ratio = float("nan")
        if not (math.isfinite(ratio) and ratio > 0):
            from costack.errors import CostackError

            raise CostackError("secondary", f"{sec_tif}: costack_resolution_ratio tag {tag!r} "
                               "is not a positive number", "give --resolution-ratio")  # fmt: skip
        return ratio, {"value": ratio, "from": "tag"}
    trace = resampling_ratio(crop)
    return float(trace["ratio"]), {"value": float(trace["ratio"]), "from": "pixels", **trace}


def better_by_similarity(
    ref: np.ndarray, sec: np.ndarray, first, second
) -> tuple[bool, tuple[float, float]]:
    """Whether the flow result ``second`` co-registers ``sec`` better than ``first``: the CFOG
    similarity (:func:`costack.registration.matching.multimodal_similarity`, NCC of the
    descriptors, Ye et al. 2019, eq. 6) of the reference with the secondary warped by each;
    ``first`` is kept on a tie or when ``second``'s score is unknown. Returns (second is
    better, the two scores rounded)."""
    from costack.registration.imaging import warp_array
    from costack.registration.matching import cfog_of, multimodal_similarity

    ref_desc = cfog_of(ref)
    one = multimodal_similarity(ref, warp_array(sec, first.dx, first.dy), ref_desc)
    two = multimodal_similarity(ref, warp_array(sec, second.dx, second.dy), ref_desc)
    better = bool(np.isfinite(two) and not two <= one)
    return better, (round(one, 5), round(two, 5))


def matches_on_descriptors(
    ref_tif: str | Path, sec_tif: str | Path, max_displacement: float = 16.0
) -> tuple[bool, dict]:
    """Whether the tie points and the QC match this pair on CFOG descriptors rather than on
    intensities, from the rasters themselves whatever flow mode the user asked for: the pairs
    ``auto`` sends to the structure mode or GEFolki (kinds differ: SAR against optical) and
    those whose local contrast is inverted (:func:`decide_mode`); with the decision's evidence."""
    mode, why = decide_mode("auto", ref_tif, sec_tif, max_displacement)
    return mode in ("gefolki", "structure") or bool(why.get("invert_secondary")), why
