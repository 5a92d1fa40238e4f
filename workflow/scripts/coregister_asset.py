"""Rule coregister_asset: identity co-registration (backbone)."""

from costack.steps import run_coregister_identity
from costack.workflow import run_step

run_step(snakemake, lambda: run_coregister_identity(snakemake.input[0], snakemake.output[0]))
