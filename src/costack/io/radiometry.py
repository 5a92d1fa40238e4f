"""Radiometry of catalogue assets: from stored numbers (DN) to the physical values they encode.

STAC describes the encoding of a band with ``scale``, ``offset``, ``nodata`` and ``unit``
(raster extension ``raster:bands[]`` in STAC 1.0; ``bands[]`` with ``raster:scale``,
``raster:offset`` in STAC 1.1, where the same fields may also sit on the asset itself or in
the item's properties). The physical value is ``DN * scale + offset``, applied exactly once.

Sentinel-2 L2A needs more than the item says. From processing baseline 04.00 (25 January 2022)
the stored DN carry a BOA offset of -1000 (``BOA_ADD_OFFSET``; reflectance =
(DN - 1000) / 10000). Catalogues encode this three ways, and all three occur in the public items
this module was written against:

* Earth Search ``sentinel-2-c1-l2a``: ``scale`` 1e-4, ``offset`` -0.1 declared, data as ESA made
  them: the declared offset is right.
* Earth Search ``sentinel-2-l2a``: ``earthsearch:boa_offset_applied: true``, which means the COGs
  were harmonised (the +1000 already removed from the DN), although ``raster:bands`` still
  declares ``offset`` -0.1: applying it again would subtract 0.1 twice, so it is not applied.
* Planetary Computer: no ``raster:bands`` at all; ``s2:processing_baseline`` decides (scale
  1e-4 by the L2A quantification value, offset -0.1 from baseline 04.00 on, DN 0 nodata).

:func:`resolve` returns what to apply and a sentence saying why, which the manifest, the log
and the output item record.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any

import pystac

log = logging.getLogger(__name__)

#: Sentinel-2 L2A quantification value (reflectance = DN / 10000) and BOA offset in DN.
S2_QUANTIFICATION = 10000.0
S2_BOA_ADD_OFFSET = -1000.0
#: Processing baseline from which the BOA offset is in the DN.
S2_OFFSET_BASELINE = 4.0

_S2_BAND = re.compile(r"^B(0[1-9]|1[0-2]|8A)$", re.IGNORECASE)
_REFLECTANCE_COMMON = {
    "coastal", "blue", "green", "red", "rededge", "nir", "nir08", "nir09", "cirrus", "swir16",
    "swir22",
}  # fmt: skip


@dataclass(frozen=True)
class Radiometry:
    """How an asset's stored numbers become physical values.

    Attributes:
        scale, offset: what the source encoding is (``physical = DN * scale + offset``).
        nodata: the fill value the item declares for the band (None if it declares none).
        unit: the physical unit the item declares (None if none).
        source: where scale and offset come from, in words.
    """

    scale: float = 1.0
    offset: float = 0.0
    nodata: float | None = None
    unit: str | None = None
    source: str = "none declared (identity)"

    @property
    def is_identity(self) -> bool:
        """True when the stored numbers are already the physical values."""
        return self.scale == 1.0 and self.offset == 0.0


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out


def band_fields(item: pystac.Item, asset: pystac.Asset) -> dict[str, Any]:
    """The first band's encoding fields (``scale``, ``offset``, ``nodata``, ``unit``) and where
    each was found, first match wins: the asset's ``raster:bands[0]`` (STAC 1.0), its
    ``bands[0]`` (STAC 1.1), fields on the asset itself, then the item's properties."""
    extra = asset.extra_fields
    layers: list[tuple[str, dict[str, Any]]] = []
    if extra.get("raster:bands"):
        layers.append(("asset raster:bands", extra["raster:bands"][0] or {}))
    if extra.get("bands"):
        b = extra["bands"][0] or {}
        layers.append(("asset bands", {
            "scale": b.get("raster:scale", b.get("scale")),
            "offset": b.get("raster:offset", b.get("offset")),
            "nodata": b.get("nodata"), "unit": b.get("unit"),
        }))  # fmt: skip
    own = {
        "scale": extra.get("raster:scale"), "offset": extra.get("raster:offset"),
        "nodata": extra.get("nodata"), "unit": extra.get("unit"),
    }  # fmt: skip
    layers.append(("asset", own))
    props = item.properties
    layers.append(("item", {
        "scale": props.get("raster:scale"), "offset": props.get("raster:offset"),
        "nodata": props.get("nodata"), "unit": props.get("unit"),
    }))  # fmt: skip
    if props.get("raster:bands"):
        layers.append(("item raster:bands", props["raster:bands"][0] or {}))
    out: dict[str, Any] = {}
    for where, fields in layers:
        for name in ("scale", "offset", "nodata", "unit"):
            if name not in out and fields.get(name) is not None:
                out[name] = fields[name]
                out[f"{name}_from"] = where
    return out


#: Largest magnitude a physical value may take: the Float32 outputs hold it.
FLOAT32_MAX = 3.4028234663852886e38


def check_encoding(item: pystac.Item, asset_key: str, asset: pystac.Asset, parameter: str) -> None:
    """Refuse, before any job, an encoding that cannot be right: a scale or offset that is not
    a number, not finite, beyond Float32, or a scale of 0 (every value would be the offset); a
    nodata that is neither a number nor "nan"/"inf"/"-inf". Raises a one-line CostackError."""
    from costack.errors import CostackError

    fields = band_fields(item, asset)
    where = f"item {item.id} asset {asset_key}"
    for name in ("scale", "offset"):
        if name not in fields:
            continue
        value, found = fields[name], fields[f"{name}_from"]
        number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
        problem = None
        if number is None:
            problem = f"is {type(value).__name__} {str(value)[:40]!r}, not a number"
        elif not math.isfinite(number):
            problem = "is not a finite number"
        elif abs(number) > FLOAT32_MAX:
            problem = "is beyond the Float32 range of the outputs"
        elif name == "scale" and number == 0:
            problem = "is 0 (every pixel would be the offset)"
        if problem:
            raise CostackError(parameter, f"{where}: {name} {str(value)[:40]} (in the {found}) "
                               f"{problem}", "fix the item's raster:bands")  # fmt: skip
    if "nodata" in fields:
        value = fields["nodata"]
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok or (
            isinstance(value, str) and value.strip().lower() in {"nan", "inf", "+inf", "-inf"}
        )
        if not ok:
            raise CostackError(parameter, f"{where}: nodata {str(value)[:40]!r} (in the "
                               f"{fields['nodata_from']}) is not a number", "fix the item's "
                               "raster:bands: a number, or \"nan\", \"inf\", \"-inf\"")  # fmt: skip


