"""igpt-bench: extract layer activations of image backbones to HDF5, probe them, tabulate the results.

From Python, use ``bench.api``: ``run``, ``extract``, ``report``, ``compare`` (mistakes raise
``bench.errors.BenchError``). The package root stays light so the CLI starts fast.
"""

__version__ = "0.1.0"
