"""The report stage.

Rule ``render_overview`` (``costack report``): the run's overview page, ``results/report.html``,
the page a user opens first (:func:`run_overview`). Rule ``plot_registration``: per secondary
dataset, the figures and the table that Snakemake's report shows: red/cyan composites before and
after co-registration (as Yan et al. 2016, Fig. 6), the displacement on a fixed scale and the
confidence, and the fitted models with the QC residual and the verdict.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
import rasterio
from rasterio.windows import Window

from costack.io.figures import displacement_png, displacement_scale, png_figure, stretch
from costack.io.files import atomic_path
from costack.io.manifest import registration_label  # noqa: F401 (the rule script's label)
from costack.io.rasters import read_average, read_float32, read_window
from costack.stages._common import read_model


def high_contrast_windows(ref: np.ndarray, size: int = 96, count: int = 3) -> list[tuple[int, int]]:
    """Upper-left corners of ``count`` non-overlapping windows with the most gradient energy."""
    from scipy import ndimage

    g = ndimage.gaussian_gradient_magnitude(np.nan_to_num(ref), 1.0)
    g[~np.isfinite(ref)] = 0
    energy = ndimage.uniform_filter(g, size)
    h, w = ref.shape
    half = size // 2
    out: list[tuple[int, int]] = []
    e = energy.copy()
    e[:half] = e[h - half :] = 0
    e[:, :half] = e[:, w - half :] = 0
    for _ in range(count):
        r, c = np.unravel_index(np.argmax(e), e.shape)
        if e[r, c] <= 0:
            break
        out.append((int(r - half), int(c - half)))
        e[max(0, r - size) : r + size, max(0, c - size) : c + size] = 0
    return out


#: Figures of grids larger than this (pixels a side) are drawn from reduced reads: about three
#: times a map's width in the figure. At 4096 the flow maps alone took matplotlib about 1.2 GB
#: (plot_registration on a 4096x4096 grid: 1.63 GB peak, 10.3 s CPU; at 2048: 0.66 GB, 3.6 s).
FIGURE_MAX_SIDE = 2048


def _reduction(height: int, width: int) -> int:
    """The integer reduction that brings a grid within FIGURE_MAX_SIDE pixels a side."""
    return max(1, math.ceil(max(height, width) / FIGURE_MAX_SIDE))


def plot_composites(
    ref_tif: str | Path, before_tif: str | Path, after_tif: str | Path, png: str | Path,
    label: str,
) -> None:  # fmt: skip
    """Red/cyan composites (reference red, secondary cyan) before and after co-registration on
    high-contrast subsets, as the service's documentation and Yan et al. 2016 (Fig. 6) show
    them: colour fringes are misregistration, grey is agreement.

    A grid over FIGURE_MAX_SIDE pixels a side is searched for its windows on a reduced read
    (GDAL average), and only the windows are read at full resolution, so memory stays bounded
    by the figure rather than the grid."""
    with rasterio.open(ref_tif) as src:
        h, w = src.height, src.width
        f = _reduction(h, w)
        small = read_average(src, (math.ceil(h / f), math.ceil(w / f))) if f > 1 else None
    size = int(min(96, min(h, w) // 3))
    if small is None:
        wins = high_contrast_windows(read_float32(ref_tif)[0], size)
    else:
        found = high_contrast_windows(small, max(8, size // f))
        wins = [(min(r * f, h - size), min(c * f, w - size)) for r, c in found]
    n = max(1, len(wins))
    with (
        png_figure(png, nrows=2, ncols=n, figsize=(4 * n, 8.4), squeeze=False) as (fig, axes),
        rasterio.open(ref_tif) as ref_src,
        rasterio.open(before_tif) as before_src,
        rasterio.open(after_tif) as after_src,
    ):
        for j, (r, c) in enumerate(wins):
            win = Window(c, r, size, size)
            red = stretch(read_window(ref_src, win))
            for i, (name, src) in enumerate((("before", before_src), ("after", after_src))):
                cyan = stretch(read_window(src, win))
                axes[i, j].imshow(np.dstack([red, cyan, cyan]))
                title = f"{name} co-registration, rows {r}-{r + size}, cols {c}-{c + size}"
                axes[i, j].set_title(title, fontsize=8)
                axes[i, j].set_axis_off()
        fig.suptitle(f"{label}: reference (red) over secondary (cyan)")


def plot_flow(
    flow_tif: str | Path, confidence_tif: str | Path, png: str | Path, label: str
) -> None:
    """The displacement as direction and magnitude on a fixed scale labelled in grid pixels
    (:func:`costack.io.figures.displacement_png`: colour wheel and arrows, magnitude on a 0-S
    colour bar, S the round scale above the 99th percentile) and the confidence, read reduced by
    GDAL's average beyond FIGURE_MAX_SIDE pixels a side (a map shows no more)."""
    with rasterio.open(flow_tif) as src, rasterio.open(confidence_tif) as csrc:
        f = _reduction(src.height, src.width)
        if f == 1:
            flow = src.read().astype(np.float32)
            conf = read_window(csrc)
        else:
            shape = (math.ceil(src.height / f), math.ceil(src.width / f))
            flow = read_average(src, shape, [1, 2])  # one pass: the bands are interleaved
            conf = read_average(csrc, shape)
    scale = displacement_scale([np.hypot(flow[0], flow[1])])
    shown = "" if f == 1 else f" (shown reduced 1:{f})"
    png_bytes = displacement_png(flow[0], flow[1], conf, scale, f"{label}: displacement{shown}")
    with atomic_path(png) as tmp:
        Path(tmp).write_bytes(png_bytes)


