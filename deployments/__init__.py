"""trainctl deployments."""
