rule colocate_asset:
    input:
        manifest="results/discover/manifest.csv",
        grid="results/grid/grid.json",
        source=lambda wc: SOURCE.get(wc.key, []),
    output:
        "results/colocated/{key}.tif",
    params:
        resampling=config["resampling"],
        pixel_center=config["gcp_pixel_center"],
        # the sources' gate, as in discovery (docs/security.md)
        policy=POLICY,
    log:
        "logs/colocate_asset/{key}.log",
    threads: colocate_threads
    resources:
        mem_mb=2048,
        runtime=30,
    conda:
        ENV
    script:
        "../scripts/colocate_asset.py"
