"""Production entry point: ``gunicorn -c gunicorn.conf.py wsgi:app`` (the packaged ``nli_service.server.wsgi``)."""

from nli_service.server.wsgi import app  # noqa: F401
