"""Rule assess_registration: residual misregistration before and after co-registration."""

from costack.qc import run_qc
from costack.workflow import run_step

run_step(
    snakemake,
    lambda: run_qc(
        snakemake.input.ref,
        snakemake.input.colocated,
        snakemake.input.coregistered,
        snakemake.output[0],
        resolution_ratio=float(snakemake.params.resolution_ratio),
        mode=snakemake.params.mode,
        max_displacement=float(snakemake.params.max_displacement),
    ),
)
