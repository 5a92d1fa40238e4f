"""Rule match_tiepoints: sub-pixel tie points and the global model (Yan et al. 2016)."""

from costack.jobs import run_step
from costack.stages.tiepoints import (
    TiePointParams,
    registration_label,
    rule_exclusions,
    run_tiepoints,
)

run_step(
    snakemake,
    lambda: run_tiepoints(
        snakemake.input.ref,
        snakemake.input.sec,
        snakemake.output.csv,
        snakemake.output.model,
        snakemake.output.png,
        TiePointParams(max_shift=float(snakemake.params.max_shift)),
        label=registration_label(
            snakemake.input.manifest, snakemake.wildcards.n, snakemake.params.key
        ),
        resolution_ratio=float(snakemake.params.resolution_ratio),
        threads=snakemake.threads,
        masks=rule_exclusions(snakemake.input.ref_mask, snakemake.input.sec_mask),
    ),
)
