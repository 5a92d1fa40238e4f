"""Rule coregister_asset: warp a secondary asset with its dataset's flow (reference: copy)."""

from costack.jobs import run_step
from costack.stages.coregister import run_coregister_identity, run_warp

if "flow" in snakemake.input.keys():
    step = lambda: run_warp(  # noqa: E731
        snakemake.input.colocated,
        snakemake.input.flow,
        snakemake.output[0],
        resampling=snakemake.params.resampling,
        db=snakemake.params.db,
    )
else:
    step = lambda: run_coregister_identity(snakemake.input.colocated, snakemake.output[0])  # noqa: E731
run_step(snakemake, step)