def models_table(
    model_json: str | Path,
    qc_json: str | Path,
    out_html: str | Path,
    summary_json: str | Path | None = None,
    dataset: str | None = None,
    label: str = "",
) -> None:
    """The dataset's verdict as a banner, then one row per model: RMSE, tie points; plus the
    QC residual before and after co-registration (HTML, which Snakemake's report shows
    inline)."""
    import html

    import pandas as pd

    model = read_model(model_json)
    qc = json.loads(Path(qc_json).read_text(encoding="utf-8"))
    rows = [
        {
            "model": name,
            "chosen": name == model.chosen,
            "rmse_px": round(m["rmse"], 4),
            "tie_points": m["n"],
        }  # fmt: skip
        for name, m in model.fits.items()
    ]
    for when in ("before", "after"):  # the gain: the QC residual on both sides
        q = qc.get(when, {})
        figure = q.get("pixels", {}).get("median", "") if q.get("figure") == "measured" else (
            "insufficient")  # fmt: skip
        rows.append({"model": f"residual {when} co-registration (median px)", "chosen": "",
                     "rmse_px": figure, "tie_points": q.get("points", 0)})  # fmt: skip
    table = pd.DataFrame(rows).to_html(index=False, border=0)
    banner = ""
    if summary_json and dataset is not None and Path(summary_json).is_file():
        q = json.loads(Path(summary_json).read_text(encoding="utf-8")).get(str(dataset), {})
        verdict = q.get("verdict")
        if verdict:
            colour = {"pass": "#2e7d32", "warn": "#ef6c00", "fail": "#c62828"}[verdict]
            reasons = "".join(f"<li>{html.escape(r)}</li>" for r in q.get("reasons", []))
            banner = (
                f"<div style='border-left:8px solid {colour};padding:6px 12px;margin:8px 0'>"
                f"<b style='color:{colour}'>{verdict.upper()}</b>: registration of "
                f"{html.escape(label or 'dataset ' + str(dataset))}"
                f"{'<ul>' + reasons + '</ul>' if reasons else ''}</div>"
            )
        share = q.get("unsupported_fraction")
        if share is not None:  # issue 35: where the images did not support a match
            banner += (f"<p>Registered from the stable surroundings (change, clouds, masks): "
                       f"{100 * share:.1f} % of the overlap (results/flow/{dataset}.support.tif)"
                       "</p>")  # fmt: skip
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><style>body{font-family:sans-serif}"
        "td,th{padding:4px 12px;text-align:left}</style></head><body>"
        f"{banner}<h3>Models fitted to the tie points, and the residual before and after "
        "co-registration</h3>"
        f"{table}</body></html>"
    )
    _read_cached.cache_clear()
    with atomic_path(out_html) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")


