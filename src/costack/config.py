"""The run's parameters: schema validation and parsing of the service's asset-list syntax.

The Charter Mapper Co-Register service takes an asset list written ``1.nir,2.nir,3.s0_db_c_vv``
(dataset index, dot, band), a reference asset from that list, an optional AOI in WKT and optional
``name:(s-expression)`` strings. This module turns a config mapping into a validated
:class:`RunConfig`, raising :class:`~costack.errors.CostackError` with a one-line message.
"""

from __future__ import annotations

import copy
import math
import os
import re
import stat
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from costack.errors import CostackError
from costack.io.manifest import AssetRef
from costack.stages.bandmath import MAX_NAME_LENGTH, Expression, split_expression

_ITEM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: the item id's longest is an expression name's (MAX_NAME_LENGTH): both name files and wildcards


def schema_path() -> Path:
    """Path of the JSON Schema (``config/schema.yaml``, shipped in the wheel as well)."""
    packaged = resources.files("costack").joinpath("schema.yaml")
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "config" / "schema.yaml"


def load_schema() -> dict[str, Any]:
    """The configuration schema as a mapping."""
    with open(schema_path(), encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@dataclass
class RunConfig:
    """A validated configuration."""

    inputs: list[str]
    assets: list[AssetRef]
    reference: AssetRef
    aoi: str | None = None
    expressions: list[Expression] = field(default_factory=list)
    resampling: str = "bilinear"
    gcp_pixel_center: bool = True
    item_id: str = "costack-stack"
    flow_mode: str = "auto"
    flow_radii: tuple[int, ...] | None = None
    max_displacement: float = 16.0
    warp_resampling: str = "bilinear"
    matching_assets: dict[int, str] = field(default_factory=dict)
    physical_units: bool = True
    verdict: dict[str, float] = field(default_factory=dict)
    on_failed_registration: str = "stop"
    cog_compression: str = "deflate"
    min_overlap_px: int = 64
    max_job_memory_mb: int = 12000
    max_grid_pixels: int = 500_000_000
    allowed_sources: list[str] = field(default_factory=list)
    allowed_paths: list[str] = field(default_factory=list)
    http_timeout: float = 30.0
    http_retries: int = 3
    max_item_bytes: int = 32_000_000

    @property
    def keys(self) -> list[str]:
        """Asset keys in list order (``1.red``, ``1.nir`` ...)."""
        return [a.key for a in self.assets]

    @property
    def datasets(self) -> list[int]:
        """Indices of the datasets that have at least one listed asset, in order."""
        return sorted({a.dataset for a in self.assets})

    @property
    def secondary_datasets(self) -> list[int]:
        """Datasets other than the reference's."""
        return [d for d in self.datasets if d != self.reference.dataset]

    def assets_of(self, dataset: int) -> list[AssetRef]:
        """Listed assets of one dataset, in list order."""
        return [a for a in self.assets if a.dataset == dataset]


def _schema_error_line(error: jsonschema.ValidationError) -> CostackError:
    where = ".".join(str(p) for p in error.absolute_path) or "config"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        return CostackError(
            f"config key {', '.join(repr(e) for e in extra)}",
            "does not exist",
            f"remove it; the keys are {', '.join(allowed)}",
        )
    if error.validator == "required":
        return CostackError(where, error.message, "add it to the config file")
    return CostackError(where, error.message, "see config/schema.yaml for the allowed values")


def validate_schema(config: dict[str, Any]) -> dict[str, Any]:
    """Validate ``config`` against the schema; return a copy with defaults filled in."""
    schema = load_schema()
    for by_dataset in ("matching_assets", "masks"):  # YAML's integer keys as strings
        if isinstance(config.get(by_dataset), dict):
            config = {**config, by_dataset: {str(k): v for k, v in config[by_dataset].items()}}
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        raise _schema_error_line(error)
    filled = copy.deepcopy(config)
    for key, spec in schema["properties"].items():
        if key not in filled and "default" in spec:
            filled[key] = copy.deepcopy(spec["default"])
    return filled


def parse_asset_list(assets: str | list[str]) -> list[AssetRef]:
    """Parse the service's asset list (``"1.nir,2.nir"`` or a list of tokens)."""
    tokens = assets.split(",") if isinstance(assets, str) else list(assets)
    refs = [AssetRef.parse(t) for t in tokens]
    seen: set[str] = set()
    for ref in refs:
        if ref.key in seen:
            raise CostackError("assets", f"asset {ref.key} is listed twice", "list it once")
        seen.add(ref.key)
    return refs


def _check_finite(value: Any, where: str = "config") -> None:
    """Refuse NaN and infinite numbers anywhere in the config (YAML's .nan and .inf pass the
    schema's bounds, then fail deep in a job)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise CostackError(where, f"{value} is not a finite number", "give a finite value")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{where}.{k}" if where != "config" else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_finite(v, f"{where}[{i}]")


def parse_config(config: dict[str, Any]) -> RunConfig:
    """Validate a raw config mapping (schema, asset list, reference, expression names)."""
    if not isinstance(config, dict):
        raise CostackError(
            "configfile",
            f"the configuration is a {type(config).__name__}, not a mapping of keys to values",
            "write it as 'key: value' lines (see config/config.yaml)",
        )
    check_size(config)
    _check_finite(config)
    raw = validate_schema(config)
    assets = parse_asset_list(raw["assets"])
    n_inputs = len(raw["inputs"])
    for ref in assets:
        if ref.dataset > n_inputs:
            raise CostackError(
                "assets",
                f"asset {ref.key} refers to dataset {ref.dataset} but inputs lists only "
                f"{n_inputs} dataset(s)",
                "add the item to inputs or fix the dataset index",
            )
    reference = AssetRef.parse(raw["reference"], parameter="reference")
    if reference not in assets:
        raise CostackError(
            "reference",
            f"{reference.key} is not in the asset list ({','.join(a.key for a in assets)})",
            "pick the reference among the listed assets",
        )
    expressions: list[Expression] = []
    for source in raw["expressions"]:
        expr = split_expression(source)
        if expr.name in {a.key for a in assets} or any(e.name == expr.name for e in expressions):
            raise CostackError(
                "expressions",
                f"name {expr.name!r} is used twice",
                "give every expression a name of its own, distinct from the input assets",
            )
        expressions.append(expr)
    aoi = raw["aoi"]
    if aoi is not None and not aoi.strip():
        aoi = None
    item_id = raw["item_id"]
    if not _ITEM_ID.fullmatch(item_id) or len(item_id) > MAX_NAME_LENGTH:
        raise CostackError(
            "item_id",
            f"{item_id[:80]!r} cannot name the item's file",
            f"use up to {MAX_NAME_LENGTH} letters, digits, '.', '_' or '-', starting with a "
            "letter or digit",
        )
    listed = {a.key for a in assets}
    for k, band in raw["matching_assets"].items():
        n = int(k) if str(k).isdigit() else None
        if n is None or n == reference.dataset or n not in {a.dataset for a in assets}:
            raise CostackError(
                "matching_assets",
                f"key {k!r} is not a secondary dataset of the asset list "
                f"({','.join(sorted({str(a.dataset) for a in assets if a != reference}))})",
                "key it by the index of a listed secondary dataset",
            )
        if f"{n}.{band}" not in listed:
            raise CostackError(
                "matching_assets",
                f"{n}: {band!r} is not a listed asset of dataset {n} "
                f"({','.join(a.key for a in assets if a.dataset == n)})",
                "name one of that dataset's listed bands",
            )
    return RunConfig(
        inputs=list(raw["inputs"]),
        assets=assets,
        reference=reference,
        aoi=aoi,
        expressions=expressions,
        resampling=raw["resampling"],
        gcp_pixel_center=raw["gcp_pixel_center"],
        item_id=item_id,
        flow_mode=raw["flow_mode"],
        flow_radii=None if raw["flow_radii"] is None else tuple(raw["flow_radii"]),
        max_displacement=float(raw["max_displacement"]),
        warp_resampling=raw["warp_resampling"],
        matching_assets={int(k): v for k, v in raw["matching_assets"].items()},
        physical_units=raw["physical_units"],
        verdict=dict(raw["verdict"]),
        on_failed_registration=raw["on_failed_registration"],
        cog_compression=raw["cog_compression"],
        min_overlap_px=int(raw["min_overlap_px"]),
        max_job_memory_mb=int(raw["max_job_memory_mb"]),
        max_grid_pixels=int(raw["max_grid_pixels"]),
        allowed_sources=list(raw["allowed_sources"]),
        allowed_paths=list(raw["allowed_paths"]),
        http_timeout=float(raw["http_timeout"]),
        http_retries=int(raw["http_retries"]),
        max_item_bytes=int(raw["max_item_bytes"]),
    )


#: Most values a configuration may expand to (aliases counted as often as they are used): a
#: real one has a few hundred; a YAML alias bomb has billions.
MAX_CONFIG_VALUES = 100_000
#: Deepest nesting of a configuration (the schema's deepest is 3).
MAX_CONFIG_DEPTH = 32
#: Largest config file read (bytes).
MAX_CONFIG_BYTES = 10_000_000


class _DuplicateKeyError(yaml.YAMLError):
    """A mapping that gives one key twice."""


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a key given twice in one mapping (PyYAML keeps the
    last silently)."""

    def construct_mapping(self, node, deep=False):  # noqa: ANN001, ANN201 (PyYAML's API)
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, list | dict):
                continue  # unhashable: PyYAML reports it itself
            if key in seen:
                raise _DuplicateKeyError(f"the key {key!r} is given twice (line "
                                         f"{key_node.start_mark.line + 1})")  # fmt: skip
            seen.add(key)
        return super().construct_mapping(node, deep)


