"""Rule build_catalog: the STAC catalog and the stack's item, with its COGs published from
results/cog/ into results/stack/ once the registration verdicts allow it."""

from pathlib import Path

from costack.jobs import run_step
from costack.stages.catalog import run_catalog

run_step(
    snakemake,
    lambda: run_catalog(
        snakemake.input.manifest,
        snakemake.input.grid,
        dict(zip(snakemake.params.asset_keys, snakemake.input.cogs, strict=True)),
        snakemake.params.reference,
        snakemake.params.item_id,
        snakemake.output.catalog,
        Path(snakemake.output.stack) / f"{snakemake.params.item_id}.json",
        expressions=dict(
            zip(snakemake.params.expressions, snakemake.input.expression_cogs, strict=True)
        ),
        qc_json=snakemake.input.qc,
        on_failed_registration=snakemake.params.on_failed_registration,
        publish_dir=snakemake.output.stack,
        threads=snakemake.threads,
        flows={
            n: (d, c, s, u)
            for n, d, c, s, u in zip(
                snakemake.params.secondary,
                snakemake.input.displacements,
                snakemake.input.confidences,
                snakemake.input.flow_stats,
                snakemake.input.supports,
                strict=True,
            )
        },
    ),
)
