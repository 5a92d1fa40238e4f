"""Band math: the service's examples, errors with positions, closed vocabulary, properties."""

from __future__ import annotations

import string

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costack.errors import CostackError
from costack.stages.bandmath import FUNCTIONS, ExpressionError, evaluate, parse

RNG = np.random.default_rng(7)
SHAPE = (6, 7)


def _raster(lo: float, hi: float, holes: int = 3) -> np.ndarray:
    a = RNG.uniform(lo, hi, SHAPE)
    a.ravel()[RNG.choice(a.size, holes, replace=False)] = np.nan
    return a.astype(np.float32)


R = {
    "1.pan": _raster(0.05, 0.5),
    "2.pan": _raster(0.05, 0.5),
    "1.nir": _raster(0.1, 0.5),
    "1.red": _raster(0.02, 0.3),
    "1.green": _raster(0.02, 0.3),
    "1.s0_db_c_hh": _raster(-30, 0),
}
KEYS = set(R)


def _run(source: str) -> np.ndarray:
    return evaluate(parse(source, KEYS), R, SHAPE)


def _nodata(*keys: str) -> np.ndarray:
    m = np.zeros(SHAPE, bool)
    for k in keys:
        m |= np.isnan(R[k])
    return m


def _check(out: np.ndarray, expected: np.ndarray, *keys: str) -> None:
    assert out.dtype == np.float32 and out.shape == SHAPE
    bad = _nodata(*keys)
    assert np.isnan(out[bad]).all()
    np.testing.assert_allclose(out[~bad], expected[~bad], rtol=1e-6, atol=1e-6)


def test_service_examples_match_numpy():
    p1, p2 = R["1.pan"], R["2.pan"]
    nir, red, green, hh = R["1.nir"], R["1.red"], R["1.green"], R["1.s0_db_c_hh"]
    _check(_run("sum:(+ 1.pan 2.pan)"), p1 + p2, "1.pan", "2.pan")
    _check(_run("difference:(- 1.pan 2.pan)"), p1 - p2, "1.pan", "2.pan")
    _check(_run("average:(/ (+ 1.pan 2.pan) 2)"), (p1 + p2) / 2, "1.pan", "2.pan")
    _check(_run("diff_from_avg:(- 1.pan (mean 1.pan))"), p1 - np.nanmean(p1), "1.pan")
    _check(_run("ndvi:(norm_diff 1.nir 1.red)"), (nir - red) / (nir + red), "1.nir", "1.red")
    _check(
        _run("rescaled:(interp 1.red (asarray 0 10000) (asarray 0 1))"),
        np.interp(red, [0, 10000], [0, 1]),
        "1.red",
    )
    _check(
        _run("opt_water_mask:(where (>= (norm_diff 1.green 1.nir) 0.3) 1 0)"),
        np.where((green - nir) / (green + nir) >= 0.3, 1.0, 0.0),
        "1.green",
        "1.nir",
    )
    out = _run("sar_water_mask:(where (<= 1.s0_db_c_hh -23) 1 0)")
    _check(out, np.where(hh <= -23, 1.0, 0.0), "1.s0_db_c_hh")
    assert set(np.unique(out[np.isfinite(out)])) <= {0.0, 1.0}


def test_extra_functions_and_division_by_zero():
    nir, red = R["1.nir"], R["1.red"]
    _check(_run("db:(* 10 (log10 1.nir))"), 10 * np.log10(nir), "1.nir")
    _check(_run("c:(min (max 1.nir 0.2) 0.4)"), np.clip(nir, 0.2, 0.4), "1.nir")
    _check(_run("s:(sqrt (abs (- 1.red)))"), np.sqrt(red), "1.red")
    _check(_run("n:(* -1.5e-1 1.red 2)"), -0.3 * red, "1.red")
    out = _run("z:(/ 1.nir (- 1.red 1.red))")
    assert np.isnan(out).all()  # inf is nodata, never written
    both = _run("b:(& (> 1.nir 0.3) (| (< 1.red 0.1) (!= 1.red 1.red)))")
    expected = ((nir > 0.3) & ((red < 0.1) | (red != red))).astype(np.float32)
    _check(both, expected, "1.nir", "1.red")


