"""HTTP routes, one blueprint per module. Nothing here imports torch."""
