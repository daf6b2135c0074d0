"""Production entry point: ``gunicorn -c gunicorn.conf.py wsgi:app`` (the packaged ``nli_service.wsgi``)."""

from nli_service.wsgi import app  # noqa: F401
