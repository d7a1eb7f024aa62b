"""igpt-bench: extract layer activations of image backbones to HDF5, probe them, tabulate the results."""

__version__ = "0.1.0"
