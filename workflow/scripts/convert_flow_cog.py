"""Rule convert_flow_cog: the displacement, confidence and support rasters as COGs in
results/cog/, which the catalog step publishes once the registration verdicts allow it."""

from costack.jobs import run_step
from costack.stages.catalog import run_cog


def step() -> None:
    i, o = snakemake.input, snakemake.output
    run_cog(i.flow, o.displacement, threads=snakemake.threads)
    run_cog(i.confidence, o.confidence, threads=snakemake.threads)
    run_cog(i.support, o.support, threads=snakemake.threads)


run_step(snakemake, step)
