"""Gunicorn settings for nli-service, all derived from the NLI_* variables (see README).

Installed with the package, so it works outside the source tree:
``gunicorn -c python:nli_service.server.gunicorn_conf nli_service.server.wsgi:app`` (``nli-service serve``).
In the source tree, ``gunicorn.conf.py`` re-exports it (``make run``, and the guide's
``gunicorn -w 4 -b 0.0.0.0:5000 app:app``, since Gunicorn reads that file by default).
"""

from nli_service.server import hooks

settings = hooks.settings_or_exit()
hooks.prepare_metrics_dir()  # before anything imports prometheus_client

bind = f"{settings.host}:{settings.port}"
workers = settings.workers
worker_class = hooks.worker_class(settings)
threads = (
    settings.threads if settings.worker_class == "gthread" else 1
)  # sync + threads: Gunicorn would swap in gthread
preload_app = hooks.can_preload(settings)
timeout = hooks.worker_timeout(settings)
graceful_timeout = hooks.graceful_timeout(settings)
max_requests = settings.max_requests  # a recycled worker is re-forked from the preloaded master
max_requests_jitter = settings.max_requests // 10  # so workers do not all restart at once
worker_tmp_dir = "/dev/shm"
# Longer than the Retry-After of a 429 (1-3 s): a client that waited it out reuses its connection,
# instead of sending on one the server closed meanwhile (Gunicorn's default is 2 s).
keepalive = 5
control_socket_disable = True  # a fixed control-socket path makes two servers collide
accesslog = None  # the app writes its own JSON access records
logger_class = hooks.JsonLogger  # and Gunicorn's own messages are JSON too

when_ready = hooks.when_ready
pre_fork = hooks.pre_fork
post_worker_init = hooks.post_worker_init
pre_request = hooks.pre_request
child_exit = hooks.child_exit
worker_abort = hooks.worker_abort
worker_exit = hooks.worker_exit
