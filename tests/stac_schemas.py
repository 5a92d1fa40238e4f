"""Offline validation of STAC documents against vendored JSON schemas.

``tests/schemas`` holds the STAC 1.1.0 core schemas and GeoJSON schemas (as shipped in pystac's
``validation/jsonschemas``) and the extension schemas at the versions costack declares, taken
from the stac-extensions repositories at their release tags (see ``tests/schemas/README.md``).
A declared extension that is not vendored is a failure, not a skip: vendor it first.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource

SCHEMAS = Path(__file__).resolve().parent / "schemas"
CORE = "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/"
EXTENSIONS = {
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json": "projection-v2.0.0.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json": "raster-v1.1.0.json",
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json": "eo-v1.1.0.json",
    "https://stac-extensions.github.io/file/v2.1.0/schema.json": "file-v2.1.0.json",
    "https://stac-extensions.github.io/sar/v1.3.0/schema.json": "sar-v1.3.0.json",
}


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _registry() -> Registry:
    resources = []
    for path in sorted((SCHEMAS / "stac-spec" / "v1.1.0").glob("*.json")):
        resources.append((CORE + path.name, Resource.from_contents(_load(path))))
    for path in sorted((SCHEMAS / "geojson").glob("*.json")):
        resources.append((f"https://geojson.org/schema/{path.name}", Resource.from_contents(
            _load(path))))  # fmt: skip
    for uri, name in EXTENSIONS.items():
        resources.append((uri, Resource.from_contents(_load(SCHEMAS / "extensions" / name))))

    def offline(uri: str) -> Resource:
        raise NoSuchResource(ref=uri)

    return Registry(retrieve=offline).with_resources(resources)


def validate_item(doc: dict) -> list[str]:
    """Every schema error of an item (core and each declared extension); [] if valid."""
    registry = _registry()
    errors: list[str] = []
    if doc.get("stac_version") != "1.1.0":
        errors.append(f"stac_version {doc.get('stac_version')} has no vendored core schema")
    schemas = [CORE + "item.json"]
    for uri in doc.get("stac_extensions", []):
        if uri not in EXTENSIONS:
            errors.append(f"extension {uri} is not vendored under tests/schemas")
        else:
            schemas.append(uri)
    for uri in schemas:
        schema = registry.contents(uri)
        validator = jsonschema.Draft7Validator(schema, registry=registry)
        for err in validator.iter_errors(doc):
            where = "/".join(str(p) for p in err.absolute_path)
            errors.append(f"{uri}: {where}: {err.message[:200]}")
    return errors


def local_paths(doc, root: str = "") -> list[str]:
    """Every string in ``doc`` that is an absolute local path or a file:// URL."""
    found = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            found += local_paths(v, f"{root}/{k}")
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            found += local_paths(v, f"{root}/{i}")
    elif isinstance(doc, str) and (doc.startswith("/") or doc.startswith("file:")):
        found.append(f"{root}: {doc}")
    return found