# --- the overview page (rule render_overview, costack report) ------------------------------

#: A grid at most this many pixels a side is embedded whole in the page, at full resolution.
FULL_SIDE = 1024
#: A larger one as an overview at most this many pixels a side ...
OVERVIEW_SIDE = 768
#: ... plus this many full-resolution regions CHIP_SIDE pixels a side, the most contrasted.
CHIP_COUNT = 3
CHIP_SIDE = 384
#: The displacement figures and the quicklooks: at most this many pixels a side.
FLOW_SIDE = 512
QUICKLOOK_SIDE = 320
#: Fields of a QC JSON that say how much was registered from the surroundings, if present.
SUPPORT_FIELDS = ("unsupported_fraction", "unsupported_share", "surroundings_share", "support")
#: The longest data URL Chromium navigates to (url::kMaxURLChars): Snakemake's self-contained
#: report shows an HTML result in an iframe whose source is the page as a base64 data URL.
DATA_URL_LIMIT = 2 * 1024 * 1024
VERDICT_COLOURS = {"pass": "#2e7d32", "warn": "#ef6c00", "fail": "#c62828"}


def _esc(value: object) -> str:
    """``value`` as text safe in HTML content and in quoted attribute values."""
    return html.escape(str(value), quote=True)


def _href(path: str) -> str:
    """A relative link to ``path``, percent-encoded and escaped (names may hold anything an
    item id or asset key may)."""
    return _esc(quote(path, safe="/"))


def _script_json(data: object) -> str:
    """JSON that nothing can close or escape from inside ``<script type="application/json">``
    (``<``, ``>`` and ``&`` as ``\\u003c``...)."""
    text = json.dumps(data, separators=(",", ":"), sort_keys=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _figure_uri(png: bytes) -> str:
    """A matplotlib figure (PNG bytes) as a WebP data URI at quality 90: no visible change on
    figures of ramps and labels, and five times smaller, for the page must stay under the 2 MB
    a browser takes as a data URL, which is how Snakemake's report shows it (a palette PNG
    bands the colour bars). The comparisons' images, which are data, stay lossless."""
    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buf, format="WEBP", quality=90, method=6)
    return "data:image/webp;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _webp_uri(grey_alpha: np.ndarray) -> str:
    """A (rows, cols, 2) grey and opacity uint8 array as a lossless WebP data URI (the exact
    pixels, about 30 % smaller than PNG on images; the same array gives the same bytes). The
    opacity is left out when every pixel is opaque. Encoder effort 4 of 6 at quality 75: within
    4 % of the smallest file in 1/100 of the time (a 768 px overview of a Sentinel-2 tile:
    0.46 MB in 13.6 s at effort 6, quality 100; 0.48 MB in 0.10 s)."""
    from PIL import Image

    a = np.ascontiguousarray(grey_alpha)
    im = Image.fromarray(a[..., 0], "L") if a[..., 1].min() == 255 else Image.fromarray(a, "LA")
    buf = io.BytesIO()
    im.save(buf, format="WEBP", lossless=True, quality=75, method=4, exact=True)
    return "data:image/webp;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _quicklook_uri(index: np.ndarray, cmap: str) -> str:
    """A (rows, cols) uint8 array of levels as a WebP data URI (quality 85, a preview: the
    values are given as text beside it): 0 transparent (nodata, kept exact), 1-255 the colormap
    ``cmap`` from its low to its high end."""
    import matplotlib
    from PIL import Image

    lut = matplotlib.colormaps[cmap](np.linspace(0, 1, 255))
    rgba = np.vstack([[0, 0, 0, 0], lut])[index]
    buf = io.BytesIO()
    Image.fromarray((rgba * 255).round().astype(np.uint8), "RGBA").save(
        buf, format="WEBP", quality=85, alpha_quality=100, method=6)  # fmt: skip
    return "data:image/webp;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _read(path: Path, shape: tuple[int, int] | None = None, window=None, band: int = 1):
    """Band ``band`` as Float32 with NaN for nodata: whole, a window, or reduced to ``shape``
    by GDAL's average of the valid pixels (read-only: the page reads some twice, from
    :func:`_read_cached`)."""
    stat = os.stat(path)
    return _read_cached(str(path), (stat.st_mtime_ns, stat.st_size), shape,
                        None if window is None else tuple(window.flatten()), band)  # fmt: skip


