"""Remote reads against a real HTTP server on 127.0.0.1 that serves byte ranges: /vsicurl/ with
a retried failure, /vsis3/ with the requester-pays header, and the Planetary Computer and
requester-pays refusals."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import loopback_server, scene, write_item, write_raster
from rasterio.transform import Affine

from costack.config import parse_config
from costack.errors import CostackError
from costack.io.rasters import read_float32
from costack.io.remote import needs_pc_signing
from costack.stages.colocate import run_colocate
from costack.stages.discover import discover, run_discover
from costack.stages.grid import run_grid

T = Affine(10, 0, 500_000, 0, -10, 5_000_000)


@pytest.fixture
def flaky_server(tmp_path):
    """Serves tmp_path/www; the first GET of every file answers 503."""
    root = tmp_path / "www"
    root.mkdir()
    with loopback_server(root, fail_first=1) as (url, log):
        yield root, url, log


def _requests(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_http_asset_read_with_one_retried_failure(tmp_path, flaky_server, monkeypatch):
    root, url, log = flaky_server
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.1")
    monkeypatch.setenv("CPL_VSIL_CURL_CACHE_SIZE", "0")
    data = (scene(300, 300, 5) * 100 + 1000).astype(np.uint16)
    write_raster(root / "nir.tif", data, transform=T, nodata=0)
    item = write_item(tmp_path / "item", "remote", {"nir": {
        "href": f"{url}/nir.tif", "raster:bands": [{"scale": 1e-4, "offset": -0.1}]}})  # fmt: skip
    cfg = {"inputs": [str(item)], "assets": "1.nir", "reference": "1.nir",
           "allowed_sources": ["127.0.0.1"]}  # fmt: skip
    run_discover(parse_config(cfg), tmp_path / "m.csv")
    run_grid(tmp_path / "m.csv", "1.nir", None, tmp_path / "g.json")
    # the job checks its source again, with the run's policy (and refuses it without)
    with pytest.raises(CostackError, match=r"non-public address \(127.0.0.1\)"):
        run_colocate(tmp_path / "m.csv", tmp_path / "g.json", "1.nir", tmp_path / "out.tif")
    run_colocate(tmp_path / "m.csv", tmp_path / "g.json", "1.nir", tmp_path / "out.tif",
                 policy={"allowed_sources": ["127.0.0.1"]})  # fmt: skip
    out, _, _ = read_float32(tmp_path / "out.tif")
    np.testing.assert_allclose(out, data * 1e-4 - 0.1, atol=1e-6)
    reqs = _requests(log)
    assert any(r["status"] == 503 for r in reqs), reqs
    assert any(r["status"] == 206 and r["range"] for r in reqs), "no range request was made"


def test_http_source_that_stays_down_is_one_line(tmp_path, monkeypatch):
    root = tmp_path / "www"
    root.mkdir()
    write_raster(root / "nir.tif", scene(), transform=T)
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "2")
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.05")
    with loopback_server(root, fail_first=1000) as (url, _):
        item = write_item(tmp_path / "i", "x", {"nir": {"href": f"{url}/nir.tif"}})
        with pytest.raises(CostackError, match=r"^assets: 1.nir: cannot read http://127.0.0.1"):
            discover(parse_config({"inputs": [str(item)], "assets": "1.nir", "reference": "1.nir",
                                   "allowed_sources": ["127.0.0.1"]}))  # fmt: skip


def test_s3_href_through_vsis3_with_request_payer(tmp_path, monkeypatch):
    """An s3:// href, as Landsat C2 on Earth Search gives them, read from a local endpoint."""
    root = tmp_path / "www"
    (root / "usgs-landsat" / "c2").mkdir(parents=True)
    data = (scene(64, 64, 7) * 500 + 15000).astype(np.uint16)
    write_raster(root / "usgs-landsat" / "c2" / "B5.TIF", data, transform=T, nodata=0)
    item = write_item(tmp_path / "i", "ls", {"nir08": {
        "href": "s3://usgs-landsat/c2/B5.TIF", "storage:requester_pays": True,
        "eo:bands": [{"name": "OLI_B5", "common_name": "nir08"}],
        "raster:bands": [{"nodata": 0, "scale": 2.75e-5, "offset": -0.2}]}})  # fmt: skip
    cfg = {"inputs": [str(item)], "assets": "1.nir", "reference": "1.nir"}
    with loopback_server(root) as (url, log):
        monkeypatch.delenv("AWS_REQUEST_PAYER", raising=False)
        with pytest.raises(CostackError, match=r"requester-pays .* set AWS_REQUEST_PAYER"):
            discover(parse_config(cfg))
        for k, v in {"AWS_REQUEST_PAYER": "requester", "AWS_S3_ENDPOINT": url.split("//")[1],
                     "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE",
                     "AWS_NO_SIGN_REQUEST": "YES"}.items():  # fmt: skip
            monkeypatch.setenv(k, v)
        run_discover(parse_config(cfg), tmp_path / "m.csv")
        run_grid(tmp_path / "m.csv", "1.nir", None, tmp_path / "g.json")
        run_colocate(tmp_path / "m.csv", tmp_path / "g.json", "1.nir", tmp_path / "o.tif")
    out, _, _ = read_float32(tmp_path / "o.tif")
    np.testing.assert_allclose(out, data * 2.75e-5 - 0.2, atol=1e-6)
    got = [r for r in _requests(log) if "B5.TIF" in r["path"] and r["status"] in (200, 206)]
    assert got and all(r["request_payer"] == "requester" for r in got)


def test_planetary_computer_href_needs_the_pc_extra(tmp_path, monkeypatch):
    href = ("https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/35/M/NM/2020/07/31/"
            "T35MNM_20200731T080611_B08_10m.tif")  # fmt: skip
    assert needs_pc_signing(href) and not needs_pc_signing(href + "?st=1&sig=abc")
    monkeypatch.setitem(sys.modules, "planetary_computer", None)  # not installed
    item = write_item(tmp_path, "pc", {"B08": {"href": href}})
    with pytest.raises(CostackError, match=r"Planetary Computer .* pip install 'costack\[pc\]'"):
        discover(parse_config({"inputs": [str(item)], "assets": "1.B08", "reference": "1.B08"}))
