# Validation before any job runs: config (schema and service syntax), STAC items, raster
# headers, and the common grid. A problem stops the run with one line and leaves no output.
import sys

from snakemake.utils import validate

from costack.config import schema_path
from costack.errors import CostackError
from costack.steps import parse_expressions, preflight

try:
    CFG, MANIFEST, GRID = preflight(config)
except CostackError as err:
    sys.exit(f"costack: error: {err}")

validate(config, schema=str(schema_path()), set_default=True)

KEYS = CFG.keys
EXPRESSIONS = parse_expressions(CFG)
EXPRESSION_NAMES = list(EXPRESSIONS)
ENV = "../../envs/costack.yaml"


wildcard_constraints:
    key=r"[0-9]+\.[A-Za-z0-9_\-]+",
    name=r"[A-Za-z_][A-Za-z0-9_]*",
