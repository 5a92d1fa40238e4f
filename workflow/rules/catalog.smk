rule convert_cog:
    input:
        "results/coregistered/{key}.tif",
    output:
        "results/stack/{key}.tif",
    log:
        "logs/convert_cog/{key}.log",
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
    output:
        catalog="results/catalog.json",
        item=f"results/stack/{config['item_id']}.json",
    params:
        asset_keys=KEYS,
        reference=config["reference"],
        item_id=config["item_id"],
        expressions=[EXPRESSIONS[n].source for n in EXPRESSION_NAMES],
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
