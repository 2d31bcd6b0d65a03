"""trainctl flows."""
