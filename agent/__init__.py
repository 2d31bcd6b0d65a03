"""trainctl agent."""
