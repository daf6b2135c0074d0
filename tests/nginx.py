"""Run the shipped nginx configuration (deploy/nginx/nli-service.conf) in front of test services."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
from serving import PROJECT_ROOT, free_port

SHIPPED = PROJECT_ROOT / "deploy" / "nginx" / "nli-service.conf"
SHIPPED_REPLICAS = PROJECT_ROOT / "deploy" / "nginx" / "replicas.conf"
REPLICAS_INCLUDE = "    include /etc/nginx/nli-service-replicas.conf;"


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        raise RuntimeError("nginx is not installed: apt-get install nginx (.ci/run does)")
    return found


def render(upstream_ports: list[int], listen_port: int, access_log: Path | None = None) -> str:
    """The shipped file with this test's replicas (deploy/nginx/replicas.conf's server line on their
    ports, in place of the include), port and access log (none by default)."""
    text = SHIPPED.read_text()
    shipped_server = re.search(r"^server 127\.0\.0\.1:5000 (.*)$", SHIPPED_REPLICAS.read_text(), re.MULTILINE)
    assert shipped_server, "deploy/nginx/replicas.conf's server line changed; update tests/nginx.py"
    servers = "\n".join(f"    server 127.0.0.1:{port} {shipped_server[1]}" for port in upstream_ports)
    assert text.count(REPLICAS_INCLUDE) == 1, "the shipped config's upstream changed; update tests/nginx.py"
    text = text.replace(REPLICAS_INCLUDE, servers)
    text, replaced = re.subn(r"listen 8080;", f"listen 127.0.0.1:{listen_port};", text)
    assert replaced == 1
    log = "access_log off;" if access_log is None else f"access_log {access_log} nli_access;"
    text, replaced = re.subn(r"access_log /var/log/nginx/\S+ nli_access;", log, text)
    assert replaced == 1, "the shipped config's access_log line changed; update tests/nginx.py"
    return text


@contextmanager
def nginx_in_front(upstream_ports: list[int], work: Path) -> Iterator[str]:
    """nginx (one process, in the foreground) serving the shipped config; yields its URL.
    Its access log (the shipped JSON format) is ``work / "access.log"``."""
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    (work / "nli-service.conf").write_text(render(upstream_ports, port, work / "access.log"))
    temp = {name: work / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    main = f"""
daemon off;
master_process off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 2048; }}
http {{
    access_log off;
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    include {work}/nli-service.conf;
}}
"""
    (work / "nginx.conf").write_text(main)
    check = subprocess.run([nginx_binary(), "-t", "-c", str(work / "nginx.conf")], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen([nginx_binary(), "-c", str(work / "nginx.conf")], stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.get(f"{url}/health", timeout=2)
                break
            except requests.RequestException:
                if process.poll() is not None or time.monotonic() > deadline:
                    stderr = process.stderr.read() if process.stderr else ""
                    raise RuntimeError(f"nginx did not start: {stderr}") from None
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def access_records(work: Path) -> list[dict]:
    """The JSON lines nginx has written to its access log under ``work`` (see :func:`nginx_in_front`)."""
    log = work / "access.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
