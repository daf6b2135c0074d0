"""Gunicorn settings: the packaged ``nli_service/server/gunicorn_conf.py``, re-exported.

Run: ``gunicorn -c gunicorn.conf.py wsgi:app`` (``make run``). Gunicorn also reads
this file by default, so ``gunicorn -w 4 -b 0.0.0.0:5000 app:app`` uses it too.
"""

from nli_service.server.gunicorn_conf import *  # noqa: F403
