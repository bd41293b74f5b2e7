"""rayspace workloads: the Parquet lake, Ray Data processing, Ray Train training and the main job.

Importing this package is cheap: nothing here imports Ray or torch at module import time,
so the CLI can validate configuration before Ray starts.
"""

__version__ = "0.1.0"
