"""The COG writer's codecs (config ``cog_compression``): DEFLATE by default, ZSTD when asked;
either way a valid COG with the source's pixels, nodata and tags, and ``costack cog`` writes
the bytes the rules' ``run_cog`` writes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine

from costack.io.cog import is_valid_cog, write_cog
from costack.stages.catalog import run_cog


@pytest.fixture
def source(tmp_path):
    """A 700 x 600 Float32 raster (overviews are due) with NaN nodata, a hole and a tag."""
    rng = np.random.default_rng(3)
    data = rng.normal(0.2, 0.05, (600, 700)).astype(np.float32)
    data[100:180, 200:260] = np.nan
    path = tmp_path / "src.tif"
    prof = dict(driver="GTiff", dtype="float32", count=1, height=600, width=700, nodata=np.nan,
                crs="EPSG:32631", transform=Affine(10, 0, 500000, 0, -10, 5000000))  # fmt: skip
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(data, 1)
        dst.update_tags(costack_unit="reflectance")
    return path, data


@pytest.mark.parametrize(("codec", "tiff_codec", "predictor"),
                         [("deflate", "deflate", 3), ("zstd", "zstd", 1)])  # fmt: skip
def test_cog_codecs_keep_pixels_nodata_and_tags(tmp_path, source, codec, tiff_codec, predictor):
    src, data = source
    out = tmp_path / f"{codec}.tif"
    run_cog(src, out, compression=codec)
    assert is_valid_cog(out)
    with rasterio.open(out) as cog:
        assert cog.profile["compress"] == tiff_codec
        assert int(cog.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR", 1)) == predictor
        assert cog.overviews(1), "no overview"
        np.testing.assert_array_equal(cog.read(1), data)  # NaN where the source has NaN
        assert np.isnan(cog.nodata) and cog.tags()["costack_unit"] == "reflectance"
    cli = tmp_path / f"cli-{codec}.tif"
    cmd = [sys.executable, "-m", "costack.cli", "cog", str(src), str(cli), "--compression", codec]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert cli.read_bytes() == out.read_bytes()


def test_unknown_codec_is_refused_before_writing(tmp_path, source):
    with pytest.raises(ValueError, match="compression must be one of deflate, zstd"):
        write_cog(source[0], tmp_path / "x.tif", compression="lzma")
    assert not (tmp_path / "x.tif").exists()


def test_the_codec_lists_agree():
    """The schema's enum and default, the CLI's choices and default and :data:`CODECS` name the
    same codecs (three spellings of one list)."""
    import argparse

    import yaml
    from conftest import REPO

    from costack.cli import build_parser
    from costack.io.cog import CODECS

    spec = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())["properties"]
    spec = spec["cog_compression"]
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    option = next(a for a in sub.choices["cog"]._actions if a.dest == "compression")
    assert spec["enum"] == list(option.choices) == list(CODECS)
    assert spec["default"] == option.default == "deflate"
