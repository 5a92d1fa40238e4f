"""The overview page results/report.html (rule render_overview, `costack report`): written by
the demo run, the same bytes by hand, every item-provided string escaped, and used in Debian's
Chromium from file:// (no console error, no network request; the swipe, the flicker and the
window choice change what the view shows)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import CHROMIUM_FLAGS, chromium

pytestmark = [pytest.mark.workflow, pytest.mark.xdist_group("demo_dir")]


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float)


def _draws(page, n: str) -> int:
    return int(page.locator(f".compare[data-dataset='{n}']").get_attribute("data-draws") or 0)


def _wait_draw(page, n: str, after: int) -> None:
    page.wait_for_function(
        f"() => Number(document.querySelector(\".compare[data-dataset='{n}']\")"
        f".dataset.draws || 0) > {after}", timeout=180_000,
    )  # fmt: skip


def test_the_run_writes_its_overview(demo_run: Path):
    """The demo's page: every dataset in the table with its verdict, both QC residuals and
    their points; a comparison and a displacement figure per secondary dataset; every stacked
    asset and band-math output with its unit and range and a link to its COG; relative links
    only; self-contained (no external reference) and a few MB."""
    page = demo_run / "results" / "report.html"
    text = page.read_text(encoding="utf-8")
    summary = json.loads((demo_run / "results" / "qc" / "summary.json").read_text())
    # under what a browser takes as a data URL, as Snakemake's report shows it (base64)
    from costack.stages.report import DATA_URL_LIMIT

    assert 300_000 < 4 * page.stat().st_size / 3 < 0.8 * DATA_URL_LIMIT, page.stat().st_size
    for n, q in summary.items():
        row = re.search(rf"<tr id='row-{n}'>(.*?)</tr>", text, re.S).group(1)
        assert q["verdict"].upper() in row and q["label"] in row
        for when in ("before", "after"):
            assert f"<b>{q[when]['pixels']['median']:.2f} px</b>" in row
            assert f"{q[when]['points']} points" in row
        assert f"<div class='compare' data-dataset='{n}'>" in text
        assert f"href='stack/{n}-displacement.tif'" in text
    cfg = yaml.safe_load((demo_run / "config.yaml").read_text())
    names = cfg["assets"].split(",") + [e.split(":")[0] for e in cfg["expressions"]]
    for key in names:
        assert f"<a href='stack/{key}.tif'>{key}</a>" in text, key
    assert "unit: dB" in text  # the SAR assets' unit, from the item
    assert "href='stack/costack-demo.json'" in text and "href='catalog.json'" in text
    assert not re.search(r"(src|href)=['\"](https?:|//|/|file:)", text)
    assert "Content-Security-Policy" in text


def test_costack_report_by_hand_is_the_rules_page(demo_run: Path, tmp_path: Path):
    """`costack report` with the run's config writes the rule's page byte for byte."""
    results = tmp_path / "results"
    shutil.copytree(demo_run / "results", results)
    (results / "report.html").unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "costack.cli", "report", "--configfile",
         str(demo_run / "config.yaml"), "--results", str(results)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (results / "report.html").read_bytes() == (
        demo_run / "results" / "report.html").read_bytes()  # fmt: skip


def test_item_strings_are_escaped(demo_run: Path, tmp_path: Path, monkeypatch, caplog):
    """A label, a platform, an asset and an item id carrying markup are shown as text: in
    Chromium no script runs, no element is injected, and the text reads as written. (And a page
    over the data-URL limit, here lowered, says so: Snakemake's report could not show it.)"""
    from costack.stages import report
    from costack.stages.report import run_overview

    monkeypatch.setattr(report, "DATA_URL_LIMIT", 100_000)

    results = tmp_path / "results"
    shutil.copytree(demo_run / "results", results)
    evil = "<img src=x onerror=alert(1)>'\"&</script><script>alert(2)</script>"
    summary = json.loads((results / "qc" / "summary.json").read_text())
    summary["2"]["label"] = evil
    summary["2"]["reasons"] = [evil]
    (results / "qc" / "summary.json").write_text(json.dumps(summary))
    manifest = (results / "discover" / "manifest.csv").read_text()
    for platform in ("sentinel-1a", "sentinel-2a"):  # 2a: the reference's, shown in the lead
        manifest = manifest.replace(platform, evil.replace('"', '""').join('""'))
    (results / "discover" / "manifest.csv").write_text(manifest)
    page = run_overview(results, results / "report.html", "1.nir", evil, ["ndvi"])
    text = page.read_text(encoding="utf-8")
    assert "snakemake --report report.zip" in caplog.text
    assert "<img src=x" not in text and "<script>alert" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    browser = chromium()
    from playwright.sync_api import sync_playwright

    dialogs, errors = [], []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=browser, args=CHROMIUM_FLAGS)
        tab = b.new_page()
        tab.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        tab.on("pageerror", lambda e: errors.append(str(e)))
        tab.goto(page.as_uri())
        _wait_draw(tab, "2", 0)
        assert tab.locator("img[src='x']").count() == 0
        assert evil in tab.locator("#row-2").inner_text()
        assert evil in tab.locator("p.lead").inner_text()  # the reference's platform
        assert evil in tab.title()
        b.close()
    assert dialogs == [] and errors == []


