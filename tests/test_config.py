"""Config parsing: the service's asset-list syntax, reference, expression names, schema."""

import pytest

from costack.config import AssetRef, parse_asset_list, parse_config, split_expression
from costack.errors import CostackError

BASE = {"inputs": ["a.json", "b.json"], "assets": "1.nir,2.nir", "reference": "1.nir"}


def test_asset_list_string_and_list_agree():
    assert parse_asset_list("1.nir,2.nir,3.s0_db_c_vv") == parse_asset_list(
        ["1.nir", "2.nir", "3.s0_db_c_vv"]
    )
    assert parse_asset_list("3.s0_db_c_vv")[0] == AssetRef(3, "s0_db_c_vv")


@pytest.mark.parametrize("token", ["1nir", "1.", ".nir", "0.nir", "1.nir ", " 1.nir", "a.nir"])
def test_malformed_tokens(token):
    with pytest.raises(CostackError, match=r"^assets: asset token .* (malformed|spaces)"):
        parse_asset_list(f"{token},2.nir")


def test_spaces_after_commas_named():
    with pytest.raises(CostackError, match="without spaces"):
        parse_asset_list("1.nir, 2.nir")


def test_defaults_filled():
    cfg = parse_config(BASE)
    assert cfg.resampling == "bilinear" and cfg.gcp_pixel_center is True and cfg.aoi is None
    assert cfg.keys == ["1.nir", "2.nir"] and cfg.secondary_datasets == [2]


def test_reference_not_listed():
    with pytest.raises(CostackError, match=r"^reference: 3.red is not in the asset list"):
        parse_config({**BASE, "reference": "3.red"})


def test_dataset_beyond_inputs():
    with pytest.raises(CostackError, match=r"refers to dataset 3 but inputs lists only 2"):
        parse_config({**BASE, "assets": "1.nir,3.nir"})


def test_unknown_key_lists_allowed_keys():
    with pytest.raises(CostackError, match=r"config key 'refernce'.* does not exist.*reference"):
        parse_config({**BASE, "refernce": "1.nir"})


def test_missing_required_key():
    with pytest.raises(CostackError, match="'reference' is a required property"):
        parse_config({"inputs": ["a.json"], "assets": "1.nir"})


def test_bad_resampling_value():
    with pytest.raises(CostackError, match=r"^resampling: 'bicubic' is not one of"):
        parse_config({**BASE, "resampling": "bicubic"})


def test_expression_names():
    assert split_expression("ndvi:(norm_diff 1.nir 1.red)").name == "ndvi"
    with pytest.raises(CostackError, match="no 'name:' part"):
        split_expression("(norm_diff 1.nir 1.red)")
    with pytest.raises(CostackError, match="not a valid identifier"):
        split_expression("1ndvi:(+ 1.nir 1)")
    with pytest.raises(CostackError, match="is empty"):
        split_expression("ndvi:  ")
    with pytest.raises(CostackError, match="used twice"):
        parse_config({**BASE, "expressions": ["a:(+ 1.nir 1)", "a:(+ 2.nir 1)"]})


def test_cog_compression_is_deflate_unless_zstd_is_asked():
    assert parse_config(dict(BASE)).cog_compression == "deflate"
    assert parse_config({**BASE, "cog_compression": "zstd"}).cog_compression == "zstd"
    with pytest.raises(CostackError, match=r"^cog_compression: 'lzma' is not one of"):
        parse_config({**BASE, "cog_compression": "lzma"})
