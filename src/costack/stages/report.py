"""The report stage (rule ``plot_registration``): per secondary dataset, the figures and the
table that Snakemake's report shows: red/cyan composites before and after co-registration
(as Yan et al. 2016, Fig. 6), the displacement and confidence maps, and the fitted models with
the QC residual and the verdict.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from costack.io.figures import png_figure, stretch
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
    """Maps of the displacement magnitude (pixels) and of the confidence (read reduced by GDAL's
    average beyond FIGURE_MAX_SIDE pixels a side: a map shows no more)."""
    with rasterio.open(flow_tif) as src, rasterio.open(confidence_tif) as csrc:
        f = _reduction(src.height, src.width)
        if f == 1:
            flow = src.read().astype(np.float32)
            conf = read_window(csrc)
        else:
            shape = (math.ceil(src.height / f), math.ceil(src.width / f))
            flow = np.stack([read_average(src, shape, band) for band in (1, 2)])
            conf = read_average(csrc, shape)
    mag = np.hypot(flow[0], flow[1])
    with png_figure(png, ncols=2, figsize=(12, 5.5)) as (fig, axes):
        im = axes[0].imshow(mag, cmap="viridis")
        fig.colorbar(im, ax=axes[0], label="pixels")
        axes[0].set_title(f"{label}: displacement magnitude")
        im = axes[1].imshow(conf, cmap="magma", vmin=0, vmax=1)
        fig.colorbar(im, ax=axes[1], label="confidence")
        axes[1].set_title(f"{label}: confidence")
        for ax in axes:
            ax.set_axis_off()


def models_table(
    model_json: str | Path,
    qc_json: str | Path,
    out_html: str | Path,
    summary_json: str | Path | None = None,
    dataset: str | None = None,
    label: str = "",
) -> None:
    """The dataset's verdict as a banner, then one row per model: RMSE, tie points; plus the
    residual after co-registration (HTML, which Snakemake's report shows inline)."""
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
    after = qc.get("after", {})
    figure = after.get("pixels", {}).get("median", "") if after.get("figure") == "measured" else (
        "insufficient")  # fmt: skip
    rows.append({"model": "residual after co-registration (median px)", "chosen": "",
                 "rmse_px": figure, "tie_points": after.get("points", 0)})  # fmt: skip
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
        f"{banner}<h3>Models fitted to the tie points, and residual after co-registration</h3>"
        f"{table}</body></html>"
    )
    with atomic_path(out_html) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
