"""rayspace cluster package."""
