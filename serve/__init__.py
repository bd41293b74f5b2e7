"""rayspace serve package."""
