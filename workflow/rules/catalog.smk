# The COGs of the stack wait for the registration verdicts and are refused with them: a run
# whose item is not published leaves no COG in results/stack (docs/security.md).
rule convert_cog:
    input:
        src="results/coregistered/{key}.tif",
        qc="results/qc/summary.json",
    output:
        "results/stack/{key}.tif",
    params:
        on_failed_registration=config["on_failed_registration"],
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
        qc="results/qc/summary.json",
    output:
        displacement="results/stack/{n}-displacement.tif",
        confidence="results/stack/{n}-confidence.tif",
        support="results/stack/{n}-support.tif",
    params:
        on_failed_registration=config["on_failed_registration"],
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
        src="results/bandmath/{name}.tif",
        qc="results/qc/summary.json",
    output:
        "results/stack/{name}.tif",
    params:
        on_failed_registration=config["on_failed_registration"],
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
        cogs=expand("results/stack/{key}.tif", key=KEYS),
        expression_cogs=expand("results/stack/{name}.tif", name=EXPRESSION_NAMES),
        displacements=expand("results/stack/{n}-displacement.tif", n=SECONDARY),
        confidences=expand("results/stack/{n}-confidence.tif", n=SECONDARY),
        supports=expand("results/stack/{n}-support.tif", n=SECONDARY),
        flow_stats=expand("results/flow/{n}.json", n=SECONDARY),
        qc="results/qc/summary.json",
        # the overview page first: it is there when this step refuses a failed registration
        overview="results/report.html",
    output:
        catalog="results/catalog.json",
        item=f"results/stack/{config['item_id']}.json",
    params:
        asset_keys=KEYS,
        reference=config["reference"],
        item_id=config["item_id"],
        expressions=[EXPRESSIONS[n].source for n in EXPRESSION_NAMES],
        secondary=SECONDARY,
        on_failed_registration=config["on_failed_registration"],
    log:
        "logs/build_catalog/catalog.log",
    threads: 1
    resources:
        mem_mb=1024,
        runtime=10,
    conda:
        ENV
    script:
        "../scripts/build_catalog.py"
