"""trainctl core."""
