"""One home per stage: a rule file, a library module of the same name that owns the stage's
entry points, thin rule scripts that call them; stages import only what lies below them."""

import ast
import re
from pathlib import Path

REPO = Path(__file__).parent.parent
SRC = REPO / "src" / "costack"
RULES = REPO / "workflow" / "rules"
STAGES = sorted(p.stem for p in RULES.glob("*.smk") if p.stem != "common")


def _imports(path: Path) -> set[str]:
    """costack modules a file imports from (at any depth of the file)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.module.split(".")[1]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("costack.")
    }


def test_every_rule_file_has_its_stage_module():
    assert len(STAGES) == 10, STAGES
    missing = [s for s in STAGES if not (SRC / f"{s}.py").is_file()]
    assert not missing, f"rule files without a module of the same name: {missing}"


def test_stages_do_not_import_each_other():
    """Stages share contracts and helpers below them (manifest, grid_model, tiepoint_model,
    matching, imaging, ...), never each other's code."""
    crossing = {s: sorted(_imports(SRC / f"{s}.py") & set(STAGES) - {s}) for s in STAGES}
    assert not any(crossing.values()), crossing


def test_each_rule_script_calls_its_stage_module():
    """The script of every rule of STAGE.smk takes its entry point from costack.STAGE (plus
    the rule-script glue), so the rule and the `costack` subcommand run the same function."""
    wrong = {}
    for stage in STAGES:
        text = (RULES / f"{stage}.smk").read_text(encoding="utf-8")
        for script in re.findall(r'script:\s*"\.\./scripts/(\w+\.py)"', text):
            used = _imports(REPO / "workflow" / "scripts" / script) - {"jobs"}
            if used != {stage}:
                wrong[script] = (stage, sorted(used))
    assert not wrong, wrong