@functools.lru_cache(maxsize=8)
def _read_cached(path: str, version: tuple[int, int], shape, window, band) -> np.ndarray:
    """:func:`_read`, kept for the page's next reads of the same pixels (a reduced read of a
    scene-sized raster without overviews decodes all of it: 1.5 s for a Sentinel-2 tile)."""
    from rasterio.enums import Resampling

    with rasterio.open(path) as src:
        bands = list(range(1, src.count + 1)) if band == 0 else band
        whole = window is None or tuple(window) == (0, 0, src.width, src.height)
        if shape is not None and whole:  # the grid reduced: GDAL's average, no mask pass
            out_arr = read_average(src, shape, bands)
        else:
            out = None if shape is None or band != 0 else (src.count, *shape)
            data = src.read(bands, window=None if window is None else Window(*window),
                            out_shape=out or shape, masked=True,
                            resampling=Resampling.average)  # fmt: skip
            out_arr = np.ma.filled(data.astype(np.float32), np.nan)
    out_arr.flags.writeable = False
    return out_arr


def _limits(a: np.ndarray) -> tuple[float, float]:
    """The display stretch of ``a``: its 2nd and 98th percentiles, or its range when they
    meet (a mask), or a unit around its one value."""
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, [2, 98]))
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    return (lo, hi) if hi > lo else (lo - 0.5, lo + 0.5)


def _grey(a: np.ndarray, limits: tuple[float, float]) -> np.ndarray:
    """Grey level and opacity (0 on nodata) of ``a`` stretched between ``limits``."""
    lo, hi = limits
    valid = np.isfinite(a)
    g = np.clip((np.where(valid, a, lo) - lo) / (hi - lo), 0, 1)
    return np.dstack([(g * 255).round().astype(np.uint8), (valid * 255).astype(np.uint8)])


@dataclass(frozen=True)
class Region:
    """A part of the grid the page embeds, reduced by ``factor`` (1: full resolution)."""

    row: int
    col: int
    height: int
    width: int
    factor: int

    def read(self, path: Path) -> np.ndarray:
        win = Window(self.col, self.row, self.width, self.height)
        shape = (math.ceil(self.height / self.factor), math.ceil(self.width / self.factor))
        return _read(path, shape if self.factor > 1 else None, win)


