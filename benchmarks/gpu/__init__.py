"""The steps of the GPU benchmark (`benchmarks/gpu_bench.py`, run by `benchmarks/gpu.sh`), one module each.

Every step takes the shape's `workload.Workload` (model, documents, scorer settings and the run's
`workload.RunSettings`); only torch and transformers are imported where a step runs, and pyspark
only in the Spark step, so a GPU machine without Spark or Java runs the others.
"""
