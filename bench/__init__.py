"""``make bench``: throughput, latency and memory of the real service, measured side by side."""