def comparison_regions(ref_tif: str | Path) -> list[Region]:
    """What the comparisons embed: the whole grid at full resolution when it is at most
    FULL_SIDE pixels a side; else the whole grid reduced to OVERVIEW_SIDE plus CHIP_COUNT
    full-resolution regions of CHIP_SIDE at the reference's most contrasted places."""
    with rasterio.open(ref_tif) as src:
        h, w = src.height, src.width
    if max(h, w) <= FULL_SIDE:
        return [Region(0, 0, h, w, 1)]
    f = math.ceil(max(h, w) / OVERVIEW_SIDE)
    overview = Region(0, 0, h, w, f)
    side = min(CHIP_SIDE, h, w)
    found = high_contrast_windows(overview.read(Path(ref_tif)), max(4, side // f), CHIP_COUNT)
    chips = [Region(min(r * f, h - side), min(c * f, w - side), side, side, 1) for r, c in found]
    return [overview, *chips]


def _survey(path: Path) -> tuple[np.ndarray, dict]:
    """Band 1 reduced for its quicklook (the mean of the valid pixels of each QUICKLOOK_SIDE
    block of f x f pixels, NaN where a block has none) and its exact minimum, maximum and valid
    share, from one pass over the band by strips of whole blocks. Read apart (GDAL's reduced
    read, then the range by strips), a 10980 x 10980 band was decoded twice: 2.2 s."""
    with rasterio.open(path) as src:
        h, w = src.height, src.width
        f = max(1, math.ceil(max(h, w) / QUICKLOOK_SIDE))
        rh, rw = math.ceil(h / f), math.ceil(w / f)
        total = np.zeros((rh, rw), np.float64)
        count = np.zeros((rh, rw), np.int64)
        lo, hi, valid = math.inf, -math.inf, 0
        rows = f * max(1, 256 // f)  # a strip holds whole blocks
        for r0 in range(0, h, rows):
            a = read_window(src, Window(0, r0, w, min(rows, h - r0)))
            ok = np.isfinite(a)
            n_ok = int(np.count_nonzero(ok))
            if n_ok:
                valid += n_ok
                some = a if n_ok == a.size else a[ok]
                lo, hi = min(lo, float(some.min())), max(hi, float(some.max()))
            m = a.shape[0]
            n = -(-m // f)
            vals, oks = np.where(ok, a, np.float32(0)), ok
            if m % f:  # the last strip: its last block is short
                vals, oks = (np.pad(x, ((0, n * f - m), (0, 0))) for x in (vals, ok))
            cols = ((0, 0), (0, rw * f - w))
            vals = np.pad(vals.reshape(n, f, w).sum(axis=1, dtype=np.float64), cols)
            oks = np.pad(oks.reshape(n, f, w).sum(axis=1, dtype=np.int64), cols)
            total[r0 // f : r0 // f + n] = vals.reshape(n, rw, f).sum(axis=2)
            count[r0 // f : r0 // f + n] = oks.reshape(n, rw, f).sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        reduced = np.where(count > 0, total / count, np.nan).astype(np.float32)
    return reduced, {"min": lo if valid else None, "max": hi if valid else None,
                     "valid": valid / (h * w) if h * w else 0.0}  # fmt: skip


def _colour_ramp(cmap: str, n: int = 11) -> str:
    """A CSS linear-gradient of matplotlib colormap ``cmap``."""
    import matplotlib

    cm = matplotlib.colormaps[cmap]
    stops = []
    for i in range(n):
        r, g, b = (round(255 * c) for c in cm(i / (n - 1))[:3])
        stops.append(f"rgb({r},{g},{b}) {100 * i / (n - 1):.0f}%")
    return f"linear-gradient(to right, {', '.join(stops)})"


def _quicklook(reduced: np.ndarray, cmap: str) -> tuple[str, tuple[float, float]]:
    """A band's quicklook (:func:`_survey`) stretched 2-98 % on ``cmap`` (nodata transparent),
    as a data URI, and the stretch's limits."""
    a = reduced
    lo, hi = _limits(a)
    valid = np.isfinite(a)
    level = np.clip((np.where(valid, a, lo) - lo) / (hi - lo), 0, 1)
    index = np.where(valid, 1 + (level * 254).round(), 0).astype(np.uint8)
    return _quicklook_uri(index, cmap), (lo, hi)


def _fmt(v: float | None) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.4g}"


def _residual(q: dict) -> str:
    """A QC figure: median (mean, p90) in pixels on N points, or why there is none."""
    if not q:
        return "–"
    if q.get("figure") != "measured":
        return f"insufficient ({_esc(q.get('points', 0))} points)"
    px = q["pixels"]
    return (f"<b>{px['median']:.2f} px</b> median<br><small>mean {px['mean']:.2f}, p90 "
            f"{px['p90']:.2f}; {_esc(q['points'])} points</small>")  # fmt: skip


def _support(qc: dict) -> str:
    """The share registered from the surroundings, when the dataset's QC records one."""
    for name in SUPPORT_FIELDS:
        if name not in qc:
            continue
        v = qc[name]
        if isinstance(v, int | float) and not isinstance(v, bool):
            return f"{v:.1%}" if 0 <= v <= 1 else _esc(v)
        if isinstance(v, dict):
            share = next((v[k] for k in ("unsupported_share", "share", "surroundings")
                          if isinstance(v.get(k), int | float)), None)  # fmt: skip
            if share is not None:
                return f"{share:.1%}"
            return "<br>".join(f"{_esc(k)}: {_esc(x)}" for k, x in sorted(v.items()))
        return _esc(v)
    return "–"


def _badge(verdict: str | None) -> str:
    if not verdict:
        return "–"
    colour = VERDICT_COLOURS.get(verdict, "#555")
    return f"<span class='badge' style='background:{colour}'>{_esc(verdict.upper())}</span>"


def _json_or_empty(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def run_overview(
    results: str | Path,
    out_html: str | Path,
    reference: str,
    item_id: str,
    expressions: list[str] | tuple[str, ...] = (),
    on_failed_registration: str = "stop",
) -> Path:
    """The overview page (rule ``render_overview``, ``costack report``): ``out_html``
    (``results/report.html``), one self-contained HTML file that works offline from the
    results folder, of the run whose files are under ``results``:

    - a table of every dataset: label (platform, date), verdict and reasons, flow mode and why,
      tie points, the QC residual before and after co-registration with their point counts,
      coverage, and the share registered from the surroundings when the QC records one;
    - per secondary dataset, the reference against the secondary before and after
      co-registration, to swipe or flicker over a window chosen on an overview (whole at full
      resolution up to FULL_SIDE pixels a side, else an overview plus CHIP_COUNT
      full-resolution regions; see :func:`comparison_regions`), and its displacement on one
      fixed scale for the whole page, labelled in pixels;
    - a quicklook of every stacked asset and band-math output with its unit and value range,
      linked to its COG; links to the STAC item and catalog (relative).

    ``reference``: the reference asset; ``item_id``: the item's id (linked as
    ``stack/ITEM_ID.json``); ``expressions``: the band-math outputs' names;
    ``on_failed_registration``: as configured, to say whether a failed verdict keeps the item
    from being published (the page is written before the catalog step). The secondary datasets
    are those of ``qc/summary.json``; each is compared on the asset its flow was estimated on
    (the flow's ``costack_flow_secondary`` tag). Every string from an item, the configuration or
    a file name is escaped."""
    import pandas as pd

    results, out_html = Path(results), Path(out_html)
    summary = json.loads((results / "qc" / "summary.json").read_text(encoding="utf-8"))
    manifest = pd.read_csv(results / "discover" / "manifest.csv", keep_default_na=False,
                           dtype=str)  # fmt: skip
    datasets = sorted(summary, key=lambda n: (len(n), n))
    ref_dataset = reference.split(".", 1)[0]

    def rel(path: Path) -> str:
        return Path(os.path.relpath(path.resolve(), out_html.parent.resolve())).as_posix()

    def rows_of(n: str) -> pd.DataFrame:
        return manifest[manifest["dataset"] == str(n)]

    def about(n: str) -> str:
        rows = rows_of(n)
        return "" if rows.empty else f"{rows['platform'].iloc[0]} {rows['datetime'].iloc[0][:10]}"

    # the comparisons: the reference, before and after over the same regions
    ref_tif = results / "colocated" / f"{reference}.tif"
    regions = comparison_regions(ref_tif) if datasets else []
    ref_limits = _limits(regions[0].read(ref_tif)) if regions else (0.0, 1.0)
    comparisons, flows = [], {}
    for n in datasets:
        flow_tif = results / "flow" / f"{n}.tif"
        with rasterio.open(flow_tif) as src:
            key, fh, fw = src.tags().get("costack_flow_secondary", ""), src.height, src.width
        if not key:  # a flow written before flows recorded their pair: the dataset's first asset
            key = rows_of(n)["key"].iloc[0]
        before_tif = results / "colocated" / f"{key}.tif"
        after_tif = results / "coregistered" / f"{key}.tif"
        limits = _limits(regions[0].read(before_tif))  # one stretch for before and after
        comparisons.append({
            "n": n, "key": key,
            "before": [_webp_uri(_grey(r.read(before_tif), limits)) for r in regions],
            "after": [_webp_uri(_grey(r.read(after_tif), limits)) for r in regions],
        })  # fmt: skip
        f = max(1, math.ceil(max(fh, fw) / FLOW_SIDE))
        shape = (math.ceil(fh / f), math.ceil(fw / f)) if f > 1 else None
        both = _read(flow_tif, shape, band=0)  # dx and dy in one pass over the flow
        flows[n] = (both[0], both[1], _read(results / "flow" / f"{n}.confidence.tif", shape),
                    f)  # fmt: skip
    scale = displacement_scale([np.hypot(dx, dy) for dx, dy, _, _ in flows.values()])

    verdicts = {summary[n].get("verdict") for n in datasets}
    worst = next((v for v in ("fail", "warn", "pass") if v in verdicts), None)
    item_path = f"stack/{item_id}.json"
    parts = [
        f"<h1>costack run: {_esc(item_id)}</h1><p class='lead'>Reference <b>{_esc(reference)}"
        f"</b> ({_esc(about(ref_dataset))}); {len(datasets)} secondary dataset(s) co-registered "
        f"to it. Overall verdict {_badge(worst)}</p>"
    ]
    if worst == "fail" and on_failed_registration != "publish":
        parts.append(
            "<p class='alert'>A registration failed and <code>on_failed_registration</code> is "
            "<code>stop</code>: the catalog step publishes no item (the reasons are below; "
            "<code>on_failed_registration: publish</code> publishes it flagged).</p>"
        )
    parts.append(
        f"<p class='links'><a href='{_href(item_path)}'>STAC item ({_esc(item_path)})</a> · "
        "<a href='catalog.json'>STAC catalog (catalog.json)</a> · "
        "<a href='qc/summary.json'>QC summary (qc/summary.json)</a></p>"
    )

    rows = []
    for n in sorted({*datasets, ref_dataset}, key=lambda s: (len(s), s)):
        keys = ", ".join(rows_of(n)["key"])
        if n == ref_dataset:
            rows.append(
                f"<tr><td>{_esc(n)}</td><td>{_esc(about(n))}<br><small>{_esc(keys)}</small>"
                f"</td><td colspan='7'>reference ({_esc(reference)}): the other datasets are "
                "registered onto its grid</td></tr>"
            )
            continue
        q = summary[n]
        flow = _json_or_empty(results / "flow" / f"{n}.json")
        why = (flow.get("mode_choice") or {}).get("reason", "")
        model = _json_or_empty(results / "tiepoints" / f"{n}.model.json")
        chosen = model.get("chosen") or "none"
        fit = (model.get("models") or {}).get(chosen) or {}
        tie = (f"{_esc(fit.get('n', 0))} ({_esc(chosen)}, RMSE {fit['rmse']:.2f} px)"
               if isinstance(fit.get("rmse"), int | float) else "0 (no model)")  # fmt: skip
        reasons = "".join(f"<li>{_esc(r)}</li>" for r in q.get("reasons", []))
        coverage = q.get("coverage")
        rows.append(
            f"<tr id='row-{_esc(n)}'><td><a href='#dataset-{_esc(n)}'>{_esc(n)}</a></td>"
            f"<td>{_esc(q.get('label') or about(n))}<br><small>{_esc(keys)}</small></td>"
            f"<td>{_badge(q.get('verdict'))}{'<ul>' + reasons + '</ul>' if reasons else ''}"
            f"</td><td>{_esc(flow.get('mode', '–'))}<br><small>{_esc(why)}</small></td>"
            f"<td>{tie}</td><td>{_residual(q.get('before', {}))}</td>"
            f"<td>{_residual(q.get('after', {}))}</td>"
            f"<td>{f'{coverage:.0%}' if isinstance(coverage, int | float) else '–'}</td>"
            f"<td>{_support(q)}</td></tr>"
        )
    parts.append(
        "<h2>Datasets</h2><table class='datasets'><thead><tr><th>dataset</th><th>label "
        "(platform, date)<br><small>assets</small></th><th>verdict and reasons</th><th>flow "
        "mode</th><th>tie points (model, fit RMSE)</th><th>QC residual before</th><th>QC "
        "residual after</th><th>coverage of the grid</th><th>registered from the surroundings"
        "</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
        "<p class='note'>QC residual: the secondary re-matched to the reference by least "
        "squares on a regular grid, independently of the flow, before (co-located) and after "
        "co-registration (<code>qc/N.json</code>); no figure under 20 re-matched points.</p>"
    )

    for comp in comparisons:
        n, key = comp["n"], comp["key"]
        q = summary[n]
        dx, dy, conf, f = flows[n]
        label = q.get("label") or about(n)
        shown = "" if f == 1 else f" (shown reduced 1:{f})"
        figure = displacement_png(dx, dy, conf, scale, f"dataset {n}: {label}{shown}")
        disp, cnf = results / "stack" / f"{n}-displacement.tif", results / "stack" / (
            f"{n}-confidence.tif")  # fmt: skip
        parts.append(
            f"<section class='dataset' id='dataset-{_esc(n)}'><h2>Dataset {_esc(n)}: "
            f"{_esc(label)} {_badge(q.get('verdict'))}</h2><h3>Reference {_esc(reference)} "
            f"against {_esc(key)}, before and after co-registration</h3>"
            f"<div class='compare' data-dataset='{_esc(n)}'></div>"
            f"<h3>Displacement of dataset {_esc(n)}</h3><img class='flowfig' alt='displacement "
            f"of dataset {_esc(n)}' src='{_figure_uri(figure)}'><p class='note'>One scale for the "
            f"whole page: {scale:g} grid pixels or more is fully coloured, white is none; the "
            "hue is the direction on the image, as the colour key shows (arrows: block means). "
            "The secondary sampled at (col + dx, row + dy) matches the reference at (col, row). "
            f"Files: <a href='{_href(rel(disp))}'>{_esc(rel(disp))}</a> (dx, dy), "
            f"<a href='{_href(rel(cnf))}'>{_esc(rel(cnf))}</a>.</p></section>"
        )

    cards = []
    stacked = [(k, "asset") for k in manifest["key"]] + [(e, "band math") for e in expressions]
    for key, kind in stacked:
        cog = results / "stack" / f"{key}.tif"
        # the COG's pixels, read before its conversion (refused on a failed verdict)
        pixels = results / ("coregistered" if kind == "asset" else "bandmath") / f"{key}.tif"
        cmap = "gray" if kind == "asset" else "viridis"
        reduced, rng = _survey(pixels)
        uri, (lo, hi) = _quicklook(reduced, cmap)
        if kind == "asset":
            row = manifest[manifest["key"] == key].iloc[0]
            what, unit = f"{row['asset_key']} of {row['item_id']}", row["unit"] or "none declared"
        else:
            with rasterio.open(pixels) as src:
                what = src.tags().get("costack_expression", key)
            unit = "as its expression gives"
        cards.append(
            f"<div class='card'><h4><a href='{_href(rel(cog))}'>{_esc(key)}</a></h4>"
            f"<img alt='{_esc(key)}' src='{uri}'><div class='ramp' style='background:"
            f"{_colour_ramp(cmap)}'></div><div class='rampl'><span>{_fmt(lo)}</span><span>"
            f"{_fmt(hi)}</span></div><p><small>{_esc(kind)}: {_esc(what)}<br>unit: "
            f"{_esc(unit)}<br>values {_fmt(rng['min'])} to {_fmt(rng['max'])} (shown: 2-98 %, "
            f"{_fmt(lo)} to {_fmt(hi)}); valid {rng['valid']:.1%}</small></p></div>"
        )
    parts.append("<h2>Stacked assets and band-math outputs</h2><div class='cards'>"
                 + "".join(cards) + "</div>")  # fmt: skip

    data = {
        "windows": [vars(r) for r in regions],
        "reference": {"key": reference, "images": [
            _webp_uri(_grey(r.read(ref_tif), ref_limits)) for r in regions]},
        "datasets": comparisons,
        "grid": {"height": regions[0].height if regions else 0,
                 "width": regions[0].width if regions else 0},
    }  # fmt: skip
    here = Path(__file__).parent
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src "
        "data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<title>costack overview: {_esc(item_id)}</title><style>"
        + (here / "overview.css").read_text(encoding="utf-8")
        + "</style></head><body>"
        + "".join(parts)
        + f"<script type='application/json' id='costack-data'>{_script_json(data)}</script>"
        + "<script>"
        + (here / "overview.js").read_text(encoding="utf-8")
        + "</script></body></html>"
    )
    with atomic_path(out_html) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    size = len(page.encode("utf-8"))
    if 4 * math.ceil(size / 3) > DATA_URL_LIMIT:
        logging.getLogger(__name__).warning(
            "%s is %.1f MB: Snakemake's self-contained report shows a page as a data URL, which "
            "browsers take up to 2 MB (1.5 MB of page), so its Overview entry will be blank; "
            "open %s itself, or make the report as a folder: snakemake --report report.zip",
            out_html, size / 1e6, out_html,
        )  # fmt: skip
    return out_html