@pytest.mark.parametrize(
    ("source", "message", "position"),
    [
        ("ndvi:(norm_diff 1.nir", "'(' is never closed", 5),
        ("ndvi:(norm_diff 1.nir 1.red))", "text ')' after the end", 28),
        ("a:(+ 1.nir 1.red) 3", "text '3' after the end", 18),
        ("a:(+ 1.nir 1.red", "never closed", 2),
        ("a:+ 1.nir 1.red)", "must be given within brackets", 2),
        ("a:(ndvi 1.nir 1.red)", "unknown function 'ndvi'", 3),
        ("a:(norm_diff 1.nir)", "norm_diff takes 2 operand(s), got 1", 2),
        ("a:(where 1 2)", "where takes 3 operand(s), got 2", 2),
        ("a:(+ 1.nir)", "+ takes 2 or more operand(s), got 1", 2),
        ("a:(+ 1.nir 4.swir)", "asset 4.swir is not in the asset list", 11),
        ("a:(+ 1.nir nir)", "unknown name 'nir'", 11),
        ("a:(+ 1.nir 1e999)", "out of the Float32 range", 11),
        ("a:()", "must be followed by a function", 2),
        ("a:(+ 1.nir mean)", "is a function and must follow", 11),
    ],
)
def test_errors_name_expression_position_and_fix(source, message, position):
    with pytest.raises(ExpressionError) as info:
        parse(source, KEYS)
    text = str(info.value)
    assert text.startswith(f"expressions: {source!r}: ")
    assert message in text and f"at position {position};" in text
    assert "\n" not in text


@pytest.mark.parametrize(
    ("source", "message"),
    [("(norm_diff 1.nir 1.red)", "no 'name:' part"), ("ndvi:", "is empty"), ("ndvi:  ", "empty")],
)
def test_name_part_errors(source, message):
    with pytest.raises(CostackError, match=message):
        parse(source, KEYS)


@pytest.mark.parametrize(
    "attack",
    [
        "x:(__import__ 1)",
        "x:(open 1.nir)",
        "x:(save 1.nir 1.red)",
        "x:(fromfile 1)",
        "x:(np.load 1)",
        "x:(tofile 1.nir)",
        "x:(eval 1)",
        "x:(+ 1.nir (read_csv 1))",
        "x:(getattr 1.nir 1)",
        "x:(+ 1.nir __builtins__)",
    ],
)
def test_vocabulary_is_closed(attack):
    with pytest.raises(ExpressionError):
        parse(attack, KEYS)


def test_deep_nesting_is_an_expression_error():
    deep = "x:" + "(abs " * 1000 + "1.nir" + ")" * 1000
    with pytest.raises(ExpressionError, match="nesting deeper"):
        parse(deep, KEYS)


# --- property-based: random trees against a direct NumPy evaluation -----------------------

LEAVES = sorted(KEYS - {"1.s0_db_c_hh"})
UNARY = {"abs": np.abs, "sqrt": np.sqrt, "log10": np.log10, "-": np.negative}
BINARY = {
    "+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide, "min": np.fmin,
    "max": np.fmax, "<": np.less, ">=": np.greater_equal, "norm_diff": None,
}  # fmt: skip


def _tree(depth: int):
    leaf = st.one_of(
        st.sampled_from(LEAVES).map(lambda k: ("asset", k)),
        st.floats(-5, 5, allow_nan=False).map(lambda v: ("num", round(v, 3))),
    )
    if depth == 0:
        return leaf
    sub = _tree(depth - 1)
    return st.one_of(
        leaf,
        st.tuples(st.sampled_from(sorted(UNARY)), sub).map(lambda t: ("call", t[0], [t[1]])),
        st.tuples(st.sampled_from(sorted(BINARY)), sub, sub).map(
            lambda t: ("call", t[0], [t[1], t[2]])
        ),
        st.tuples(sub, sub, sub).map(lambda t: ("call", "where", list(t))),
    )


def _text(node) -> str:
    if node[0] == "asset":
        return node[1]
    if node[0] == "num":
        return repr(float(node[1]))
    return "(" + " ".join([node[1], *(_text(a) for a in node[2])]) + ")"


