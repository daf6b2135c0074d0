"""Production WSGI app: ``gunicorn -c python:nli_service.gunicorn_conf nli_service.wsgi:app``."""

from nli_service.startup import build_app

app = build_app()