def check_range(radio: Radiometry, dtype: str, parameter: str, where: str) -> None:
    """Refuse a scale and offset that take an integer raster's stored values beyond Float32
    (the output would be infinite: a scale of 1e39)."""
    import numpy as np

    from costack.errors import CostackError

    kind = np.dtype(dtype).kind
    if kind not in "iu":
        return
    info = np.iinfo(np.dtype(dtype))
    worst = max(
        abs(info.min * radio.scale + radio.offset), abs(info.max * radio.scale + radio.offset)
    )
    if not math.isfinite(worst) or worst > FLOAT32_MAX:
        raise CostackError(parameter, f"{where}: scale {radio.scale:g} and offset "
                           f"{radio.offset:g} take its {dtype} values beyond the Float32 range",
                           "fix the item's raster:bands")  # fmt: skip


def _nodata_value(value: Any) -> float | None:
    if isinstance(value, str):
        low = value.strip().lower()
        if low == "nan":
            return math.nan
        if low in {"inf", "+inf"}:
            return math.inf
        if low == "-inf":
            return -math.inf
    return _number(value)


def processing_baseline(item: pystac.Item) -> float | None:
    """The Sentinel-2 processing baseline (``s2:processing_baseline``, e.g. ``"05.09"``)."""
    props = item.properties
    for key in ("s2:processing_baseline", "sentinel:processing_baseline"):
        value = _number(props.get(key))
        if value is not None:
            return value
    return None


def is_s2_l2a(item: pystac.Item) -> bool:
    """True for a Sentinel-2 Level-2A item."""
    props = item.properties
    platform = str(props.get("platform", "")).lower()
    if not platform.startswith("sentinel-2") and "s2:processing_baseline" not in props:
        return False
    product_type = str(props.get("s2:product_type", "")).upper()
    names = f"{item.id} {item.collection_id or ''}".lower()
    return product_type.endswith("2A") or "l2a" in names


def is_s2_reflectance(asset_key: str, asset: pystac.Asset) -> bool:
    """True for an S2 surface reflectance band (not AOT, WVP, SCL or a multi-band TCI)."""
    bands = list(asset.extra_fields.get("eo:bands") or asset.extra_fields.get("bands") or [])
    if len(bands) > 1:
        return False
    if _S2_BAND.match(asset_key):
        return True
    for b in bands:
        name = str(b.get("name", ""))
        common = b.get("common_name") or b.get("eo:common_name")
        if _S2_BAND.match(name) or common in _REFLECTANCE_COMMON:
            return True
    return False


def resolve(
    item: pystac.Item,
    asset_key: str,
    asset: pystac.Asset,
    file_scale: float = 1.0,
    file_offset: float = 0.0,
) -> Radiometry:
    """The encoding of one asset: what ``DN * scale + offset`` turns it into physical values.

    Args:
        item, asset_key, asset: the asset as the catalogue describes it.
        file_scale, file_offset: the raster's own GDAL scale/offset metadata (used when the
            item declares none).
    """
    fields = band_fields(item, asset)
    nodata = _nodata_value(fields.get("nodata"))
    unit = fields.get("unit")
    scale = _number(fields.get("scale"))
    offset = _number(fields.get("offset"))
    sources = []
    if scale is not None or offset is not None:
        where = fields.get("scale_from") or fields.get("offset_from")
        sources.append(f"declared in the {where}")
    elif (file_scale, file_offset) != (1.0, 0.0):
        scale, offset = file_scale, file_offset
        sources.append("the raster's own scale/offset metadata")
    if is_s2_l2a(item) and is_s2_reflectance(asset_key, asset):
        if scale is None:
            scale = 1.0 / S2_QUANTIFICATION
            sources.append("Sentinel-2 L2A quantification value 10000 (not declared)")
        baseline = processing_baseline(item)
        boa = S2_BOA_ADD_OFFSET * scale
        applied = item.properties.get("earthsearch:boa_offset_applied")
        declared = offset
        if applied is True:
            offset = 0.0
            note = "BOA offset already removed from the DN (earthsearch:boa_offset_applied)"
            if declared:
                note += f"; the declared offset {declared:g} is not applied again"
            sources.append(note)
        elif baseline is not None and baseline >= S2_OFFSET_BASELINE:
            offset = boa
            if declared is None or not math.isclose(declared, boa):
                sources.append(
                    f"processing baseline {baseline:05.2f} >= 04.00: BOA offset -1000 DN"
                    + (f" (the declared offset {declared:g} is replaced)" if declared else "")
                )
        elif baseline is not None:
            if declared:
                sources.append(
                    f"processing baseline {baseline:05.2f} < 04.00 has no BOA offset; "
                    f"the declared offset {declared:g} is not applied"
                )
            offset = 0.0
        if nodata is None:
            nodata = 0.0
    scale = 1.0 if scale is None else scale
    offset = 0.0 if offset is None else offset
    if not sources:
        sources.append("none declared (identity)")
    return Radiometry(scale, offset, nodata, unit, "; ".join(sources))
