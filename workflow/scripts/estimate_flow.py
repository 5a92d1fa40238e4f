"""Rule estimate_flow: dense flow between the reference and a secondary dataset."""

from costack.jobs import run_step
from costack.stages.flow import FlowParams, rule_exclusions, run_flow

params = FlowParams(
    mode=snakemake.params.mode,
    radii=tuple(snakemake.params.radii) if snakemake.params.radii else None,
    max_displacement=float(snakemake.params.max_displacement),
)
run_step(
    snakemake,
    lambda: run_flow(
        snakemake.input.ref,
        snakemake.input.sec,
        snakemake.output.flow,
        snakemake.output.confidence,
        params,
        stats_json=snakemake.output.stats,
        resolution_ratio=float(snakemake.params.resolution_ratio),
        model_json=snakemake.input.model,
        support_tif=snakemake.output.support,
        hold_changes=bool(snakemake.params.hold_changes),
        masks=rule_exclusions(snakemake.input.ref_mask, snakemake.input.sec_mask),
        radar_aux=list(snakemake.input.aux),
    ),
)
