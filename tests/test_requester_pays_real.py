"""Requester-pays detection on the real Earth Search Landsat Collection 2 item of
../shared/data/stac_items: pystac (>= 1.12) migrates its storage extension v1.0.0 to v2 on
reading (``storage:requester_pays`` becomes a ``storage:schemes`` entry the asset names in
``storage:refs``), and the refusal must still fire, before any read."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import SHARED_DATA

ITEMS = SHARED_DATA / "stac_items"
LANDSAT = ITEMS / "earthsearch-landsat-c2-l2__LC08_L2SP_033032_20231008_02_T1.json"
S2 = ITEMS / "earthsearch-sentinel-2-l2a__S2A_13TDE_20231008_0_L2A.json"


@pytest.fixture
def landsat():
    if not LANDSAT.is_file():
        pytest.skip(f"real STAC items not present ({ITEMS}; see ../shared/data/README.md)")
    return LANDSAT


def test_pystac_migrates_the_item_and_the_asset_is_still_requester_pays(landsat):
    import pystac

    from costack.io.remote import requester_pays

    item = pystac.Item.from_file(str(landsat))
    red = item.assets["red"]
    assert "storage:requester_pays" not in red.extra_fields  # migrated away (v2)
    assert requester_pays(red.extra_fields, item.properties)
    assert not requester_pays({"storage:refs": ["other"]}, item.properties)


def test_costack_check_refuses_the_real_landsat_item_without_the_payer(landsat, monkeypatch):
    """No AWS_REQUEST_PAYER: one line naming the asset and the fix, exit 2, before any read
    (no credentials or network needed); the check passes the S3 href to GDAL only with it."""
    monkeypatch.delenv("AWS_REQUEST_PAYER", raising=False)
    proc = subprocess.run(
        [sys.executable, "-m", "costack.cli", "check", "--input", str(landsat), "--input",
         str(S2), "--assets", "1.red,1.nir08,2.red", "--reference", "1.red"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith("costack: error: assets: 1.red: s3://usgs-landsat/"), proc.stderr
    assert "requester-pays bucket" in proc.stderr and "AWS_REQUEST_PAYER=requester" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
