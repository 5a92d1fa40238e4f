"""Scene-sized flow and warping in overlapping tiles, so memory stays bounded.

The flow is first estimated on both images decimated by ``coarse_factor`` (GDAL average
resampling, nodata excluded); that coarse field seeds every tile, which is then refined at
full resolution on its own window plus a halo. Only the tile's core is written, so tiles join
without seams as long as the halo exceeds the window radii. Warping reads, for each output
tile, the source window its flow points into.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from costack.io.grids import Grid
from costack.io.rasters import atomic_raster, float32_profile, read_average, read_window
from costack.registration.change import SUPPORT_MEANING, hold
from costack.registration.folki import FlowParams, estimate_flow
from costack.registration.imaging import fill_nearest
from costack.registration.tiepoint_model import TiePointModel

log = logging.getLogger(__name__)

#: GDAL block cache (MB) of the tiled flow and warp: the tiles are read once (with their halo)
TILED_CACHE_MB = 128


def _read(src: rasterio.io.DatasetReader, window: Window) -> np.ndarray:
    """A window as Float32 with NaN for nodata and outside the raster."""
    return read_window(src, window, boundless=True)


#: rows of the decimated raster read per strip by :func:`_read_decimated`
DECIMATE_STRIP = 128


def _read_decimated(src: rasterio.io.DatasetReader, factor: int) -> np.ndarray:
    """The raster averaged over exact factor x factor blocks (nodata excluded; NaN where a
    block has none), read in strips of :data:`DECIMATE_STRIP` block rows. The blocks are the
    ones :func:`_upsample` assumes (coarse pixel i covers rows i*factor to (i+1)*factor); the
    last rows and columns that fill no block are left out. GDAL's average resampling to the
    same shape spreads each coarse pixel over height/(height // factor) rows instead, and took
    5.9 s on a 10980 x 10980 tile against 1.9 s here (the coarse pass read both rasters: 13 s
    of its 13.7 s)."""
    h, w = max(1, src.height // factor), max(1, src.width // factor)
    if src.height < factor or src.width < factor:
        return read_average(src, (h, w))
    out = np.empty((h, w), np.float32)
    step = DECIMATE_STRIP * factor
    for r0 in range(0, h * factor, step):
        n = min(step, h * factor - r0)
        block = read_window(src, Window(0, r0, w * factor, n))
        block = block.reshape(n // factor, factor, w, factor)
        valid = np.isfinite(block)
        count = valid.sum(axis=(1, 3))
        total = np.where(valid, block, np.float32(0)).sum(axis=(1, 3))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[r0 // factor : (r0 + n) // factor] = np.where(count > 0, total / count, np.nan)
    return out


def tiles(height: int, width: int, size: int) -> Iterator[Window]:
    """Core windows of ``size`` covering the raster, row by row."""
    for r in range(0, height, size):
        for c in range(0, width, size):
            yield Window(c, r, min(size, width - c), min(size, height - r))


def _pipelined(windows: list[Window], load, work, store) -> None:
    """``store(w, work(w, load(w)))`` for each window in order, with ``load`` of the next window
    and ``store`` of the last one on two helper threads while ``work`` runs (GDAL and SciPy
    release the GIL): reading, seeding and compressed writing of a scene cost about nothing
    beside the flow or the warp (10980x10980: flow 172 -> 131 s, warp 26 -> 22 s)."""
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
        ahead = reader.submit(load, windows[0]) if windows else None
        pending = None
        for k, win in enumerate(windows):
            loaded = ahead.result()
            if k + 1 < len(windows):
                ahead = reader.submit(load, windows[k + 1])
            result = work(win, loaded)
            if pending is not None:
                pending.result()
            pending = writer.submit(store, win, result)
        if pending is not None:
            pending.result()


def _linear_taps(pos: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation along one axis of ``n`` samples at positions ``pos``, the edges
    extended (positions clamped to [0, n - 1]): (lower index, upper index, upper weight)."""
    y = np.clip(pos, 0.0, n - 1.0)
    i0 = np.minimum(np.floor(y).astype(np.intp), max(n - 2, 0))
    return i0, np.minimum(i0 + 1, n - 1), y - i0


def _upsample(coarse: np.ndarray, factor: int, window: Window) -> np.ndarray:
    """Coarse field (coarse pixels, no NaN) at a window's full-resolution pixel centres:
    bilinear, edges extended (as SciPy's ``map_coordinates`` with ``order=1, mode="nearest"``,
    which this replaces). The positions form a grid, so the interpolation is separable: along
    the rows on the coarse columns, then along the columns (2208 px tile: 0.21 -> 0.03 s, on
    the reader thread that shares the cores with the flow)."""
    rows = (np.arange(window.row_off, window.row_off + window.height) + 0.5) / factor - 0.5
    cols = (np.arange(window.col_off, window.col_off + window.width) + 0.5) / factor - 0.5
    r0, r1, fr = _linear_taps(rows, coarse.shape[0])
    c0, c1, fc = _linear_taps(cols, coarse.shape[1])
    lo, hi = int(c0.min()), int(c1.max()) + 1
    part = coarse[:, lo:hi].astype(np.float64)
    along = part[r0] * (1.0 - fr)[:, None] + part[r1] * fr[:, None]
    out = along[:, c0 - lo] * (1.0 - fc) + along[:, c1 - lo] * fc
    return (out * factor).astype(np.float32)


def flow_tiled(
    ref_tif: str | Path,
    sec_tif: str | Path,
    out_tif: str | Path,
    confidence_tif: str | Path,
    params: FlowParams,
    tile: int = 2048,
    halo: int | None = None,
    coarse_factor: int = 8,
    ref_filter=None,
    seed_model: TiePointModel | None = None,
    tags: dict[str, str] | None = None,
    support_tif: str | Path | None = None,
    hold_changes: bool = False,
    masks=None,
    radar_aux: list[str | Path] | tuple[str | Path, ...] = (),
) -> dict:
    """Flow of a scene-sized pair, tile by tile (peak memory set by ``tile``, not the scene).

    Args:
        ref_tif, sec_tif: co-located single-band rasters on one grid.
        out_tif, confidence_tif: outputs (2-band dx, dy; 1-band confidence), tiled GeoTIFFs.
        params: flow parameters for the full-resolution refinement.
        tile: core tile size in pixels.
        halo: overlap read around each tile (default 2 x the largest radius + 16).
        coarse_factor: decimation of the seeding pass.
        ref_filter: optional function applied to each reference window (resolution matching).
        seed_model: optional tie-point model (``*.model.json``); the coarse pass starts
            from it instead of its own global shift search.
        tags: GeoTIFF tags of the flow (:func:`costack.stages.flow.flow_tags`), as the in-memory
            flow writes them.
        support_tif: where the displacement is the data's own (1) or the surroundings' (0).
        hold_changes: hold each tile's unsupported areas to their surroundings in the tile
            and its halo (:func:`costack.registration.change.hold`), as the in-memory flow.
        masks: :class:`costack.io.masks.Exclusions`, read tile by tile: the excluded pixels
            take no part in the tile's flow (the coarse seeding pass does not see them).
        radar_aux: the secondary's other polarisations (co-located), read with each tile and
            for the coarse pass (:func:`costack.registration.folki.estimate_flow`).
    """
    t0 = time.perf_counter()
    halo = halo if halo is not None else 2 * max(params.window_radii()) + 16
    # GDAL's block cache (5 % of the host's memory by default) would otherwise keep the tiles
    # already read and written (10980x10980 flow: peak RSS 2.18 -> 1.83 GiB, same time)
    with (
        rasterio.Env(GDAL_CACHEMAX=TILED_CACHE_MB),
        rasterio.open(ref_tif) as ref,
        rasterio.open(sec_tif) as sec,
        contextlib.ExitStack() as aux_files,
    ):
        aux = [aux_files.enter_context(rasterio.open(p)) for p in radar_aux]
        profile = ref.profile
        h, w = ref.height, ref.width
        ref_c = _read_decimated(ref, coarse_factor)
        sec_c = _read_decimated(sec, coarse_factor)
        aux_c = [_read_decimated(a, coarse_factor) for a in aux] or None
        if ref_filter is not None:
            ref_c = ref_filter(ref_c)
        init = None
        if seed_model is not None:
            init = seed_model.displacement(ref_c.shape, coarse_factor)
        coarse = estimate_flow(
            ref_c, sec_c,
            replace(params, max_displacement=params.max_displacement / coarse_factor), init=init,
            radar_aux=aux_c,
        )  # fmt: skip
        del ref_c, sec_c, aux_c
        coarse_dx = fill_nearest(coarse.dx, np.isfinite(coarse.dx))
        coarse_dy = fill_nearest(coarse.dy, np.isfinite(coarse.dy))
        log.info("coarse pass (1/%d) in %.1f s", coarse_factor, time.perf_counter() - t0)
        # the coarse seed is within a pixel: one full-resolution level suffices (same EPE as two
        # levels on a 1120x1120 test window, 0.066 px, in 2/3 of the time)
        fine = replace(params, levels=1, global_search=False)
        grid = Grid(profile["crs"], profile["transform"], w, h)
        out_profile = float32_profile(grid, count=2)
        windows = list(tiles(h, w, tile))
        counts = {"unsupported": 0, "overlap": 0}
        with contextlib.ExitStack() as stack:
            tmp_flow = stack.enter_context(atomic_raster(out_tif))
            tmp_conf = stack.enter_context(atomic_raster(confidence_tif))
            tmp_sup = stack.enter_context(atomic_raster(support_tif)) if support_tif else None
            with (
                rasterio.open(tmp_flow, "w", **out_profile) as dst,
                rasterio.open(tmp_conf, "w", **dict(out_profile, count=1)) as cdst,
                _maybe_open(tmp_sup, dict(out_profile, count=1), tags) as sdst,
            ):
                dst.set_band_description(1, "dx (columns)")
                dst.set_band_description(2, "dy (rows)")
                if tags:
                    dst.update_tags(**tags)

                def load(core: Window) -> tuple:
                    big = Window(core.col_off - halo, core.row_off - halo,
                                 core.width + 2 * halo, core.height + 2 * halo)  # fmt: skip
                    a = _read(ref, big)
                    b = _read(sec, big)
                    more = [_read(x, big) for x in aux]
                    if masks is not None:
                        ref_x, sec_x = masks.read_window(grid, big)
                        if ref_x is not None:
                            a[ref_x] = np.nan
                        if sec_x is not None:
                            b[sec_x] = np.nan
                            for m in more:
                                m[sec_x] = np.nan
                    if ref_filter is not None:
                        a = ref_filter(a)
                    ux = _upsample(coarse_dx, coarse_factor, big)
                    uy = _upsample(coarse_dy, coarse_factor, big)
                    return a, b, ux, uy, more or None

                def work(core: Window, loaded: tuple) -> tuple[np.ndarray, np.ndarray]:
                    a, b, ux, uy, more = loaded
                    sl = (slice(halo, halo + core.height), slice(halo, halo + core.width))
                    support = np.ones(a.shape, np.float32)
                    if not np.isfinite(a).any() or not np.isfinite(b).any():
                        res_dx = np.full(a.shape, np.nan, np.float32)
                        res_dy, conf = res_dx, np.zeros(a.shape, np.float32)
                    else:
                        res = estimate_flow(a, b, fine, init=(ux, uy), radar_aux=more)
                        if hold_changes:
                            held = hold(res, a, b)
                            res = replace(res, dx=held.dx, dy=held.dy)
                            support = held.support
                            both = np.isfinite(a[sl]) & np.isfinite(b[sl])
                            counts["overlap"] += int(both.sum())
                            counts["unsupported"] += int((support[sl][both] < 0.5).sum())
                        res_dx, res_dy, conf = res.dx, res.dy, res.confidence
                    done.append(core)
                    log.info("tile %d of %d done (%.1f s)", len(done), len(windows),
                             time.perf_counter() - t0)  # fmt: skip
                    return (np.stack([res_dx[sl], res_dy[sl]]), conf[sl].copy(),
                            support[sl].copy())  # fmt: skip

                def store(core: Window, result: tuple[np.ndarray, ...]) -> None:
                    dst.write(result[0], window=core)
                    cdst.write(result[1], 1, window=core)
                    if sdst is not None:
                        sdst.write(result[2], 1, window=core)

                done: list[Window] = []
                _pipelined(windows, load, work, store)
    out = {"tiles": len(windows), "tile": tile, "halo": halo, "coarse_factor": coarse_factor,
           "seeded": init is not None, "seconds": time.perf_counter() - t0}  # fmt: skip
    if hold_changes:
        out["unsupported_fraction"] = round(counts["unsupported"] / max(counts["overlap"], 1), 4)
    return out


@contextlib.contextmanager
def _maybe_open(path: str | Path | None, profile: dict, tags: dict[str, str] | None):
    """The support raster opened for writing at ``path`` (tagged with the flow's pair), or None
    when there is none."""
    if path is None:
        yield None
        return
    with rasterio.open(path, "w", **profile) as dst:
        dst.set_band_description(1, "support")
        pair = {k: v for k, v in (tags or {}).items()
                if k in ("costack_flow_reference", "costack_flow_secondary")}  # fmt: skip
        dst.update_tags(costack_support=SUPPORT_MEANING, **pair)
        yield dst


def warp_tiled(
    sec_tif: str | Path,
    flow_tif: str | Path,
    out_tif: str | Path,
    warp_fn,
    tile: int = 1024,
    tags: dict[str, str] | None = None,
) -> None:
    """Warp a raster with a flow tile by tile (``warp_fn(data, dx, dy) -> array``, e.g.
    :func:`costack.registration.imaging.warp_array`); ``tags`` as the in-memory warp writes them."""
    with (
        rasterio.Env(GDAL_CACHEMAX=TILED_CACHE_MB),
        rasterio.open(sec_tif) as src,
        rasterio.open(flow_tif) as flow,
    ):
        nodata = src.nodata
        out_profile = float32_profile(
            Grid(src.crs, src.transform, src.width, src.height),
            nodata=np.nan if nodata is None else nodata,
        )

        def load(core: Window) -> tuple:
            f = flow.read(window=core).astype(np.float32)
            reach = np.nanmax(np.abs(f)) if np.isfinite(f).any() else 0.0
            m = int(math.ceil(reach)) + 2
            big = Window(core.col_off - m, core.row_off - m, core.width + 2 * m,
                         core.height + 2 * m)  # fmt: skip
            return f, m, _read(src, big)

        def work(core: Window, loaded: tuple) -> np.ndarray:
            f, m, data = loaded
            dx = np.full(data.shape, np.nan, np.float32)
            dy = np.full(data.shape, np.nan, np.float32)
            dx[m : m + core.height, m : m + core.width] = f[0]
            dy[m : m + core.height, m : m + core.width] = f[1]
            out = warp_fn(data, dx, dy)[m : m + core.height, m : m + core.width]
            if nodata is not None and not np.isnan(nodata):
                out = np.where(np.isnan(out), np.float32(nodata), out)
            return out.astype(np.float32)

        with atomic_raster(out_tif) as tmp, rasterio.open(tmp, "w", **out_profile) as dst:
            _pipelined(list(tiles(src.height, src.width, tile)), load, work,
                       lambda core, out: dst.write(out, 1, window=core))  # fmt: skip
            if tags:
                dst.update_tags(**tags)
