rule discover_assets:
    input:
        stac_items=[p for p in config["inputs"] if "://" not in p],
    output:
        "results/discover/manifest.csv",
    params:
        config={
            k: config[k]
            for k in (
                "inputs", "assets", "reference", "gcp_pixel_center", "physical_units",
                "allowed_sources", "allowed_paths", "http_timeout", "http_retries",
                "max_item_bytes",
            )
        },
    log:
        "logs/discover_assets/discover.log",
    threads: 1
    resources:
        mem_mb=512,
        runtime=10,
    conda:
        ENV
    script:
        "../scripts/discover_assets.py"
