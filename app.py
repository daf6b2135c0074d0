"""Development entry point: ``python app.py``.

Runs Flask's server unthreaded and without the reloader, so requests run in the
main thread where the SIGALRM request timeout works. Also exposes ``app`` for
``gunicorn -w 4 -b 0.0.0.0:5000 app:app``.
"""

from nli_service.server.startup import build_app, run_dev_server

app = build_app()

if __name__ == "__main__":
    run_dev_server(app)
