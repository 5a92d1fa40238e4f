"""Offline validation of STAC documents against the JSON schemas this package vendors.

``stac_schemas/`` holds the STAC 1.1.0 core schemas and the GeoJSON schemas they reference (as
shipped in pystac's ``validation/jsonschemas``) and the extension schemas at the versions
costack's items declare, taken from the stac-extensions repositories at their release tags
(``stac_schemas/README.md``). Nothing is fetched: a document of another STAC version, or one
declaring an extension that is not vendored, gets an error saying so, never a pass.
"""

from __future__ import annotations

import json
from pathlib import Path

SCHEMAS = Path(__file__).resolve().parent / "stac_schemas"
STAC_VERSION = "1.1.0"
CORE = f"https://schemas.stacspec.org/v{STAC_VERSION}/"
EXTENSIONS = {
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json": "projection-v2.0.0.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json": "raster-v1.1.0.json",
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json": "eo-v1.1.0.json",
    "https://stac-extensions.github.io/file/v2.1.0/schema.json": "file-v2.1.0.json",
    "https://stac-extensions.github.io/sar/v1.3.0/schema.json": "sar-v1.3.0.json",
}
#: the core schema of each document type, under CORE
CORE_SCHEMAS = {
    "Feature": "item-spec/json-schema/item.json",
    "Catalog": "catalog-spec/json-schema/catalog.json",
    "Collection": "collection-spec/json-schema/collection.json",
}


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _registry():
    from referencing import Registry, Resource
    from referencing.exceptions import NoSuchResource

    resources = []
    for path in sorted((SCHEMAS / "stac-spec" / f"v{STAC_VERSION}").glob("*.json")):
        # the core schemas reference each other by file name within one folder per spec
        contents = Resource.from_contents(_load(path))
        for spec in ("item-spec", "catalog-spec", "collection-spec"):
            resources.append((f"{CORE}{spec}/json-schema/{path.name}", contents))
    for path in sorted((SCHEMAS / "geojson").glob("*.json")):
        resources.append((f"https://geojson.org/schema/{path.name}",
                          Resource.from_contents(_load(path))))  # fmt: skip
    for uri, name in EXTENSIONS.items():
        resources.append((uri, Resource.from_contents(_load(SCHEMAS / "extensions" / name))))

    def offline(uri: str):
        raise NoSuchResource(ref=uri)

    # the JSON Schema metaschemas (the collection schema references draft-07's) ship with
    # jsonschema (jsonschema-specifications)
    from jsonschema_specifications import REGISTRY as METASCHEMAS

    return Registry(retrieve=offline).with_resources(resources).combine(METASCHEMAS)


def validate_document(doc: dict) -> list[str]:
    """Every schema error of a STAC item, catalog or collection (the core schema of its type
    and each declared extension's); [] if valid."""
    import jsonschema

    kind = doc.get("type") if isinstance(doc, dict) else None
    if kind not in CORE_SCHEMAS:
        return [f"type {kind!r}: not a STAC item (Feature), catalog or collection"]
    errors: list[str] = []
    if doc.get("stac_version") != STAC_VERSION:
        errors.append(f"stac_version {doc.get('stac_version')}: only {STAC_VERSION}'s schemas "
                      "are vendored, so it cannot be validated offline")  # fmt: skip
        return errors
    registry = _registry()
    schemas = [CORE + CORE_SCHEMAS[kind]]
    for uri in doc.get("stac_extensions", []):
        if uri not in EXTENSIONS:
            errors.append(f"extension {uri} is not vendored, so it cannot be validated offline")
        else:
            schemas.append(uri)
    for uri in schemas:
        validator = jsonschema.Draft7Validator(registry.contents(uri), registry=registry)
        for top in validator.iter_errors(doc):
            # the deepest relevant error under an anyOf/oneOf, not "the document is not valid"
            err = jsonschema.exceptions.best_match([top])
            where = "/".join(str(p) for p in err.absolute_path) or "(document)"
            errors.append(f"{uri}: {where}: {err.message[:200]}")
    return errors


def validate_stac(path: str | Path, _seen: frozenset = frozenset()) -> tuple[list[str], int]:
    """Validate a STAC document offline, and for a catalog every catalog and item it links
    (``child`` and ``item`` links, local ones; a link on the network is an error: nothing is
    fetched). Returns the errors (each prefixed by its file's name) and the number of documents
    validated."""
    path = Path(path).resolve()
    try:
        doc = _load(path)
    except (OSError, ValueError) as err:
        return [f"{path.name}: cannot be read as JSON ({err})"], 0
    errors = [f"{path.name}: {e}" for e in validate_document(doc)]
    count = 1
    if isinstance(doc, dict) and doc.get("type") in ("Catalog", "Collection"):
        for link in doc.get("links", []):
            if link.get("rel") not in ("item", "child"):
                continue
            href = str(link.get("href", ""))
            if "://" in href and not href.startswith("file://"):
                errors.append(f"{path.name}: {link['rel']} {href} is on the network, not fetched")
                continue
            target = (path.parent / href.removeprefix("file://")).resolve()
            if target in _seen or target == path:
                continue
            if not target.is_file():
                errors.append(f"{path.name}: {link['rel']} {href} is missing")
                continue
            more, n = validate_stac(target, _seen | {path})
            errors += more
            count += n
    return errors, count
