"""Rule convert_cog: write one co-registered asset as a validated COG."""

from costack.steps import run_cog
from costack.workflow import run_step

run_step(snakemake, lambda: run_cog(snakemake.input[0], snakemake.output[0]))
