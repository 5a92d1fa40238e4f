"""The run's overview page, ``results/report.html`` (rule ``render_overview``, ``costack
report``): one self-contained HTML file a user opens first, from the results folder, offline.

It shows, from the files the run wrote:

- a table of every dataset: label (platform and date), verdict and its reasons, the flow's mode
  and why, the tie-point model, the independent QC residual before and after co-registration
  with the points each rests on, and the share registered from the surroundings when the QC
  records one;
- per secondary dataset, a comparison of the reference with the secondary before and after
  co-registration that the user swipes or flickers at full resolution over a window chosen on
  an overview (a grid up to FULL_SIDE pixels a side is embedded whole at full resolution;
  a larger one as an overview reduced by GDAL's average plus CHIP_COUNT full-resolution
  windows at its most contrasted places, outlined on the overview);
- the displacement as direction (hue) and magnitude (saturation) on one fixed scale for the
  whole page, labelled in grid pixels, with arrows, beside the magnitude on the same scale and
  the confidence;
- a quicklook of every stacked asset and band-math output with its unit and value range, linked
  to its COG, and links to the STAC item and catalog (all relative to the results folder).

Every string that comes from an item, a configuration or a file name is escaped
(:func:`html.escape`, and JSON embedded in a ``<script>`` has ``<``, ``>`` and ``&``
escaped as ``\\u003c``...), so an item cannot inject markup or script into the page.
The page loads nothing from the network and runs from ``file://``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import rasterio

#: A grid at most this many pixels a side is embedded whole, at full resolution.
FULL_SIDE = 1024
#: Larger grids: an overview at most this many pixels a side ...
OVERVIEW_SIDE = 768
#: ... plus this many full-resolution windows of CHIP_SIDE pixels, the most contrasted.
CHIP_COUNT = 3
CHIP_SIDE = 384
#: The displacement figures: at most this many pixels a side.
FLOW_SIDE = 512
#: Quicklooks of the stacked assets: at most this many pixels a side.
QUICKLOOK_SIDE = 320
#: Displacement scales (grid pixels) the page picks from: the smallest at or above the 99th
#: percentile of every dataset's displacement magnitude, one scale for the whole page.
DISPLACEMENT_SCALES = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
#: Fields of a QC JSON that say how much was registered from the surroundings, if present.
SUPPORT_FIELDS = ("unsupported_share", "surroundings_share", "support")


def _esc(value: Any) -> str:
    """``value`` as text safe in HTML content and attribute values."""
    return html.escape(str(value), quote=True)


def _href(path: str) -> str:
    """A relative link to ``path`` (a file name may hold anything an item id may)."""
    return _esc(quote(path, safe="/"))


def _script_json(data: Any) -> str:
    """JSON safe inside ``<script type="application/json">`` (no ``</script>`` can close it)."""
    text = json.dumps(data, separators=(",", ":"), sort_keys=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _png(rgba: np.ndarray) -> str:
    """A (rows, cols) or (rows, cols, 2|3|4) uint8 array as a PNG data URI (deterministic)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba)).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure_png(fig: Any) -> str:
    """A matplotlib figure as a PNG data URI, without the software tag (same bytes each run)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _read(path: Path, shape: tuple[int, int] | None = None, window=None, band: int = 1):
    """Band ``band`` as Float32 with NaN for nodata: whole, a window, or reduced to ``shape`` by
    GDAL's average of the valid pixels."""
    from rasterio.enums import Resampling

    with rasterio.open(path) as src:
        data = src.read(band, window=window, out_shape=shape, masked=True,
                        resampling=Resampling.average)  # fmt: skip
    return np.ma.filled(data.astype(np.float32), np.nan)


def _limits(a: np.ndarray) -> tuple[float, float]:
    """2nd and 98th percentiles of the finite values (0, 1 when there are none)."""
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, [2, 98]))
    if hi <= lo:  # mostly one value (a mask): the whole range
        lo, hi = float(finite.min()), float(finite.max())
    return (lo, hi) if hi > lo else (lo - 0.5, lo + 0.5)


def _grey(a: np.ndarray, limits: tuple[float, float]) -> np.ndarray:
    """Grey levels (L) and opacity (A: 0 on nodata) of ``a`` stretched between ``limits``."""
    lo, hi = limits
    valid = np.isfinite(a)
    g = np.clip((np.where(valid, a, lo) - lo) / (hi - lo), 0, 1)
    return np.dstack([(g * 255).round().astype(np.uint8), np.where(valid, 255, 0).astype(np.uint8)])


