"""Offline validation of STAC documents in the tests: the package's own
(:mod:`costack.io.validation`, schemas vendored under ``src/costack/io/stac_schemas``), plus a
search for local paths left in a document."""

from __future__ import annotations

from costack.io.validation import validate_document


def validate_item(doc: dict) -> list[str]:
    """Every schema error of an item (core and each declared extension); [] if valid."""
    return validate_document(doc)


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