def _expanded_size(node: yaml.Node) -> tuple[int, int]:
    """(values, depth) of a composed YAML document once its aliases are expanded, counted
    without expanding them (each node once, memoised), iteratively (no recursion)."""
    sizes: dict[int, tuple[int, int]] = {}
    todo: list[tuple[yaml.Node, bool]] = [(node, False)]
    while todo:
        n, ready = todo.pop()
        if id(n) in sizes:
            continue
        children: list[yaml.Node] = []
        if isinstance(n, yaml.SequenceNode):
            children = list(n.value)
        elif isinstance(n, yaml.MappingNode):
            children = [c for pair in n.value for c in pair]
        if not ready:
            todo.append((n, True))
            todo.extend((c, False) for c in children if id(c) not in sizes)
            continue
        total = 1 + sum(sizes.get(id(c), (1, 0))[0] for c in children)
        depth = 1 + max((sizes.get(id(c), (1, 0))[1] for c in children), default=0)
        sizes[id(n)] = (min(total, 10 * MAX_CONFIG_VALUES), depth)
    return sizes[id(node)]


def check_size(value: Any, parameter: str = "configfile") -> None:
    """Refuse a configuration (as Python values, shared references counted each time they
    are used, as Snakemake's own loader builds YAML aliases) that expands to more than
    :data:`MAX_CONFIG_VALUES` values or nests deeper than :data:`MAX_CONFIG_DEPTH`."""
    sizes: dict[int, tuple[int, int]] = {}
    todo: list[tuple[Any, bool]] = [(value, False)]
    while todo:
        v, ready = todo.pop()
        if id(v) in sizes:
            continue
        children = list(v.values()) if isinstance(v, dict) else list(v) if isinstance(
            v, list | tuple) else []  # fmt: skip
        if not ready:
            if len(todo) > MAX_CONFIG_VALUES:
                break
            todo.append((v, True))
            todo.extend((c, False) for c in children if id(c) not in sizes)
            continue
        total = 1 + sum(sizes.get(id(c), (1, 0))[0] for c in children)
        depth = 1 + max((sizes.get(id(c), (1, 0))[1] for c in children), default=0)
        sizes[id(v)] = (min(total, 10 * MAX_CONFIG_VALUES), depth)
    total, depth = sizes.get(id(value), (10 * MAX_CONFIG_VALUES, 0))
    _refuse_size(total, depth, parameter)


