"""The package shows its layers, and they import downwards only:

- the run (``costack/*.py``: cli, config, plan, runner, jobs, precompile) over
- the stages (``costack/stages/``: one module per rule file, each owning its ``run_*``; they do
  not import each other; their private helpers ``_common``/``_tiled`` import no stage), over
- the registration algorithms (``costack/registration/``: arrays, no file I/O), over
- formats and contracts (``costack/io/``: rasters, grids, JSON, STAC, remote sources).

``costack.errors`` and ``costack.limits`` (an error type and constants) are usable everywhere.
Imports under ``if TYPE_CHECKING:`` are annotations only and are not followed.
"""

import ast
import re
from pathlib import Path

REPO = Path(__file__).parent.parent
SRC = REPO / "src" / "costack"
RULES = REPO / "workflow" / "rules"
STAGES = sorted(p.stem for p in RULES.glob("*.smk") if p.stem != "common")
FOUNDATION = {"costack", "costack.errors", "costack.limits"}
RUN = {f"costack.{p.stem}" for p in SRC.glob("*.py")} - FOUNDATION - {"costack.__init__"}
#: rank of each layer: a module may import only modules of its rank or lower
RANK = {"io": 0, "registration": 1, "stages": 2, "run": 3}


def _module(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _layer(module: str) -> str | None:
    """The layer of a costack module (None: the foundation)."""
    if module in FOUNDATION:
        return None
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in ("io", "registration", "stages"):
        return parts[1]
    return "run"


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(path: Path) -> set[str]:
    """costack modules a file imports at run time (at any depth, but not the type-only
    imports under ``if TYPE_CHECKING:``); ``from costack.x import y`` counts as
    ``costack.x.y`` when ``y`` is a module, else as ``costack.x``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            skip |= {id(n) for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "costack":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                is_module = (SRC.parent / sub.replace(".", "/")).with_suffix(".py").is_file() or (
                    SRC.parent / sub.replace(".", "/") / "__init__.py"
                ).is_file()
                found.add(sub if is_module else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "costack"}
    return found


MODULES = {_module(p): p for p in SRC.rglob("*.py")}


def test_the_tree_has_the_three_layers_and_the_run_on_top():
    for package in ("stages", "registration", "io"):
        assert (SRC / package / "__init__.py").is_file(), package
    top = sorted(p.stem for p in SRC.glob("*.py"))
    assert top == ["__init__", "cli", "config", "errors", "jobs", "limits", "plan",
                   "precompile", "runner"], top  # fmt: skip


def test_every_rule_file_has_its_stage_module():
    assert len(STAGES) == 10, STAGES
    missing = [s for s in STAGES if not (SRC / "stages" / f"{s}.py").is_file()]
    assert not missing, f"rule files without a stage module of the same name: {missing}"
    extra = sorted(
        p.stem for p in (SRC / "stages").glob("*.py")
        if not p.stem.startswith("_") and p.stem not in STAGES
    )  # fmt: skip
    assert not extra, f"public stage modules without a rule file: {extra}"


def test_every_module_imports_downwards_only():
    """No import climbs back up: io imports only io; registration imports registration and io;
    stages import registration, io and the stages' private helpers, never another stage; the
    run imports anything."""
    wrong = {}
    for name, path in MODULES.items():
        layer = _layer(name)
        if layer is None:
            continue
        for imported in _imports(path):
            target = _layer(imported)
            if target is None or imported == name:
                continue
            if RANK[target] > RANK[layer]:
                wrong.setdefault(name, []).append(imported)
            elif layer == "stages" and target == "stages":
                own_private = name.split(".")[-1].startswith("_")
                target_private = imported.split(".")[-1].startswith("_")
                if own_private or not target_private:  # a stage imports only private helpers
                    wrong.setdefault(name, []).append(imported)
    assert not wrong, wrong


def test_the_foundation_imports_nothing_of_costack():
    for name in ("costack.errors", "costack.limits"):
        assert not _imports(MODULES[name]), name


def test_registration_opens_no_file():
    """The algorithms take and return arrays: no rasterio, no open(), no Path reads or writes."""
    opening = re.compile(r"\brasterio\b|\bopen\(|\.read_(text|bytes)\(|\.write_(text|bytes)\(")
    found = {
        p.name: [line.strip() for line in p.read_text(encoding="utf-8").splitlines()
                 if opening.search(line) and not line.strip().startswith(("#", '"""'))]
        for p in (SRC / "registration").glob("*.py")
    }  # fmt: skip
    found = {k: v for k, v in found.items() if v}
    assert not found, found


def test_the_flow_stage_reaches_the_secondary_raster_downwards():
    """From run_flow, the modules the flow stage pulls in (transitively) are stages' private
    helpers, registration and io modules and the foundation: nothing above the stages and no
    other stage."""
    seen, todo = set(), ["costack.stages.flow"]
    while todo:
        name = todo.pop()
        if name in seen or name not in MODULES:
            continue
        seen.add(name)
        todo.extend(_imports(MODULES[name]))
    above = sorted(m for m in seen if _layer(m) == "run")
    other_stages = sorted(
        m for m in seen
        if _layer(m) == "stages" and m != "costack.stages.flow" and not
        m.split(".")[-1].startswith("_")
    )  # fmt: skip
    assert not above and not other_stages, (above, other_stages)
    assert "costack.registration.folki" in seen and "costack.io.rasters" in seen


def test_each_rule_script_calls_its_stage_module():
    """The script of every rule of STAGE.smk takes its entry point from costack.stages.STAGE
    (plus the rule-script glue, and the run's config parser where the stage takes a parsed
    config), so the rule and the `costack` subcommand run the same function."""
    wrong = {}
    for stage in STAGES:
        text = (RULES / f"{stage}.smk").read_text(encoding="utf-8")
        for script in re.findall(r'script:\s*"\.\./scripts/(\w+\.py)"', text):
            used = _imports(REPO / "workflow" / "scripts" / script) - {
                "costack.jobs", "costack.config"
            }  # fmt: skip
            if used != {f"costack.stages.{stage}"}:
                wrong[script] = (stage, sorted(used))
    assert not wrong, wrong
