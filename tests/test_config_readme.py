"""config/README.md describes every key of config/schema.yaml (the Snakemake workflow
catalog's convention): a key added to the schema without a line here fails."""

from __future__ import annotations

import re

import yaml
from conftest import REPO


def _schema_keys(props: dict, prefix: str = "") -> list[str]:
    keys = []
    for name, spec in props.items():
        keys.append(prefix + name)
        if isinstance(spec, dict) and isinstance(spec.get("properties"), dict):
            keys += _schema_keys(spec["properties"], f"{prefix}{name}.")
    return keys


def test_every_schema_key_is_described_in_config_readme():
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text(encoding="utf-8"))
    text = (REPO / "config" / "README.md").read_text(encoding="utf-8")
    described = set(re.findall(r"^\| `([A-Za-z0-9_.]+)` \| (\S.*?) \|", text, re.M))
    names = {name for name, _ in described}
    keys = _schema_keys(schema["properties"])
    missing = [k for k in keys if k not in names and not any(n.startswith(k + ".") for n in names)]
    assert not missing, f"config/README.md does not describe {missing}"
    unknown = sorted(names - set(keys))
    assert not unknown, f"config/README.md describes keys the schema lacks: {unknown}"
