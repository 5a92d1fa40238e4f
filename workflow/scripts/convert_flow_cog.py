"""Rule convert_flow_cog: the displacement, confidence and support rasters as COGs in
results/cog/, which the catalog step publishes once the registration verdicts allow it."""

from costack.jobs import run_step
from costack.stages.catalog import run_cog


def step() -> None:
    i, o = snakemake.input, snakemake.output
    codec = snakemake.params.compression
    run_cog(i.flow, o.displacement, threads=snakemake.threads, compression=codec)
    run_cog(i.confidence, o.confidence, threads=snakemake.threads, compression=codec)
    run_cog(i.support, o.support, threads=snakemake.threads, compression=codec)


run_step(snakemake, step)
