"""Data: the common Example record, the offline benchmark, real-dataset loaders and client partitioning."""

from fedmoe.data.loaders import load_records
from fedmoe.data.offline import make_benchmark, pretraining_corpus
from fedmoe.data.partition import domain_mix, partition, plot_partition
from fedmoe.data.records import Example, format_prompt

__all__ = [
    "Example",
    "domain_mix",
    "format_prompt",
    "load_records",
    "make_benchmark",
    "partition",
    "plot_partition",
    "pretraining_corpus",
]