def _refuse_size(total: int, depth: int, parameter: str) -> None:
    if total > MAX_CONFIG_VALUES:
        raise CostackError(parameter, f"the configuration expands to more than "
                           f"{MAX_CONFIG_VALUES:,} values (YAML aliases repeat what they name)",
                           "write the values out, without alias chains")  # fmt: skip
    if depth > MAX_CONFIG_DEPTH:
        raise CostackError(parameter, f"the configuration is nested {depth} levels deep",
                           f"no key takes more than a few levels (at most "
                           f"{MAX_CONFIG_DEPTH}); see config/schema.yaml")  # fmt: skip


def load_yaml(text: str, parameter: str, name: str) -> Any:
    """YAML text as Python values: keys given twice, alias chains that expand beyond
    :data:`MAX_CONFIG_VALUES` (checked on the composed document, before anything is expanded)
    and nesting beyond :data:`MAX_CONFIG_DEPTH` are refused in one line."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        total, depth = _expanded_size(node)
        _refuse_size(total, depth, parameter)
        return loader.construct_document(node)
    except _DuplicateKeyError as err:
        raise CostackError(parameter, f"{name}: {err}", "give each key once") from err
    except RecursionError as err:
        raise CostackError(
            parameter,
            f"{name} is nested too deeply to be read",
            f"no key takes more than {MAX_CONFIG_DEPTH} levels",
        ) from err
    finally:
        loader.dispose()


def read_config_file(path: str | Path, parameter: str = "--configfile") -> dict[str, Any]:
    """A YAML config file as a mapping; unreadable, invalid YAML or not a mapping is one line
    (so are a key given twice, an alias bomb and deep nesting: :func:`load_yaml`)."""
    try:
        st = os.stat(path)  # before any open: a FIFO would block
        if not stat.S_ISREG(st.st_mode):
            raise CostackError(parameter, f"{path} is not a regular file", "give a YAML file")
        if st.st_size > MAX_CONFIG_BYTES:
            raise CostackError(parameter, f"{path} is larger than {MAX_CONFIG_BYTES:,} bytes",
                               "give the run's YAML config file")  # fmt: skip
        raw = load_yaml(Path(path).read_text(encoding="utf-8"), parameter, str(path)) or {}
    except OSError as err:
        raise CostackError(parameter, f"cannot read {path} ({err.strerror})", None) from err
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        reason = " ".join(str(err).split())[:160]
        raise CostackError(parameter, f"{path} is not valid YAML ({reason})",
                           "fix the YAML syntax") from err  # fmt: skip
    if not isinstance(raw, dict):
        raise CostackError(
            parameter, f"{path} holds a {type(raw).__name__}, not a mapping of keys to values",
            "write it as 'key: value' lines (see config/config.yaml)",
        )  # fmt: skip
    return raw
