"""trainctl tasks."""
