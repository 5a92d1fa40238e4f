"""Rule convert_flow_cog: the displacement, confidence and support rasters as COGs for the
item, once the registration verdicts allow the stack to be published."""

from costack.jobs import run_step
from costack.stages.catalog import run_cog


def step() -> None:
    i, policy = snakemake.input, snakemake.params.on_failed_registration
    run_cog(i.flow, snakemake.output.displacement, i.qc, policy, snakemake.threads)
    run_cog(i.confidence, snakemake.output.confidence, i.qc, policy, snakemake.threads)
    run_cog(i.support, snakemake.output.support, i.qc, policy, snakemake.threads)


run_step(snakemake, step)
