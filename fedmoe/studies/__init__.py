"""Studies: the experiment grids the notebooks and the benchmark scripts share (FLUX, FLAME, ...).

Each study module builds run configs, runs them through ``fedmoe.engines`` (finished runs are reused) and
computes its tables from run folders only.
"""
