"""trainctl cli."""
