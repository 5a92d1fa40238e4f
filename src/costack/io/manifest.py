"""The manifest as a contract (``results/discover/manifest.csv``): one row per listed asset,
written by the discover stage and read by the grid, co-location and catalog stages and the
run plan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from costack.errors import CostackError, printable

MANIFEST_COLUMNS = [
    "key", "dataset", "band", "asset_key", "item_id", "item_href", "datetime", "platform",
    "href", "gdal_path", "crs", "res_x", "res_y", "width", "height", "footprint", "nodata",
    "dtype", "georef", "kind", "db", "common_name", "polarization", "sar_frequency_band",
    "sar_instrument_mode", "sar_product_type", "sar_center_frequency", "href_given",
    "constellation", "scale", "offset", "source_scale", "source_offset", "unit",
    "radiometry", "footprint_native", "item_nodata", "item_ref",
]  # fmt: skip


#: one DATASET.BAND token of the service's asset list
_TOKEN = re.compile(r"^(?P<dataset>[1-9][0-9]*)\.(?P<band>[A-Za-z_][A-Za-z0-9_\-]*)$")


@dataclass(frozen=True, order=True)
class AssetRef:
    """One ``DATASET.BAND`` token of the asset list."""

    dataset: int
    band: str

    @property
    def key(self) -> str:
        """The token as written, also the asset key of the output item (``1.nir``)."""
        return f"{self.dataset}.{self.band}"

    @classmethod
    def parse(cls, token: str, parameter: str = "assets") -> AssetRef:
        """Parse one token, e.g. ``"2.nir"``; raise a CostackError naming ``parameter``."""
        if token != token.strip() or " " in token:
            raise CostackError(
                parameter,
                f"asset token {token!r} contains spaces",
                "write the list as comma-separated DATASET.BAND tokens without spaces, "
                "e.g. 1.nir,2.nir",
            )
        match = _TOKEN.fullmatch(token)
        if not match:
            raise CostackError(
                parameter,
                f"asset token {token!r} is malformed",
                "write DATASET.BAND with a 1-based dataset index and a band name, e.g. 1.nir",
            )
        return cls(int(match["dataset"]), match["band"])


def write_manifest(manifest: pd.DataFrame, path: str | Path) -> None:
    """Write the manifest as CSV (the contract of the discover step)."""
    manifest.to_csv(path, index=False)


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest written by :func:`write_manifest`; a file that is not one (missing,
    not CSV, columns missing) is refused with one line naming it."""
    fix = "give the discover step's manifest (results/discover/manifest.csv)"
    floats = ("nodata", "item_nodata", "scale", "offset", "source_scale", "source_offset")
    try:
        df = pd.read_csv(path, keep_default_na=False,
                         na_values={k: ["", "nan", "NaN"] for k in floats})  # fmt: skip
    except FileNotFoundError as err:
        raise CostackError("manifest", f"{path} does not exist", fix) from err
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as err:
        reason = " ".join(str(err).split())[:120]
        raise CostackError("manifest", f"{path} is not a manifest CSV ({reason})", fix) from err
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise CostackError(
            "manifest", f"{path} is not a manifest CSV (no column {', '.join(missing[:4])}"
            f"{', ...' if len(missing) > 4 else ''})", fix,
        )  # fmt: skip
    try:
        for k in floats:
            df[k] = df[k].astype(float)
    except ValueError as err:
        raise CostackError("manifest", f"{path}: {err}", fix) from err
    df["db"] = df["db"].astype(str).str.lower().eq("true")
    return df.set_index("key", drop=False)


def manifest_row(manifest: pd.DataFrame, key: str, where: str | Path = "manifest") -> pd.Series:
    """The manifest's row of asset ``key``; an unknown key is one line naming the known ones."""
    if key not in manifest.index:
        known = ", ".join(map(str, manifest.index[:8])) + (", ..." if len(manifest) > 8 else "")
        raise CostackError("key", f"{key!r} is not an asset of {where} (it has {known})",
                           "give one of its keys, e.g. 2.nir")  # fmt: skip
    return manifest.loc[key]


def dataset_label(platform: object, datetime: object, n: int) -> str:
    """A dataset's label in logs, figures and the report: its item's platform and acquisition
    date, made printable and short (item text is data: no line breaks or terminal codes)."""
    platform = printable(" ".join(str(platform).split()))[:60]
    date = printable(str(datetime)[:10])
    return " ".join(x for x in (platform, date) if x) or f"dataset {n}"


def registration_label(manifest_csv: str | Path, n: int | str, key: str) -> str:
    """``dataset N, PLATFORM DATE (KEY)``, from the manifest: a job reads its label there, not
    from a rule's params (Snakemake's report writes params into a script block unescaped, so
    item text must never be one; see docs/security.md)."""
    return f"dataset {n}, {dataset_labels(manifest_csv, {n: key})[str(n)]} ({key})"


def dataset_labels(manifest_csv: str | Path, matching: dict) -> dict[str, str]:
    """{dataset number: :func:`dataset_label`} of each dataset's matching asset ``key``."""
    rows = read_manifest(manifest_csv)
    out = {}
    for n, key in matching.items():
        row = manifest_row(rows, str(key), manifest_csv)
        out[str(n)] = dataset_label(row["platform"], row["datetime"], int(n))
    return out
