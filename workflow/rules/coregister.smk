# Backbone: identity co-registration (colocated = coregistered). The dense-flow step replaces
# the computation and keeps the rule and file names.
rule coregister_asset:
    input:
        "results/colocated/{key}.tif",
    output:
        "results/coregistered/{key}.tif",
    log:
        "logs/coregister_asset/{key}.log",
    threads: 1
    resources:
        mem_mb=1024,
        runtime=30,
    conda:
        ENV
    script:
        "../scripts/coregister_asset.py"