def _direct(node):
    """(values, nodata mask) by plain NumPy: any raster operand's nodata is nodata, and so is
    any intermediate that is not finite."""
    if node[0] == "asset":
        a = R[node[1]].astype(np.float64)
        return a, np.isnan(a)
    if node[0] == "num":
        return np.full(SHAPE, node[1]), np.zeros(SHAPE, bool)
    args = [_direct(a) for a in node[2]]
    mask = np.logical_or.reduce([m for _, m in args])
    v = [a for a, _ in args]
    with np.errstate(all="ignore"):
        if node[1] == "where":
            out = np.where(v[0] != 0, v[1], v[2])
        elif len(v) == 1:
            out = UNARY[node[1]](v[0])
        elif node[1] == "norm_diff":
            out = (v[0] - v[1]) / (v[0] + v[1])
        else:
            out = BINARY[node[1]](v[0], v[1]).astype(np.float64)
    # a non-finite intermediate is nodata from there on (the documented rule)
    return out, mask | ~np.isfinite(out)


@settings(max_examples=300, deadline=None)
@given(_tree(4))
def test_random_trees_match_numpy(tree):
    if tree[0] != "call":
        tree = ("call", "+", [tree, ("num", 0.0)])
    out = evaluate(parse("r:" + _text(tree), KEYS), R, SHAPE)
    expected, mask = _direct(tree)
    expected = expected.astype(np.float32)
    mask = mask | ~np.isfinite(expected)
    assert np.isnan(out[mask]).all()
    assert np.isfinite(out[~mask]).all()
    np.testing.assert_allclose(out[~mask], expected[~mask], rtol=1e-5, atol=1e-6)


ALPHABET = string.printable + "éλ∑中\u200b\x00()()(((" + "".join(FUNCTIONS)


@pytest.mark.parametrize(
    "source",
    ["x:(asarray 0)", "x:(+ 1.nir (asarray 1 2))", "x:(interp 1.red 0 1)",
     "x:(interp 1.red (asarray 0 1) (asarray 0))"],
)  # fmt: skip
def test_asarray_only_inside_interp(source):
    with pytest.raises(ExpressionError):
        parse(source, KEYS)


@settings(max_examples=1500, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=80))
def test_random_strings_raise_only_expression_errors(text):
    for source in (text, "x:" + text, "x:(" + text):
        try:
            parsed = parse(source, KEYS)
        except CostackError:
            continue
        evaluate(parsed, R, SHAPE)  # a string that parses must also evaluate


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from(["(", ")", "+", "1.nir", "1e308", "-1e-400", "asarray",
                                 "mean", "where", "interp", "9" * 400]), max_size=60))  # fmt: skip
def test_random_token_soup(tokens):
    try:
        parsed = parse("x:" + " ".join(tokens), KEYS)
    except CostackError:
        return
    evaluate(parsed, R, SHAPE)


def test_band_math_by_strips_gives_the_in_memory_values(tmp_path):
    """A grid too large for memory is evaluated by strips; global ``mean`` calls (nested too)
    are summed over the whole grid first, so the values are the in-memory ones."""
    from conftest import write_raster
    from rasterio.transform import Affine

    from costack.io.rasters import read_float32
    from costack.stages.bandmath import run_bandmath

    rng = np.random.default_rng(3)
    t = Affine(10, 0, 500_000, 0, -10, 5_000_000)
    paths = {}
    for key in ("1.nir", "1.red"):
        a = rng.uniform(0.02, 0.5, (700, 300)).astype(np.float32)
        a[rng.random(a.shape) < 0.05] = np.nan
        a[600:] = np.nan  # a strip with no data at all
        paths[key] = write_raster(tmp_path / f"{key}.tif", a, transform=t)
    for source in (
        "ndvi:(norm_diff 1.nir 1.red)",
        "anomaly:(- 1.nir (mean 1.nir))",
        "z:(/ (- 1.nir (mean 1.nir)) (mean (abs (- 1.nir (mean 1.red)))))",
        "lut:(interp (mean 1.red) (asarray 0 1) (asarray 1 0))",
    ):
        whole, strips = tmp_path / "whole.tif", tmp_path / "strips.tif"
        run_bandmath(source, paths, whole)
        run_bandmath(source, paths, strips, max_in_memory_bytes=0, strip_bytes=1)
        a, b = read_float32(whole)[0], read_float32(strips)[0]
        np.testing.assert_allclose(b, a, rtol=1e-6, equal_nan=True)
        if not source.startswith("lut"):  # a constant of the whole grid's mean elsewhere
            assert np.isfinite(b[:600]).mean() > 0.85 and np.isnan(b[600:]).all()