def test_overview_in_chromium_swipe_flicker_window(demo_run: Path, tmp_path: Path):
    """The page from file:// in Debian's Chromium: no console error and no network request;
    dragging the swipe moves the split (the band it crossed changes, the rest does not), B =
    before shows other pixels than after, the flicker alternates whole frames, and a click on
    the overview moves the window. Screenshot: tmp_path/overview.png."""
    browser = chromium()
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    html = demo_run / "results" / "report.html"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=browser, args=CHROMIUM_FLAGS)
        page = b.new_page(viewport={"width": 1400, "height": 1000})
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: not r.url.startswith(("file:", "data:")) and errors.append(
            f"request {r.url}"))  # fmt: skip
        page.goto(html.as_uri())
        _wait_draw(page, "2", 0)
        comp = page.locator(".compare[data-dataset='2']")
        view = comp.locator("canvas.view")
        view.scroll_into_view_if_needed()
        first = _pixels(view.screenshot())
        swipe = comp.locator("input.swipe")
        box = swipe.bounding_box()
        page.mouse.click(box["x"] + 0.2 * box["width"], box["y"] + box["height"] / 2)
        assert 150 <= int(swipe.input_value()) <= 250, swipe.input_value()
        second = _pixels(view.screenshot())
        w = first.shape[1]
        rows = slice(30, None)  # below the labels
        band, left = slice(int(w * 0.25), int(w * 0.45)), slice(0, int(w * 0.15))
        changed = np.abs(first[rows, band] - second[rows, band]).mean()
        same = np.abs(first[rows, left] - second[rows, left]).mean()
        assert changed > 10 and same < 1, (changed, same)
        comp.locator("button.show-before").click()
        before = _pixels(view.screenshot())
        right = slice(int(w * 0.3), None)
        assert np.abs(before[rows, right] - second[rows, right]).mean() > 5
        comp.locator("button.flicker").click()
        # what is shown and its pixels, read in one turn of the page's event loop (screenshots
        # may take longer than a flicker's 600 ms on a loaded machine)
        frame = (
            "() => { const r = document.querySelector(\".compare[data-dataset='2']\");"
            " return [r.dataset.shown, r.querySelector('canvas.view').toDataURL()]; }"
        )
        shown = "document.querySelector(\".compare[data-dataset='2']\").dataset.shown"
        page.wait_for_function(f"() => ['A', 'B'].includes({shown})", timeout=180_000)
        p1, u1 = page.evaluate(frame)
        page.wait_for_function(f"() => {shown} !== '{p1}'", timeout=180_000)
        p2, u2 = page.evaluate(frame)
        f1, f2 = (_pixels(base64.b64decode(u.split(",", 1)[1])) for u in (u1, u2))
        assert {p1, p2} == {"A", "B"}
        assert np.abs(f1[rows] - f2[rows]).mean() > 5
        comp.locator("button.flicker").click()
        comp.locator("canvas.overview").click(position={"x": 3, "y": 3})
        where = comp.locator(".where").inner_text()
        assert where.startswith("rows 0-") and ", cols 0-" in where, where
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)
        b.close()
    assert errors == []
    assert (tmp_path / "overview.png").stat().st_size > 50_000


