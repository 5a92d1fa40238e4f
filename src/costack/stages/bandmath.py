"""Band math with s-expressions: new assets from the co-registered stack.

The language is the Charter Mapper Co-Register service's: prefix s-expressions such as
``(norm_diff 1.nir 1.red)`` or ``(where (<= 1.s0_db_c_hh -23) 1 0)`` over the listed assets
(``N.band``) and numbers, with the operators ``+ - * /``, the comparisons
``< <= == != >= >``, the logical ``& |`` and the service's functions (its Table 2) ``asarray``,
``interp``, ``mean``, ``norm_diff``, ``where``, plus ``log10``, ``sqrt``, ``abs``, ``min`` and
``max``.

It is a closed vocabulary on purpose. snuggs (behind ``rio calc``) resolves any unknown name to
any NumPy function, so a configuration could call functions that read or write files; here the
parser only ever produces nodes from :data:`FUNCTIONS`, and anything else is an
:class:`ExpressionError` before any data is read.

Semantics: results are Float32 on the common grid; a pixel that is nodata (NaN) in any raster
operand of an element-wise operation is nodata in its result; division by zero and other
non-finite results are nodata (never inf); comparisons and logical results are 0/1. Nodata
propagates through every step: an intermediate that is not finite (``(/ 1.nir 0)``,
``(log10 -1)``) is nodata, so a comparison, a logical operation or a ``where`` that reads it
gives nodata, not 0, 1 or the other branch.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from costack.errors import CostackError
from costack.io.grids import Grid
from costack.io.rasters import (
    STREAM_CACHE_MB,
    grid_difference,
    open_float32,
    read_float32,
    read_window,
    require_colocated,
    strip_rows,
    strips,
    write_float32,
)

MAX_DEPTH = 64
MAX_LENGTH = 10_000
#: Most asset references in one expression (each is a raster operand in memory).
MAX_OPERANDS = 64

_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
_ASSET = re.compile(r"[1-9][0-9]*\.[A-Za-z_][A-Za-z0-9_\-]*", re.ASCII)

log = logging.getLogger(__name__)


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Longest expression name: it becomes a file name and a Snakemake wildcard.
MAX_NAME_LENGTH = 64


@dataclass(frozen=True)
class Expression:
    """A ``name:(s-expression)`` band-math definition (evaluated by
    :mod:`costack.stages.bandmath`)."""

    name: str
    text: str
    source: str


def split_expression(source: str) -> Expression:
    """Split ``name:(expr)`` into its name and expression text, checking the name part."""
    name, sep, text = source.partition(":")
    if not sep or not name.strip():
        raise CostackError(
            "expressions",
            f"{source!r} has no 'name:' part",
            "write it as name:(s-expression), e.g. ndvi:(norm_diff 1.nir 1.red)",
        )
    name = name.strip()
    if not _NAME.fullmatch(name):
        raise CostackError(
            "expressions",
            f"name {name[:80]!r} in {source[:120]!r} is not a valid identifier",
            "use letters, digits and underscores, starting with a letter",
        )
    if len(name) > MAX_NAME_LENGTH:
        raise CostackError(
            "expressions",
            f"name {name[:20]}... is {len(name)} characters long (it names a file)",
            f"use at most {MAX_NAME_LENGTH} characters",
        )
    if re.fullmatch(r"(.+?)\1{3,}", name):
        raise CostackError(
            "expressions",
            f"name {name[:40]!r} repeats one pattern, which Snakemake takes for a runaway rule",
            "give it a descriptive name, e.g. ndvi or water_mask",
        )
    if not text.strip():
        raise CostackError(
            "expressions",
            f"expression {name!r} is empty",
            "write an s-expression after the colon, e.g. ndvi:(norm_diff 1.nir 1.red)",
        )
    return Expression(name=name, text=text.strip(), source=source)


class ExpressionError(CostackError):
    """A malformed or unsafe s-expression: names the expression, the position and the fix."""

    def __init__(self, source: str, problem: str, position: int | None, fix: str) -> None:
        where = f" at position {position}" if position is not None else ""
        super().__init__("expressions", f"{source!r}: {problem}{where}", fix)


# ---------------------------------------------------------------------------------------------
# Syntax tree


@dataclass(frozen=True)
class Num:
    """A number literal."""

    value: float
    pos: int


@dataclass(frozen=True)
class Asset:
    """A reference to a listed asset, ``N.band``."""

    key: str
    pos: int


@dataclass(frozen=True)
class Call:
    """A function or operator applied to its operands."""

    name: str
    args: tuple[Node, ...]
    pos: int


Node = Num | Asset | Call


# ---------------------------------------------------------------------------------------------
# Values: a float, a 1-D array (asarray), or a raster with its invalid mask.


@dataclass
class Value:
    """An evaluated node: ``data`` (scalar, 1-D or 2-D) and the raster's invalid-pixel mask."""

    data: Any
    invalid: np.ndarray | None = None
    is_array: bool = False  # a 1-D array made by asarray


