"""Rule colocate_mask: a dataset's item quality mask and user mask on the grid."""

from costack.jobs import run_step
from costack.stages.colocate import run_colocate_mask

run_step(
    snakemake,
    lambda: run_colocate_mask(
        snakemake.input.grid,
        snakemake.output[0],
        int(snakemake.wildcards.n),
        item_mask=snakemake.params.item_mask,
        user_mask=snakemake.params.user_mask,
        scl_classes=snakemake.params.scl_classes,
        qa_bits=snakemake.params.qa_bits,
        policy=dict(snakemake.params.policy),
    ),
)