def test_page_json_cannot_close_its_script():
    """The data block's JSON: no `</script>` or markup survives, and it reads back the same."""
    from costack.stages.report import _script_json

    data = {"key": "</script><script>alert(1)</script>", "n": "<!--&-->"}
    text = _script_json(data)
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == data


def test_the_reports_models_table_shows_the_gain(demo_run: Path, tmp_path: Path):
    """The Snakemake report's per-dataset table gives the QC residual before co-registration
    beside the one after (3.02 px -> 0.11 px on the demo's Landsat-like dataset), with points."""
    from costack.stages.report import models_table

    res = demo_run / "results"
    qc = json.loads((res / "qc" / "2.json").read_text())
    out = tmp_path / "models.html"
    models_table(res / "tiepoints" / "2.model.json", res / "qc" / "2.json", out)
    text = out.read_text()
    for when in ("before", "after"):
        row = re.search(rf"<td>residual {when} co-registration \(median px\)</td>(.*?)</tr>",
                        text, re.S)  # fmt: skip
        assert row, (when, text)
        assert str(qc[when]["pixels"]["median"]) in row.group(1)
        assert f"<td>{qc[when]['points']}</td>" in row.group(1)


def test_the_share_registered_from_the_surroundings_is_shown_when_recorded():
    """The QC summary's unsupported_fraction (the change-aware flow's, issue 35) fills the
    table's column; without it the column says so with a dash."""
    from costack.stages.report import _support

    assert _support({"unsupported_fraction": 0.123}) == "12.3%"
    assert _support({"verdict": "pass"}) == "–"


@pytest.mark.parametrize("nodata", [float("nan"), -9999.0])
def test_a_quicklook_and_its_value_range_come_from_one_pass(tmp_path: Path, nodata: float):
    """The cards' reduced band is the mean of the valid pixels of each f x f block (NaN where a
    block has none; the last blocks short) and the value range is exact, from one read of a
    band larger than the quicklook, whose strips do not divide into its blocks."""
    import warnings

    import rasterio
    from rasterio.transform import from_origin
    from skimage.measure import block_reduce

    from costack.stages.report import QUICKLOOK_SIDE, _survey

    rng = np.random.default_rng(5)
    h, w = 4 * QUICKLOOK_SIDE + 7, 3 * QUICKLOOK_SIDE + 5
    data = rng.normal(0.2, 0.1, (h, w)).astype(np.float32)
    holes = rng.random((h, w)) < 0.3
    holes[100:400, 50:700] = True  # blocks with no valid pixel
    data[h - 1, w - 1], data[0, 0] = 9.5, -4.25  # the extremes, in the short corner block
    stored = np.where(holes, np.float32(nodata), data)
    stored[h - 1, w - 1], stored[0, 0] = 9.5, -4.25
    path = tmp_path / "band.tif"
    profile = dict(driver="GTiff", height=h, width=w, count=1, dtype="float32",
                   crs="EPSG:32631", transform=from_origin(0, 0, 10, 10), nodata=nodata,
                   tiled=True, blockxsize=256, blockysize=256)  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(stored, 1)
    reduced, rng_ = _survey(path)
    f = int(np.ceil(max(h, w) / QUICKLOOK_SIDE))
    valid = np.where(holes, np.nan, data)
    valid[h - 1, w - 1], valid[0, 0] = 9.5, -4.25
    with warnings.catch_warnings():  # nanmean of a block with no valid pixel
        warnings.simplefilter("ignore", RuntimeWarning)
        want = block_reduce(valid, (f, f), func=np.nanmean, cval=np.nan)
    assert reduced.shape == want.shape == (int(np.ceil(h / f)), int(np.ceil(w / f)))
    np.testing.assert_allclose(reduced, want, rtol=1e-5, atol=1e-6)
    assert np.isnan(reduced).any() and np.isnan(want).any()
    assert rng_["min"] == -4.25 and rng_["max"] == 9.5
    assert rng_["valid"] == pytest.approx(np.isfinite(valid).mean())
