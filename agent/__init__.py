"""trainctl agent: runs on the instance (standard library only). Entry point: agent/trainctl_agent.py."""
