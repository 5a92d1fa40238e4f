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
    # one core: mostly single-threaded work (10980 x 10980 tile on two threads, CPU over
    # wall: co-location 0.99, co-registration 1.33, COG 1.3, flow COG 1.2); two such
    # jobs side by side use the machine better than one holding both cores
    threads: 1
    resources:
        mem_mb=2048,
        runtime=30,
    conda:
        ENV
    script:
        "../scripts/coregister_asset.py"
