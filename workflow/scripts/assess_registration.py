"""Rule assess_registration: residual misregistration before and after co-registration."""

from costack.jobs import run_step
from costack.stages.qc import rule_exclusions, run_qc

run_step(
    snakemake,
    lambda: run_qc(
        snakemake.input.ref,
        snakemake.input.colocated,
        snakemake.input.coregistered,
        snakemake.output[0],
        resolution_ratio=float(snakemake.params.resolution_ratio),
        max_displacement=float(snakemake.params.max_displacement),
        threads=snakemake.threads,
        confidence_tif=snakemake.input.confidence,
        sample_points=int(snakemake.params.qc_points),
        masks=rule_exclusions(snakemake.input.ref_mask, snakemake.input.sec_mask),
    ),
)