@dataclass(frozen=True)
class Window:
    """A region of the grid embedded in the page, reduced by ``factor`` (1: full resolution)."""

    row: int
    col: int
    height: int
    width: int
    factor: int

    def read(self, path: Path) -> np.ndarray:
        from rasterio.windows import Window as RioWindow

        win = RioWindow(self.col, self.row, self.width, self.height)
        shape = (math.ceil(self.height / self.factor), math.ceil(self.width / self.factor))
        return _read(path, shape if self.factor > 1 else None, win)

    def record(self) -> dict:
        return {"row": self.row, "col": self.col, "height": self.height,
                "width": self.width, "factor": self.factor}  # fmt: skip


def comparison_windows(ref_tif: Path) -> list[Window]:
    """The regions the comparisons embed: the whole grid at full resolution when it is at most
    FULL_SIDE a side; else the whole grid reduced to OVERVIEW_SIDE plus CHIP_COUNT
    full-resolution windows of CHIP_SIDE at the reference's most contrasted places."""
    with rasterio.open(ref_tif) as src:
        h, w = src.height, src.width
    if max(h, w) <= FULL_SIDE:
        return [Window(0, 0, h, w, 1)]
    f = math.ceil(max(h, w) / OVERVIEW_SIDE)
    overview = Window(0, 0, h, w, f)
    small = overview.read(ref_tif)
    side = min(CHIP_SIDE, h, w)
    corners = _contrasted_corners(small, max(4, side // f), CHIP_COUNT)
    chips = [Window(min(r * f, h - side), min(c * f, w - side), side, side, 1) for r, c in corners]
    return [overview, *chips]


def _contrasted_corners(ref: np.ndarray, size: int, count: int) -> list[tuple[int, int]]:
    """Upper-left corners of ``count`` non-overlapping ``size`` windows of most gradient energy."""
    from scipy import ndimage

    g = ndimage.gaussian_gradient_magnitude(np.nan_to_num(ref), 1.0)
    g[~np.isfinite(ref)] = 0
    energy = ndimage.uniform_filter(g, size)
    h, w = ref.shape
    half = size // 2
    e = energy.copy()
    e[:half] = e[max(half, h - half) :] = 0
    e[:, :half] = e[:, max(half, w - half) :] = 0
    out: list[tuple[int, int]] = []
    for _ in range(count):
        r, c = np.unravel_index(np.argmax(e), e.shape)
        if e[r, c] <= 0:
            break
        out.append((max(0, int(r) - half), max(0, int(c) - half)))
        e[max(0, r - size) : r + size, max(0, c - size) : c + size] = 0
    return out


# --- the displacement ----------------------------------------------------------------------


def flow_colours(dx: np.ndarray, dy: np.ndarray, scale: float) -> np.ndarray:
    """RGB (0-1) of a displacement: hue the direction on the image (``dx`` right, ``dy``
    down), saturation the magnitude, white at 0 and full colour from ``scale`` pixels on
    (the colour coding of optical-flow benchmarks, Baker et al. 2011); NaN is grey."""
    from matplotlib.colors import hsv_to_rgb

    mag = np.hypot(dx, dy)
    hue = (np.arctan2(dy, dx) / (2 * np.pi)) % 1.0
    sat = np.clip(mag / scale, 0, 1)
    rgb = hsv_to_rgb(np.dstack([np.nan_to_num(hue), np.nan_to_num(sat), np.ones_like(hue)]))
    rgb[~(np.isfinite(dx) & np.isfinite(dy))] = 0.6
    return rgb


def displacement_scale(magnitudes: list[np.ndarray]) -> float:
    """One scale for every dataset of the page (see DISPLACEMENT_SCALES)."""
    finite = [m[np.isfinite(m)] for m in magnitudes]
    finite = [m for m in finite if m.size]
    top = max((float(np.percentile(m, 99)) for m in finite), default=0.0)
    return next((s for s in DISPLACEMENT_SCALES if s >= top), DISPLACEMENT_SCALES[-1])


def _flow_figure(dx: np.ndarray, dy: np.ndarray, conf: np.ndarray, scale: float, factor: int,
                 title: str) -> str:  # fmt: skip
    """Direction and magnitude (colour wheel, arrows), magnitude and confidence: three panels
    on fixed scales, as a PNG data URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = dx.shape
    fig, axes = plt.subplots(1, 4, figsize=(16, 5.2), layout="constrained",
                             gridspec_kw={"width_ratios": [1, 0.32, 1.12, 1.12]})  # fmt: skip
    try:
        ax = axes[0]
        ax.imshow(flow_colours(dx, dy, scale), interpolation="nearest")
        step = max(1, max(h, w) // 14)
        rr, cc = np.mgrid[step // 2 : h : step, step // 2 : w : step]
        from scipy import ndimage

        def block_mean(a: np.ndarray) -> np.ndarray:
            valid = np.isfinite(a)
            num = ndimage.uniform_filter(np.where(valid, a, 0), step)
            den = ndimage.uniform_filter(valid.astype(float), step)
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(den > 0.5, num / den, np.nan)[rr, cc]

        u, v = block_mean(dx), block_mean(dy)
        # an arrow of ``scale`` grid pixels spans 0.9 of the arrows' spacing (in displayed px)
        q = ax.quiver(cc, rr, u, v, angles="xy", scale_units="xy", scale=scale / (0.9 * step),
                      color="black", width=0.004)  # fmt: skip
        ax.quiverkey(q, 0.75, -0.05, scale, f"arrow: {scale:g} px", labelpos="E",
                     coordinates="axes")  # fmt: skip
        ax.set_title("direction (hue) and magnitude (saturation)", fontsize=10)
        ax.set_axis_off()
        # the legend: the same colouring over displacements of up to 1.25 x scale
        key = axes[1]
        n = 121
        g = np.linspace(-1.25 * scale, 1.25 * scale, n)
        gx, gy = np.meshgrid(g, g)
        alpha = (np.hypot(gx, gy) <= 1.25 * scale).astype(float)
        key.imshow(np.dstack([flow_colours(gx, gy, scale), alpha]),
                   extent=(g[0], g[-1], g[-1], g[0]))  # fmt: skip
        for r in (scale / 2, scale):
            key.add_patch(matplotlib.patches.Circle((0, 0), r, fill=False, lw=0.6, ls=":"))
        key.annotate("", (scale, 0), (0, 0), arrowprops={"arrowstyle": "->", "lw": 0.8})
        key.text(scale / 2, -0.08 * scale, f"{scale:g} px", ha="center", va="bottom",
                 fontsize=8)  # fmt: skip
        key.text(0, 1.3 * scale, "+dy: down the rows", ha="center", va="top", fontsize=7)
        key.text(1.3 * scale, 0, "+dx:\ncolumns", ha="left", va="center", fontsize=7)
        key.set_xlim(-1.3 * scale, 1.7 * scale)
        key.set_ylim(1.45 * scale, -1.3 * scale)
        key.set_title("colour key", fontsize=10)
        key.set_axis_off()
        mag = np.hypot(dx, dy)
        im = axes[2].imshow(mag, cmap="viridis", vmin=0, vmax=scale, interpolation="nearest")
        fig.colorbar(im, ax=axes[2], label="displacement magnitude (grid pixels)", shrink=0.8,
                     extend="max")  # fmt: skip
        axes[2].set_title(f"magnitude, fixed scale 0-{scale:g} px", fontsize=10)
        axes[2].set_axis_off()
        im = axes[3].imshow(conf, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        fig.colorbar(im, ax=axes[3], label="confidence (0-1)", shrink=0.8)
        axes[3].set_title("confidence", fontsize=10)
        axes[3].set_axis_off()
        shown = "" if factor == 1 else f" (shown reduced 1:{factor})"
        fig.suptitle(f"{title}{shown}", fontsize=11)
        return _figure_png(fig)
    finally:
        plt.close(fig)


# --- the quicklooks ------------------------------------------------------------------------


def _value_range(path: Path) -> dict:
    """Exact minimum, maximum and valid share of band 1, read block by block."""
    lo, hi, valid, total = math.inf, -math.inf, 0, 0
    with rasterio.open(path) as src:
        nodata = src.nodata
        for _, win in src.block_windows(1):
            a = src.read(1, window=win).astype(np.float64)
            ok = np.isfinite(a)
            if nodata is not None and not np.isnan(nodata):
                ok &= a != np.float32(nodata)
            total += a.size
            if ok.any():
                valid += int(ok.sum())
                lo, hi = min(lo, float(a[ok].min())), max(hi, float(a[ok].max()))
    return {"min": lo if valid else None, "max": hi if valid else None,
            "valid": valid / total if total else 0.0}  # fmt: skip


def _colour_ramp(cmap: str, n: int = 11) -> str:
    """A CSS linear-gradient of matplotlib colormap ``cmap``."""
    import matplotlib

    cm = matplotlib.colormaps[cmap]
    stops = ", ".join(
        "rgb({},{},{}) {:.0f}%".format(*(int(round(255 * c)) for c in cm(i / (n - 1))[:3]),
                                       100 * i / (n - 1))
        for i in range(n)
    )  # fmt: skip
    return f"linear-gradient(to right, {stops})"


def _quicklook(path: Path, cmap: str) -> tuple[str, tuple[float, float]]:
    """A PNG data URI of band 1 reduced to QUICKLOOK_SIDE, stretched 2-98 % on ``cmap``
    (nodata transparent), and the stretch's limits."""
    import matplotlib

    with rasterio.open(path) as src:
        h, w = src.height, src.width
    f = max(1, math.ceil(max(h, w) / QUICKLOOK_SIDE))
    a = _read(path, (math.ceil(h / f), math.ceil(w / f)) if f > 1 else None)
    lo, hi = _limits(a)
    valid = np.isfinite(a)
    norm = np.clip((np.where(valid, a, lo) - lo) / (hi - lo), 0, 1)
    rgba = matplotlib.colormaps[cmap](norm)
    rgba[..., 3] = valid
    return _png((rgba * 255).round().astype(np.uint8)), (lo, hi)


def _fmt(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    return f"{v:.4g}"


# --- the tables ----------------------------------------------------------------------------


def _residual(q: dict) -> str:
    """A QC figure: median (mean, p90) px on N points, or why there is none."""
    if not q:
        return "–"
    if q.get("figure") != "measured":
        return f"insufficient ({_esc(q.get('points', 0))} points)"
    px = q["pixels"]
    return (f"<b>{px['median']:.2f} px</b> median<br><small>mean {px['mean']:.2f}, p90 "
            f"{px['p90']:.2f}; {_esc(q['points'])} points</small>")  # fmt: skip


def _support(qc: dict) -> str:
    """The share registered from the surroundings, when the QC records one."""
    for name in SUPPORT_FIELDS:
        if name not in qc:
            continue
        v = qc[name]
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return f"{v:.1%}" if 0 <= v <= 1 else _esc(v)
        if isinstance(v, dict):
            share = next((v[k] for k in ("unsupported_share", "share", "surroundings")
                          if isinstance(v.get(k), (int, float))), None)  # fmt: skip
            if share is not None:
                return f"{share:.1%}"
            return "<br>".join(f"{_esc(k)}: {_esc(x)}" for k, x in sorted(v.items()))
        return _esc(v)
    return "–"


VERDICT_COLOURS = {"pass": "#2e7d32", "warn": "#ef6c00", "fail": "#c62828"}


def _verdict_badge(verdict: str | None) -> str:
    if not verdict:
        return "–"
    colour = VERDICT_COLOURS.get(verdict, "#555")
    return f"<span class='badge' style='background:{colour}'>{_esc(verdict.upper())}</span>"


# --- the page ------------------------------------------------------------------------------


def render_overview(
    results: str | Path,
    out_html: str | Path,
    reference: str,
    item_id: str,
    expressions: list[str] | tuple[str, ...] = (),
    on_failed_registration: str = "stop",
) -> Path:
    """Write the overview page ``out_html`` of the run whose files are under ``results``.

    ``reference``: the reference asset key; ``item_id``: the STAC item's id (linked as
    ``stack/ITEM_ID.json``); ``expressions``: the band-math outputs' names, shown after the
    assets; ``on_failed_registration``: as configured, to say whether a failed verdict kept
    the item from being published. Secondary datasets are those of ``qc/summary.json``; the
    asset of each that was compared with the reference is the one its flow was estimated on
    (the flow's ``costack_flow_secondary`` tag)."""
    import pandas as pd

    results = Path(results)
    out_html = Path(out_html)
    summary = json.loads((results / "qc" / "summary.json").read_text(encoding="utf-8"))
    manifest = pd.read_csv(results / "discover" / "manifest.csv", keep_default_na=False,
                           dtype=str)  # fmt: skip
    ref_tif = results / "colocated" / f"{reference}.tif"
    datasets = sorted(summary, key=lambda n: int(n) if str(n).isdigit() else 0)

    def rel(path: Path) -> str:
        return Path(os.path.relpath(Path(path).resolve(), out_html.parent.resolve())).as_posix()

    def dataset_rows(n: str) -> pd.DataFrame:
        return manifest[manifest["dataset"] == str(n)]

    def about(n: str) -> tuple[str, str]:
        rows = dataset_rows(n)
        if rows.empty:
            return "", ""
        return rows["platform"].iloc[0], rows["datetime"].iloc[0][:10]

    # the comparisons: reference, before and after over the same windows
    windows = comparison_windows(ref_tif) if datasets else []
    ref_limits = _limits(windows[0].read(ref_tif)) if windows else (0, 1)
    ref_images = [_png(_grey(w.read(ref_tif), ref_limits)) for w in windows]
    comparisons, flows, magnitudes = [], {}, []
    for n in datasets:
        flow_tif = results / "flow" / f"{n}.tif"
        with rasterio.open(flow_tif) as src:
            tags = src.tags()
            fh, fw = src.height, src.width
        key = tags.get("costack_flow_secondary", "")
        before_tif = results / "colocated" / f"{key}.tif"
        after_tif = results / "coregistered" / f"{key}.tif"
        limits = _limits(windows[0].read(before_tif))
        comparisons.append({
            "n": str(n), "key": key,
            "before": [_png(_grey(w.read(before_tif), limits)) for w in windows],
            "after": [_png(_grey(w.read(after_tif), limits)) for w in windows],
        })  # fmt: skip
        f = max(1, math.ceil(max(fh, fw) / FLOW_SIDE))
        shape = (math.ceil(fh / f), math.ceil(fw / f)) if f > 1 else None
        dx, dy = _read(flow_tif, shape, band=1), _read(flow_tif, shape, band=2)
        conf = _read(results / "flow" / f"{n}.confidence.tif", shape)
        flows[n] = (dx, dy, conf, f)
        magnitudes.append(np.hypot(dx, dy))
    scale = displacement_scale(magnitudes)

    verdicts = [summary[n].get("verdict") for n in datasets]
    worst = ("fail" if "fail" in verdicts else "warn" if "warn" in verdicts
             else "pass" if verdicts else None)  # fmt: skip
    published = not (worst == "fail" and on_failed_registration != "publish")
    item_path = f"stack/{item_id}.json"
    parts: list[str] = []
    ref_dataset = reference.split(".", 1)[0]
    platform, date = about(ref_dataset)
    parts.append(
        f"<h1>costack run: {_esc(item_id)}</h1><p class='lead'>Reference "
        f"<b>{_esc(reference)}</b> ({_esc(platform)} {_esc(date)}); "
        f"{len(datasets)} secondary dataset(s) co-registered to it. Overall verdict "
        f"{_verdict_badge(worst)}</p>"
    )
    links = (f"<a href='{_href(item_path)}'>STAC item ({_esc(item_path)})</a> · "
             f"<a href='catalog.json'>STAC catalog (catalog.json)</a> · "
             f"<a href='qc/summary.json'>QC summary (qc/summary.json)</a>")  # fmt: skip
    if not published:
        parts.append(
            "<p class='alert'>A registration failed and <code>on_failed_registration"
            "</code> is <code>stop</code>: the catalog step publishes no item (see the "
            "reasons below; set it to <code>publish</code> to publish flagged).</p>"
        )
    parts.append(f"<p class='links'>{links}</p>")

    # table of datasets
    rows = []
    for n in sorted({*datasets, ref_dataset}, key=lambda s: int(s) if s.isdigit() else 0):
        platform, date = about(n)
        keys = ", ".join(dataset_rows(n)["key"])
        if n == ref_dataset:
            rows.append(
                f"<tr><td>{_esc(n)}</td><td>{_esc(platform)} {_esc(date)}<br><small>"
                f"{_esc(keys)}</small></td><td colspan='7'>reference ({_esc(reference)}): the "
                "other datasets are registered onto its grid</td></tr>"
            )
            continue
        q = summary[n]
        flow_json = results / "flow" / f"{n}.json"
        flow = json.loads(flow_json.read_text(encoding="utf-8")) if flow_json.is_file() else {}
        why = (flow.get("mode_choice") or {}).get("reason", "")
        model_json = results / "tiepoints" / f"{n}.model.json"
        model = json.loads(model_json.read_text(encoding="utf-8")) if model_json.is_file() else {}
        chosen = model.get("chosen", "none")
        fit = (model.get("models") or {}).get(chosen) or {}
        tie = (f"{_esc(fit.get('n', 0))} ({_esc(chosen)}, RMSE {fit['rmse']:.2f} px)"
               if fit.get("rmse") is not None else "0 (no model)")  # fmt: skip
        reasons = "".join(f"<li>{_esc(r)}</li>" for r in q.get("reasons", []))
        rows.append(
            f"<tr id='row-{_esc(n)}'><td><a href='#dataset-{_esc(n)}'>{_esc(n)}</a></td>"
            f"<td>{_esc(q.get('label') or (platform + ' ' + date))}<br><small>{_esc(keys)}"
            f"</small></td><td>{_verdict_badge(q.get('verdict'))}"
            f"{'<ul>' + reasons + '</ul>' if reasons else ''}</td>"
            f"<td>{_esc(flow.get('mode', '–'))}<br><small>{_esc(why)}</small></td>"
            f"<td>{tie}</td><td>{_residual(q.get('before', {}))}</td>"
            f"<td>{_residual(q.get('after', {}))}</td>"
            f"<td>{_esc(format(q['coverage'], '.0%')) if 'coverage' in q else '–'}</td>"
            f"<td>{_support(q)}</td></tr>"
        )
    parts.append(
        "<h2>Datasets</h2><table class='datasets'><thead><tr><th>dataset</th><th>label "
        "(platform, date)<br><small>assets</small></th><th>verdict and reasons</th><th>flow "
        "mode</th><th>tie points (model, fit RMSE)</th><th>QC residual before</th><th>QC "
        "residual after</th><th>coverage of the grid</th><th>registered from the surroundings"
        "</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
        "<p class='note'>QC residual: independent least-squares re-matching of the secondary to "
        "the reference on a regular grid, before (co-located) and after co-registration "
        "(<code>qc/N.json</code>); no figure under 20 re-matched points.</p>"
    )

    # per dataset: comparison and displacement
    for comp in comparisons:
        n = comp["n"]
        q = summary[n]
        dx, dy, conf, f = flows[n]
        label = q.get("label") or " ".join(about(n))
        parts.append(
            f"<section class='dataset' id='dataset-{_esc(n)}'><h2>Dataset {_esc(n)}: "
            f"{_esc(label)} {_verdict_badge(q.get('verdict'))}</h2>"
            f"<h3>Reference {_esc(reference)} against {_esc(comp['key'])}, before and after "
            "co-registration</h3>"
            f"<div class='compare' data-dataset='{_esc(n)}'></div>"
            f"<h3>Displacement applied to dataset {_esc(n)}</h3>"
            f"<img class='flowfig' alt='displacement of dataset {_esc(n)}' "
            f"src='{_flow_figure(dx, dy, conf, scale, f, f'dataset {n}: ' + label)}'>"
            f"<p class='note'>Direction and magnitude on one scale for the whole page: a "
            f"displacement of {scale:g} grid pixels or more is fully coloured, white is none; "
            "hue gives the direction on the image as the wheel shows (arrows: block means). It "
            "is where the secondary's content was found: the secondary sampled at (col + dx, "
            "row + dy) matches the reference at (col, row). Files: "
            f"<a href='{_href(rel(results / 'stack' / f'{n}-displacement.tif'))}'>"
            f"stack/{_esc(n)}-displacement.tif</a> (dx, dy), "
            f"<a href='{_href(rel(results / 'stack' / f'{n}-confidence.tif'))}'>"
            f"stack/{_esc(n)}-confidence.tif</a>.</p></section>"
        )

    # quicklooks
    cards = []
    stacked = [(k, "asset") for k in manifest["key"]] + [(e, "band math") for e in expressions]
    for key, kind in stacked:
        cog = results / "stack" / f"{key}.tif"
        if not cog.is_file():
            cards.append(f"<div class='card'><h4>{_esc(key)}</h4><p>not written</p></div>")
            continue
        cmap = "gray" if kind == "asset" else "viridis"
        uri, (lo, hi) = _quicklook(cog, cmap)
        rng = _value_range(cog)
        if kind == "asset":
            row = manifest[manifest["key"] == key].iloc[0]
            what = f"{row['asset_key']} of {row['item_id']}"
            unit = row["unit"] or "no unit declared"
        else:
            with rasterio.open(cog) as src:
                what = src.tags().get("costack_expression", key)
            unit = "band math (unit of its expression)"
        cards.append(
            f"<div class='card'><h4><a href='{_href(rel(cog))}'>{_esc(key)}</a></h4>"
            f"<img alt='{_esc(key)}' src='{uri}'>"
            f"<div class='ramp' style='background:{_colour_ramp(cmap)}'></div>"
            f"<div class='rampl'><span>{_fmt(lo)}</span><span>{_fmt(hi)}</span></div>"
            f"<p><small>{_esc(kind)}: {_esc(what)}<br>unit: {_esc(unit)}<br>values "
            f"{_fmt(rng['min'])} to {_fmt(rng['max'])} (shown 2-98 %: {_fmt(lo)} to "
            f"{_fmt(hi)}); valid {rng['valid']:.1%}</small></p></div>"
        )
    parts.append("<h2>Stacked assets and band-math outputs</h2><div class='cards'>"
                 + "".join(cards) + "</div>")  # fmt: skip

    data = {
        "windows": [w.record() for w in windows],
        "reference": {"key": reference, "images": ref_images},
        "datasets": comparisons,
        "grid": {"height": windows[0].height if windows else 0,
                 "width": windows[0].width if windows else 0},
    }  # fmt: skip
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>costack overview: {_esc(item_id)}</title>"
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
        "img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<style>{CSS}</style></head><body>"
        + "".join(parts)
        + f"<script type='application/json' id='costack-data'>{_script_json(data)}</script>"
        + f"<script>{JS}</script></body></html>"
    )
    out_html.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_html.with_name(f".{out_html.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out_html)
    return out_html


CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1500px}
h1{font-size:1.5em;margin:0 0 4px} h2{margin-top:1.6em;border-bottom:1px solid #ddd}
h3{font-size:1em;margin:1em 0 .4em}
.lead{font-size:1.05em} .note{color:#555;font-size:.85em;max-width:1100px}
.alert{background:#fdecea;border-left:6px solid #c62828;padding:6px 12px}
.badge{color:#fff;border-radius:4px;padding:1px 8px;font-weight:bold;font-size:.85em}
table.datasets{border-collapse:collapse} table.datasets td,table.datasets th{border:1px solid
#ddd;padding:4px 8px;vertical-align:top;text-align:left;font-size:.9em}
table.datasets ul{margin:4px 0;padding-left:18px}
.compare{display:flex;gap:16px;flex-wrap:wrap;align-items:flex-start}
.compare canvas{border:1px solid #999;image-rendering:pixelated;touch-action:none}
.controls{display:flex;flex-direction:column;gap:6px;font-size:.9em;flex:0 1 270px}
.controls input[type=range]{width:100%}
.flowfig{max-width:100%}
.cards{display:flex;flex-wrap:wrap;gap:14px}
.card{width:240px;border:1px solid #ddd;padding:6px;background:
repeating-conic-gradient(#eee 0 25%,#fff 0 50%) 0 0/16px 16px}
.card img{width:100%;image-rendering:pixelated}.card h4{margin:2px 0}
.ramp{height:10px;border:1px solid #999}.rampl{display:flex;justify-content:space-between;
font-size:.75em}.card p{background:#fff;margin:4px 0 0}
"""

JS = r"""
(function(){
'use strict';
const DATA=JSON.parse(document.getElementById('costack-data').textContent);
const W=DATA.windows, H=DATA.grid.height, WD=DATA.grid.width;
function load(uri){const im=new Image();im.src=uri;return im;}
const REF=DATA.reference.images.map(load);
function el(tag,attrs,parent){const e=document.createElement(tag);
  for(const k in attrs){if(k==='text')e.textContent=attrs[k];else e.setAttribute(k,attrs[k]);}
  if(parent)parent.appendChild(e);return e;}
DATA.datasets.forEach(function(ds){
  const root=document.querySelector(".compare[data-dataset='"+ds.n+"']");
  if(!root)return;
  const layers={reference:REF,before:ds.before.map(load),after:ds.after.map(load)};
  const names={reference:'reference '+DATA.reference.key,before:ds.key+' before',
               after:ds.key+' after'};
  const VIEW=512, OV=Math.min(360,Math.max(WD,H));
  const ovScale=OV/Math.max(WD,H);
  const ov=el('canvas',{width:Math.round(WD*ovScale),height:Math.round(H*ovScale),
    class:'overview',title:'click to choose the window'},root);
  const view=el('canvas',{width:VIEW,height:VIEW,class:'view'},root);
  const ctl=el('div',{class:'controls'},root);
  el('div',{text:'Click the overview to choose the window; drag the view to pan.'},ctl);
  const where=el('div',{class:'where'},ctl);
  const rowA=el('label',{text:'left / A: '},ctl);const selA=el('select',{class:'layer-a'},rowA);
  const rowB=el('label',{text:'right / B: '},ctl);const selB=el('select',{class:'layer-b'},rowB);
  for(const k of ['reference','before','after']){
    el('option',{value:k,text:names[k]},selA);el('option',{value:k,text:names[k]},selB);}
  selA.value='reference';selB.value='after';
  const swl=el('label',{text:'swipe'},ctl);
  const swipe=el('input',{type:'range',min:0,max:1000,value:500,class:'swipe'},swl);
  const zl=el('label',{text:'zoom (screen px per grid px): '},ctl);
  const zoom=el('select',{class:'zoom'},zl);
  for(const z of [1,2,4,8])el('option',{value:z,text:z+'x'},zoom);
  zoom.value='2';
  const btns=el('div',{},ctl);
  const flick=el('button',{type:'button',class:'flicker'},btns);flick.textContent='flicker A/B';
  const bb=el('button',{type:'button',class:'show-before'},btns);bb.textContent='B = before';
  const ba=el('button',{type:'button',class:'show-after'},btns);ba.textContent='B = after';
  const state={cr:H/2,cc:WD/2,flicker:null,phase:0};
  function chip(){ // the finest embedded window holding the view's centre
    let best=0;
    W.forEach(function(w,i){if(state.cr>=w.row&&state.cr<w.row+w.height&&state.cc>=w.col&&
      state.cc<w.col+w.width&&w.factor<W[best].factor)best=i;});
    return best;}
  function span(){return VIEW/Number(zoom.value);}
  function clampCentre(w){const s=span()/2;
    state.cr=Math.min(Math.max(state.cr,w.row+Math.min(s,w.height/2)),w.row+w.height-Math.min(s,w.height/2));
    state.cc=Math.min(Math.max(state.cc,w.col+Math.min(s,w.width/2)),w.col+w.width-Math.min(s,w.width/2));}
  function drawLayer(ctx,name,i,x0,x1){
    const w=W[i], img=layers[name][i], s=span(), z=Number(zoom.value);
    const r0=state.cr-s/2, c0=state.cc-s/2;
    ctx.save();ctx.beginPath();ctx.rect(x0,0,x1-x0,VIEW);ctx.clip();
    ctx.imageSmoothingEnabled=false;
    ctx.drawImage(img,(c0-w.col)/w.factor,(r0-w.row)/w.factor,s/w.factor,s/w.factor,0,0,VIEW,VIEW);
    ctx.restore();}
  function draw(){
    const i=chip(), w=W[i]; clampCentre(w);
    const ctx=view.getContext('2d');ctx.fillStyle='#777';ctx.fillRect(0,0,VIEW,VIEW);
    const split=Math.round(VIEW*Number(swipe.value)/1000);
    let a=selA.value,b=selB.value;
    if(state.flicker){drawLayer(ctx,state.phase?b:a,i,0,VIEW);}
    else{drawLayer(ctx,a,i,0,split);drawLayer(ctx,b,i,split,VIEW);
      ctx.fillStyle='#ff0';ctx.fillRect(split-1,0,2,VIEW);}
    ctx.font='13px sans-serif';ctx.fillStyle='rgba(0,0,0,.6)';ctx.fillRect(0,0,VIEW,18);
    ctx.fillStyle='#fff';
    const left=state.flicker?(state.phase?'B: '+names[b]:'A: '+names[a]):'A: '+names[a];
    ctx.fillText(left,4,13);
    if(!state.flicker){const t='B: '+names[b];ctx.fillText(t,VIEW-ctx.measureText(t).width-4,13);}
    const s=span(), r0=Math.max(0,Math.round(state.cr-s/2));
    const c0=Math.max(0,Math.round(state.cc-s/2));
    where.textContent='rows '+r0+'-'+Math.min(H,Math.round(r0+s))+', cols '+c0+'-'+
      Math.min(WD,Math.round(c0+s))+(w.factor===1?', full resolution':
      ', reduced 1:'+w.factor+' (full resolution inside the outlined windows)');
    const o=ov.getContext('2d');o.imageSmoothingEnabled=true;
    o.drawImage(REF[0],0,0,ov.width,ov.height);
    o.setLineDash([4,3]);o.strokeStyle='#0ff';
    W.forEach(function(x){if(x.factor===1&&W.length>1)o.strokeRect(x.col*ovScale,x.row*ovScale,x.width*ovScale,x.height*ovScale);});
    o.setLineDash([]);o.strokeStyle='#ff0';o.lineWidth=2;
    o.strokeRect((state.cc-s/2)*ovScale,(state.cr-s/2)*ovScale,s*ovScale,s*ovScale);
    root.dataset.draws=String(Number(root.dataset.draws||0)+1);}
  ov.addEventListener('click',function(ev){const r=ov.getBoundingClientRect();
    state.cc=(ev.clientX-r.left)*(ov.width/r.width)/ovScale;
    state.cr=(ev.clientY-r.top)*(ov.height/r.height)/ovScale;draw();});
  let drag=null;
  view.addEventListener('pointerdown',function(ev){drag={x:ev.clientX,y:ev.clientY,cr:state.cr,cc:state.cc};
    view.setPointerCapture(ev.pointerId);});
  view.addEventListener('pointermove',function(ev){if(!drag)return;const z=Number(zoom.value);
    state.cc=drag.cc-(ev.clientX-drag.x)/z;state.cr=drag.cr-(ev.clientY-drag.y)/z;draw();});
  view.addEventListener('pointerup',function(){drag=null;});
  [selA,selB,swipe,zoom].forEach(function(x){x.addEventListener('input',draw);});
  bb.addEventListener('click',function(){selB.value='before';draw();});
  ba.addEventListener('click',function(){selB.value='after';draw();});
  flick.addEventListener('click',function(){
    if(state.flicker){clearInterval(state.flicker);state.flicker=null;
      flick.textContent='flicker A/B';}
    else{state.flicker=setInterval(function(){state.phase=1-state.phase;draw();},600);
      flick.textContent='stop flicker';}
    draw();});
  const all=[...REF,...layers.before,...layers.after];
  let left=all.length;
  all.forEach(function(im){if(im.complete){if(--left===0)draw();}
    else im.addEventListener('load',function(){if(--left===0)draw();});});
});
})();
"""
