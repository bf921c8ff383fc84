"""Real servers for the integration tests, on free ports, stopped by their own PIDs."""