def _union(*values: Value) -> np.ndarray | None:
    masks = [v.invalid for v in values if v.invalid is not None]
    if not masks:
        return None
    out = masks[0]
    for m in masks[1:]:
        out = out | m  # not in place: a scalar's mask broadcasts to a raster's
    return np.array(out, copy=True)


def _elementwise(fn: Callable[..., Any]) -> Callable[..., Value]:
    def apply(*values: Value) -> Value:
        with np.errstate(all="ignore"):
            data = fn(*(v.data for v in values))
        return Value(data, _union(*values))

    return apply


def _nary(fn: Callable[[Any, Any], Any]) -> Callable[..., Value]:
    def apply(*values: Value) -> Value:
        with np.errstate(all="ignore"):
            data = values[0].data
            for v in values[1:]:
                data = fn(data, v.data)
        return Value(data, _union(*values))

    return apply


def _bool(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def apply(a: Any, b: Any) -> Any:
        out = fn(a, b)
        return out.astype(np.float32) if isinstance(out, np.ndarray) else float(out)

    return apply


def _minus(*values: Value) -> Value:
    if len(values) == 1:
        return _elementwise(np.negative)(*values)
    return _elementwise(np.subtract)(*values)


def _asarray(*values: Value) -> Value:
    return Value(np.array([float(v.data) for v in values], dtype=np.float64), is_array=True)


def _mean(value: Value) -> Value:
    data = np.asarray(value.data, dtype=np.float64)
    valid = np.isfinite(data)
    if value.invalid is not None:
        valid &= ~value.invalid
    return Value(np.float64(data[valid].mean()) if valid.any() else np.float64("nan"))


def _interp(x: Value, xp: Value, fp: Value) -> Value:
    """Piecewise-linear interpolation (NumPy's ``interp``). ``xp`` may be given in decreasing
    order: the (xp, fp) pairs are sorted together by xp first (NumPy silently gives wrong
    values otherwise); repeated xp values are refused at parse time."""
    xs, fs = np.atleast_1d(xp.data), np.atleast_1d(fp.data)
    order = np.argsort(xs, kind="stable")
    with np.errstate(all="ignore"):
        data = np.interp(x.data, xs[order], fs[order])
    return Value(data, x.invalid)


def _norm_diff(x: Value, y: Value) -> Value:
    with np.errstate(all="ignore"):
        data = (x.data - y.data) / (x.data + y.data)
    return Value(data, _union(x, y))


def _where(cond: Value, x: Value, y: Value) -> Value:
    data = np.where(np.asarray(cond.data) != 0, x.data, y.data)
    return Value(data, _union(cond, x, y))


def _logical(fn: Callable[[Any, Any], Any]) -> Callable[..., Value]:
    return _elementwise(lambda a, b: _bool(fn)(np.asarray(a) != 0, np.asarray(b) != 0))


#: name -> (minimum operands, maximum operands or None, implementation, usage)
FUNCTIONS: dict[str, tuple[int, int | None, Callable[..., Value], str]] = {
    "+": (2, None, _nary(np.add), "(+ a b ...)"),
    "*": (2, None, _nary(np.multiply), "(* a b ...)"),
    "-": (1, 2, _minus, "(- a b) or (- a)"),
    "/": (2, 2, _elementwise(np.true_divide), "(/ a b)"),
    "<": (2, 2, _elementwise(_bool(np.less)), "(< a b)"),
    "<=": (2, 2, _elementwise(_bool(np.less_equal)), "(<= a b)"),
    "==": (2, 2, _elementwise(_bool(np.equal)), "(== a b)"),
    "!=": (2, 2, _elementwise(_bool(np.not_equal)), "(!= a b)"),
    ">=": (2, 2, _elementwise(_bool(np.greater_equal)), "(>= a b)"),
    ">": (2, 2, _elementwise(_bool(np.greater)), "(> a b)"),
    "&": (2, 2, _logical(np.logical_and), "(& a b)"),
    "|": (2, 2, _logical(np.logical_or), "(| a b)"),
    "asarray": (1, None, _asarray, "(asarray 0 10000)"),
    "interp": (3, 3, _interp, "(interp x (asarray ...) (asarray ...))"),
    "mean": (1, 1, _mean, "(mean x)"),
    "norm_diff": (2, 2, _norm_diff, "(norm_diff x y)"),
    "where": (3, 3, _where, "(where condition x y)"),
    "log10": (1, 1, _elementwise(np.log10), "(log10 x)"),
    "sqrt": (1, 1, _elementwise(np.sqrt), "(sqrt x)"),
    "abs": (1, 1, _elementwise(np.abs), "(abs x)"),
    "min": (2, 2, _elementwise(np.fmin), "(min a b)"),
    "max": (2, 2, _elementwise(np.fmax), "(max a b)"),
}


# ---------------------------------------------------------------------------------------------
# Parsing


def _tokens(text: str) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in "()":
            out.append((ch, i))
            i += 1
        else:
            j = i
            while j < len(text) and not text[j].isspace() and text[j] not in "()":
                j += 1
            out.append((text[i:j], i))
            i = j
    return out


@dataclass(frozen=True)
class ParsedExpression:
    """A checked expression: its name, text, syntax tree and the asset keys it reads."""

    name: str
    text: str
    tree: Node
    assets: tuple[str, ...]

    @property
    def source(self) -> str:
        """``name:text`` as the user wrote it."""
        return f"{self.name}:{self.text}"


def _atom(source: str, atom: str, pos: int, assets: set[str] | None) -> Node:
    if assets is not None and atom in assets:
        return Asset(atom, pos)
    if _NUMBER.fullmatch(atom):
        value = float(atom)
        if not np.isfinite(value) or abs(value) > np.finfo(np.float32).max:
            raise ExpressionError(
                source, f"number {atom} is out of the Float32 range", pos, "use a smaller number"
            )
        return Num(value, pos)
    if _ASSET.fullmatch(atom):
        if assets is None:
            return Asset(atom, pos)
        raise ExpressionError(
            source,
            f"asset {atom} is not in the asset list",
            pos,
            f"use one of {', '.join(sorted(assets)) or 'the listed assets'}",
        )
    if atom in FUNCTIONS:
        raise ExpressionError(
            source, f"{atom!r} is a function and must follow '('", pos, f"write ({atom} ...)"
        )
    raise ExpressionError(
        source,
        f"unknown name {atom[:40]!r}",
        pos,
        "operands are numbers or listed assets written N.band (e.g. 1.nir)",
    )


def parse(source: str, assets: set[str] | None = None) -> ParsedExpression:
    """Parse and check ``name:(s-expression)`` against the listed asset keys.

    Args:
        source: the user's string, e.g. ``"ndvi:(norm_diff 1.nir 1.red)"``.
        assets: keys of the asset list (``{"1.nir", "1.red"}``); None accepts any ``N.band``.

    Raises:
        ExpressionError: with the expression, the position (0-based, in ``source``) and
            the fix.
    """
    if len(source) > MAX_LENGTH:
        raise ExpressionError(
            source[:60] + "...", f"longer than {MAX_LENGTH} characters", None, "shorten it"
        )
    expr = split_expression(source)
    text = expr.text
    offset = source.index(":") + 1
    offset += len(source[offset:]) - len(source[offset:].lstrip())
    tokens = [(tok, pos + offset) for tok, pos in _tokens(text)]
    if not tokens:
        raise ExpressionError(source, "the expression is empty", None, "write (op operands...)")
    if tokens[0][0] != "(":
        raise ExpressionError(
            source,
            "the expression must be given within brackets",
            tokens[0][1],
            f"write {expr.name}:({text})",
        )
    # Iterative parse with an explicit stack: no recursion, so no RecursionError.
    stack: list[tuple[int, list[Any]]] = []
    result: Node | None = None
    for index, (tok, pos) in enumerate(tokens):
        if result is not None:
            raise ExpressionError(
                source, f"text {tok!r} after the end of the expression", pos,
                "remove it, or wrap everything in one (op ...)",
            )  # fmt: skip
        if tok == "(":
            if len(stack) >= MAX_DEPTH:
                raise ExpressionError(
                    source, f"nesting deeper than {MAX_DEPTH} levels", pos, "simplify it"
                )
            stack.append((pos, []))
            nxt = tokens[index + 1][0] if index + 1 < len(tokens) else None
            if nxt is None:
                break
            if nxt in "()":
                raise ExpressionError(
                    source,
                    "'(' must be followed by a function or operator name",
                    pos,
                    f"use one of {' '.join(FUNCTIONS)}",
                )
            if nxt not in FUNCTIONS:
                raise ExpressionError(
                    source,
                    f"unknown function {nxt[:40]!r}",
                    tokens[index + 1][1],
                    f"use one of {' '.join(FUNCTIONS)}",
                )
        elif tok == ")":
            if not stack:
                raise ExpressionError(
                    source, "unbalanced brackets: ')' has no matching '('", pos, "remove it"
                )
            open_pos, items = stack.pop()
            name, args = items[0], tuple(items[1:])
            lo, hi, _, usage = FUNCTIONS[name]
            if len(args) < lo or (hi is not None and len(args) > hi):
                expected = f"{lo}" if hi == lo else (f"{lo} to {hi}" if hi else f"{lo} or more")
                raise ExpressionError(
                    source,
                    f"{name} takes {expected} operand(s), got {len(args)}",
                    open_pos,
                    f"write {usage}",
                )
            if name == "asarray" and not all(isinstance(a, Num) for a in args):
                raise ExpressionError(
                    source, "asarray takes numbers only", open_pos, "write (asarray 0 10000)"
                )
            for k, arg in enumerate(args):
                if (
                    isinstance(arg, Call)
                    and arg.name == "asarray"
                    and not (name == "interp" and k >= 1)
                ):
                    raise ExpressionError(
                        source, "asarray makes a list of values, usable only as the xp or fp of "
                        "interp", arg.pos, "write (interp x (asarray ...) (asarray ...))",
                    )  # fmt: skip
            if name == "interp" and not all(
                isinstance(a, Call) and a.name == "asarray" for a in args[1:]
            ):
                raise ExpressionError(
                    source, "interp takes its xp and fp as (asarray ...)", open_pos,
                    "write (interp x (asarray 0 10000) (asarray 0 1))",
                )  # fmt: skip
            if name == "interp" and len(args[1].args) != len(args[2].args):
                raise ExpressionError(
                    source, "interp's xp and fp have different lengths", open_pos,
                    "give as many values to both asarray",
                )  # fmt: skip
            if name == "interp" and len({a.value for a in args[1].args}) != len(args[1].args):
                raise ExpressionError(
                    source, "interp's xp repeats a value", open_pos,
                    "give distinct xp values (in any order: pairs are sorted by xp)",
                )  # fmt: skip
            node = Call(name, args, open_pos)
            if stack:
                stack[-1][1].append(node)
            else:
                result = node
        else:
            if stack and not stack[-1][1]:
                stack[-1][1].append(tok)  # the function name, checked above
            else:
                stack[-1][1].append(_atom(source, tok, pos, assets))
    if stack:
        raise ExpressionError(
            source,
            "unbalanced brackets: '(' is never closed",
            stack[-1][0],
            f"add {len(stack)} closing bracket(s) and any missing operands",
        )
    assert result is not None
    if result.name == "asarray":
        raise ExpressionError(
            source, "the result is an asarray list, not a raster", result.pos,
            "use asarray inside interp",
        )  # fmt: skip
    refs = _asset_keys(result)
    if len(refs) > MAX_OPERANDS:
        raise ExpressionError(
            source, f"{len(refs)} asset operands, more than {MAX_OPERANDS}", None,
            "split it into several expressions",
        )  # fmt: skip
    used = tuple(dict.fromkeys(refs))
    return ParsedExpression(expr.name, text, result, used)


def memory_bytes(parsed: ParsedExpression, pixels: int) -> int:
    """Peak memory of :func:`evaluate` on a grid of ``pixels``: each distinct raster read once
    (float64 and its mask), plus the operands one call holds at a time (9 bytes per pixel
    each), plus the Float32 result."""
    widest = 1
    todo: list[Node] = [parsed.tree]
    while todo:
        n = todo.pop()
        if isinstance(n, Call):
            widest = max(widest, len(n.args))
            todo.extend(n.args)
    return int(pixels * (9 * (len(parsed.assets) + widest + 1) + 4))


def _asset_keys(node: Node) -> list[str]:
    out: list[str] = []
    todo = [node]
    while todo:
        n = todo.pop()
        if isinstance(n, Asset):
            out.append(n.key)
        elif isinstance(n, Call):
            todo.extend(reversed(n.args))
    return out


# ---------------------------------------------------------------------------------------------
# Evaluation


def evaluate(
    parsed: ParsedExpression,
    rasters: Mapping[str, np.ndarray],
    shape: tuple[int, int] | None = None,
    means: Mapping[Call, float] | None = None,
) -> np.ndarray:
    """Evaluate on rasters (NaN = nodata) of one shape; return Float32 with NaN as nodata.

    Args:
        parsed: from :func:`parse`.
        rasters: asset key -> 2-D array; every key in ``parsed.assets`` must be present.
        shape: output shape when the expression reads no raster (a constant).
        means: values of ``mean`` calls computed beforehand over the whole grid (how a grid
            evaluated by windows keeps them global: :func:`evaluate_by_strips`).
    """
    for key in parsed.assets:
        if key not in rasters:
            raise ExpressionError(parsed.source, f"no raster given for {key}", None,
                                  f"pass {key}")  # fmt: skip
        if shape is None:
            shape = rasters[key].shape
        elif rasters[key].shape != shape:
            raise ExpressionError(parsed.source, f"{key} is not on the same grid", None,
                                  "co-locate the assets first")  # fmt: skip
    out = _value(parsed.tree, rasters, means or {})
    if out.is_array:
        raise ExpressionError(
            parsed.source, "the result is an asarray list, not a raster", None,
            "use asarray inside interp",
        )  # fmt: skip
    data = np.asarray(out.data, dtype=np.float64)
    if shape is not None and data.shape != tuple(shape):
        data = np.broadcast_to(data, shape)
    result = data.astype(np.float32)
    bad = ~np.isfinite(result)
    if out.invalid is not None:
        bad |= out.invalid
    return np.where(bad, np.float32(np.nan), result)


def _value(tree: Node, rasters: Mapping[str, np.ndarray], means: Mapping[Call, float]) -> Value:
    """The value of ``tree`` (each raster converted once, however often it is named)."""
    cache: dict[str, Value] = {}

    def value_of(node: Node) -> Value:
        if isinstance(node, Num):
            return Value(np.float64(node.value))  # NumPy scalars: 1/0 is inf, not an exception
        if isinstance(node, Asset):
            if node.key not in cache:
                data = np.asarray(rasters[node.key], dtype=np.float64)
                cache[node.key] = Value(data, ~np.isfinite(data))
            return cache[node.key]
        if node in means:
            return Value(np.float64(means[node]))
        out = FUNCTIONS[node.name][2](*(value_of(a) for a in node.args))
        if out.is_array:
            return out
        # a non-finite intermediate (1/0, log10 of a negative, NaN) is nodata from here on: a
        # comparison, a logical operation or a where on it gives nodata, never 0 or 1
        with np.errstate(all="ignore"):
            bad = ~np.isfinite(np.asarray(out.data, dtype=np.float64))
        if bad.any():
            out = Value(out.data, bad if out.invalid is None else (out.invalid | bad))
        return out

    try:
        return value_of(tree)
    finally:
        # value_of refers to itself (a reference cycle the garbage collector frees late):
        # release the rasters now, or evaluating strip after strip accumulates them
        cache.clear()


def _mean_calls(tree: Node) -> list[Call]:
    """The ``mean`` calls of ``tree`` that read a raster, innermost first."""
    out: list[Call] = []

    def visit(node: Node) -> None:
        if isinstance(node, Call):
            for a in node.args:
                visit(a)
            if node.name == "mean" and _asset_keys(node) and node not in out:
                out.append(node)

    visit(tree)
    return out


def evaluate_by_strips(
    parsed: ParsedExpression,
    read: Callable[[str, int, int], np.ndarray],
    shape: tuple[int, int],
    bounds: list[tuple[int, int]],
    write: Callable[[np.ndarray, int, int], None],
) -> int:
    """:func:`evaluate` over a grid too large to hold, strip by strip (``bounds``: the first
    row and the last row + 1 of each strip, covering the grid).

    Every operation is element-wise except ``mean``, a global reduction: each ``mean`` call
    that reads a raster is first computed over the whole grid (a float64 sum and count of its
    argument's valid pixels, strip by strip, innermost first), then every strip is evaluated
    with those values. ``read(key, r0, r1)`` gives an asset's rows ``r0:r1`` (NaN = nodata);
    ``write(result, r0, r1)`` takes them. Returns the number of valid pixels.
    """
    width = shape[1]
    means: dict[Call, float] = {}
    for call in _mean_calls(parsed.tree):
        total, count = 0.0, 0
        for r0, r1 in bounds:
            part = {k: read(k, r0, r1) for k in dict.fromkeys(_asset_keys(call))}
            v = _value(call.args[0], part, means)
            data = np.broadcast_to(np.asarray(v.data, dtype=np.float64), (r1 - r0, width))
            valid = np.isfinite(data)
            if v.invalid is not None:
                valid &= ~v.invalid
            total += float(data[valid].sum())
            count += int(valid.sum())
        means[call] = total / count if count else float("nan")
    n_valid = 0
    for r0, r1 in bounds:
        part = {k: read(k, r0, r1) for k in parsed.assets}
        result = evaluate(parsed, part, (r1 - r0, width), means)
        n_valid += int(np.isfinite(result).sum())
        write(result, r0, r1)
    return n_valid


#: Band math whose in-memory peak (:func:`costack.stages.bandmath.memory_bytes`) would pass this
#: runs
#: by strips of about BANDMATH_STRIP_BYTES (:func:`costack.stages.bandmath.evaluate_by_strips`).
BANDMATH_IN_MEMORY_BYTES = 1_000_000_000
BANDMATH_STRIP_BYTES = 256_000_000
#: Measured peak of a strip over :func:`costack.stages.bandmath.memory_bytes` (the reads, the
#: writer's
#: copies and NumPy's temporaries: about 140 B/px for a 49 B/px estimate on a 4291 px wide grid).
STRIP_OVERHEAD = 3


def run_bandmath(
    source: str,
    rasters: dict[str, str | Path],
    out_tif: str | Path,
    grid_json: str | Path | None = None,
    listed: set[str] | None = None,
    max_in_memory_bytes: int = BANDMATH_IN_MEMORY_BYTES,
    strip_bytes: int = BANDMATH_STRIP_BYTES,
) -> None:
    """Band math: evaluate ``name:(expr)`` on co-registered rasters into a Float32 GeoTIFF.

    Args:
        source: the expression as written, ``name:(s-expression)``.
        rasters: asset key -> raster path (at least every asset the expression reads).
        out_tif: output GeoTIFF (NaN is nodata).
        grid_json: grid of the run (gives the shape of constant expressions).
        listed: keys of the asset list (default: the keys of ``rasters``).
        max_in_memory_bytes: above this estimated peak the grid is evaluated by strips of about
            ``strip_bytes`` (same values; a ``mean`` is then summed strip by strip).
    """
    parsed = parse(source, set(listed) if listed is not None else set(rasters))
    grid = Grid.load(grid_json) if grid_json else None
    paths = [rasters[key] for key in parsed.assets]
    if paths:
        # single-band rasters on one grid (and on the run's grid when it is given)
        first = require_colocated("bandmath", *paths)
        if grid is not None and (why := grid_difference(grid, first)):
            raise CostackError("bandmath", f"{paths[0]} is not on the grid of {grid_json} "
                               f"({why})", "give the rasters of this run")  # fmt: skip
        grid = grid or first
    if grid is None:
        raise CostackError("expressions", f"{source!r} reads no asset and no grid was given",
                           "pass the grid JSON")  # fmt: skip
    tags = {"costack_expression": parsed.source}
    px = grid.width * grid.height
    if memory_bytes(parsed, px) <= max_in_memory_bytes:
        arrays = {key: read_float32(rasters[key])[0] for key in parsed.assets}
        result = evaluate(parsed, arrays, grid.shape)
        valid = int(np.isfinite(result).sum())
        write_float32(out_tif, result, grid, tags=tags)
    else:
        per_px = STRIP_OVERHEAD * memory_bytes(parsed, 1)
        rows = strip_rows(grid.width, grid.height, per_px, strip_bytes)
        log.info("%s: by strips of %d rows (in memory it would need %.1f GB)", parsed.name,
                 rows, memory_bytes(parsed, px) / 1e9)  # fmt: skip
        with ExitStack() as stack:
            stack.enter_context(rasterio.Env(GDAL_CACHEMAX=STREAM_CACHE_MB))
            srcs = {k: stack.enter_context(rasterio.open(rasters[k])) for k in parsed.assets}
            dst = stack.enter_context(open_float32(out_tif, grid, tags=tags))

            def read(key: str, r0: int, r1: int) -> np.ndarray:
                return read_window(srcs[key], Window(0, r0, grid.width, r1 - r0))

            def write(result: np.ndarray, r0: int, r1: int) -> None:
                dst.write(result, 1, window=Window(0, r0, grid.width, r1 - r0))

            bounds = list(strips(grid.height, rows))
            valid = evaluate_by_strips(parsed, read, grid.shape, bounds, write)
    log.info("%s: %d of %d pixels valid", parsed.name, valid, px)
