"""Production entry point: ``gunicorn -c gunicorn.conf.py wsgi:app``."""

from nli_service.startup import build_app

app = build_app()
