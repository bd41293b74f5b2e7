"""rayspace tune package."""
