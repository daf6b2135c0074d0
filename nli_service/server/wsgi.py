"""Production WSGI app: ``gunicorn -c python:nli_service.server.gunicorn_conf nli_service.server.wsgi:app``."""

from nli_service.server.startup import build_app

app = build_app()
