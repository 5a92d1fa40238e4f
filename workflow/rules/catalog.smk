# The COGs are written as soon as their rasters are (results/cog/, as each dataset's chain
# goes on) and published by the catalog step, which links them into results/stack/ only when
# the registration verdicts allow it: a run whose item is not published leaves no COG in
# results/stack (docs/security.md). Written before the verdicts, the conversions fill the
# cores beside the other datasets' flows instead of all waiting for the last QC.
rule convert_cog:
    input:
        "results/coregistered/{key}.tif",
    output:
        "results/cog/{key}.tif",
    params:
        compression=config["cog_compression"],
    log:
        "logs/convert_cog/{key}.log",
    # one core: mostly single-threaded work (10980 x 10980 tile on two threads, CPU over
    # wall: co-location 0.99, co-registration 1.33, COG 1.3, flow COG 1.2); two such
    # jobs side by side use the machine better than one holding both cores
    threads: 1
    resources:
        mem_mb=1024,
        runtime=10,
    conda:
        ENV
    script:
        "../scripts/convert_cog.py"


rule convert_flow_cog:
    input:
        flow="results/flow/{n}.tif",
        confidence="results/flow/{n}.confidence.tif",
        support="results/flow/{n}.support.tif",
    output:
        displacement="results/cog/{n}-displacement.tif",
        confidence="results/cog/{n}-confidence.tif",
        support="results/cog/{n}-support.tif",
    params:
        compression=config["cog_compression"],
    log:
        "logs/convert_flow_cog/{n}.log",
    # one core: mostly single-threaded work (10980 x 10980 tile on two threads, CPU over
    # wall: co-location 0.99, co-registration 1.33, COG 1.3, flow COG 1.2); two such
    # jobs side by side use the machine better than one holding both cores
    threads: 1
    resources:
        mem_mb=1024,
        runtime=10,
    conda:
        ENV
    script:
        "../scripts/convert_flow_cog.py"


rule convert_expression_cog:
    input:
        "results/bandmath/{name}.tif",
    output:
        "results/cog/{name}.tif",
    params:
        compression=config["cog_compression"],
    log:
        "logs/convert_expression_cog/{name}.log",
    # one core: mostly single-threaded work (10980 x 10980 tile on two threads, CPU over
    # wall: co-location 0.99, co-registration 1.33, COG 1.3, flow COG 1.2); two such
    # jobs side by side use the machine better than one holding both cores
    threads: 1
    resources:
        mem_mb=1024,
        runtime=10,
    conda:
        ENV
    script:
        "../scripts/convert_cog.py"


rule build_catalog:
    input:
        manifest="results/discover/manifest.csv",
        grid="results/grid/grid.json",
        cogs=expand("results/cog/{key}.tif", key=KEYS),
        expression_cogs=expand("results/cog/{name}.tif", name=EXPRESSION_NAMES),
        displacements=expand("results/cog/{n}-displacement.tif", n=SECONDARY),
        confidences=expand("results/cog/{n}-confidence.tif", n=SECONDARY),
        supports=expand("results/cog/{n}-support.tif", n=SECONDARY),
        flow_stats=expand("results/flow/{n}.json", n=SECONDARY),
        qc="results/qc/summary.json",
        # the overview page first: it is there when this step refuses a failed registration
        overview="results/report.html",
    output:
        catalog="results/catalog.json",
        # the item and the COGs of results/cog, linked here once the verdicts allow it: one
        # directory output. After a job Snakemake re-dates its outputs one by one, and a linked
        # COG is also this job's input (one inode): as files, those re-dated across a clock tick
        # read as outputs older than an input, and the run failed (it did once in the test
        # suite, on a two-dataset stack)
        stack=directory("results/stack"),
    params:
        asset_keys=KEYS,
        reference=config["reference"],
        item_id=config["item_id"],
        expressions=[EXPRESSIONS[n].source for n in EXPRESSION_NAMES],
        secondary=SECONDARY,
        on_failed_registration=config["on_failed_registration"],
    log:
        # named by the item (its file is inside the folder output, so no longer listed)
        f"logs/build_catalog/{config['item_id']}.log",
    # the COGs' checksums two at a time (hashlib releases the GIL): the run's last job
    threads: 2
    resources:
        mem_mb=1024,
        runtime=10,
    conda:
        ENV
    script:
        "../scripts/build_catalog.py"
