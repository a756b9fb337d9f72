from .twodmd import iter_2dmd, read_2dmd, write_2dmd  # noqa: F401  (2DMD folder layout)
