"""Rule convert_flow_cog: the displacement and confidence rasters as COGs for the item."""

from costack.jobs import run_step
from costack.stages.catalog import run_cog


def step() -> None:
    run_cog(snakemake.input.flow, snakemake.output.displacement, threads=snakemake.threads)
    run_cog(snakemake.input.confidence, snakemake.output.confidence, threads=snakemake.threads)


run_step(snakemake, step)
