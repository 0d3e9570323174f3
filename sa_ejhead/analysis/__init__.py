"""Cost analysis helpers (parameters, FLOPs, latency)."""
