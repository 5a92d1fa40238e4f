# Each asset of a secondary dataset is warped with its dataset's flow; the reference
# dataset's assets are not moved.


rule coregister_asset:
    input:
        unpack(coregister_inputs),
    output:
        "results/coregistered/{key}.tif",
    params:
        resampling=config["warp_resampling"],
        db=lambda wc: bool(DB[wc.key]),
    log:
        "logs/coregister_asset/{key}.log",
    threads: warp_threads
    resources:
        mem_mb=2048,
        runtime=30,
    conda:
        ENV
    script:
        "../scripts/coregister_asset.py"
