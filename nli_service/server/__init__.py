"""Running the service: Gunicorn's config and hooks, the balanced worker, the metrics exporter, entry points.

The only package that imports Gunicorn.
"""
