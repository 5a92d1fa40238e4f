# Band math: one job per s-expression, on the co-registered assets it reads.


rule evaluate_expression:
    input:
        unpack(
            lambda wc: {
                "grid": "results/grid/grid.json",
                **{
                    f"asset_{i}": f"results/coregistered/{key}.tif"
                    for i, key in enumerate(EXPRESSIONS[wc.name].assets)
                },
            }
        ),
    output:
        "results/bandmath/{name}.tif",
    params:
        expression=lambda wc: EXPRESSIONS[wc.name].source,
        asset_keys=lambda wc: list(EXPRESSIONS[wc.name].assets),
        listed=KEYS,
    log:
        "logs/evaluate_expression/{name}.log",
    threads: 1
    resources:
        mem_mb=2048,
        runtime=10,
    conda:
        ENV
    script:
        "../scripts/evaluate_expression.py"
