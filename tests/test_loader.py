"""Finding models: local folders, the hub cache, and fast, clear failures."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from pathlib import Path

import pytest
from model_factory import build_model

from nli_service.inference.engine import NLIEngine
from nli_service.inference.loader import ModelLoadError, resolve_model


@pytest.fixture
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_a_local_folder_is_used_as_is(model_dir: Path) -> None:
    source = resolve_model(str(model_dir), offline=True, hub_timeout=1)
    assert (source.origin, source.path) == ("local", str(model_dir.resolve()))


def test_a_missing_folder_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"), offline=False, hub_timeout=1)


def test_a_folder_without_config_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_model(str(tmp_path), offline=False, hub_timeout=1)


def test_an_uncached_hub_id_offline_fails_at_once_and_says_how_to_fix_it(empty_hub_cache: Path) -> None:
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as raised:
        resolve_model("cross-encoder/nli-distilroberta-base", offline=True, hub_timeout=5)
    assert time.monotonic() - started < 2
    message = str(raised.value)
    assert "not in the Hugging Face cache" in message and str(empty_hub_cache) in message
    assert "NLI_MODEL" in message


@pytest.fixture
def local_hub(monkeypatch: pytest.MonkeyPatch):
    """``local_hub(handler)``: the hub's API answered by ``handler`` (None: a hub that accepts
    connections and never answers). Whether the real hub is reachable from here plays no part."""
    from huggingface_hub import constants, hf_api

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    servers: list = []

    def serve(handler: type[http.server.BaseHTTPRequestHandler] | None) -> None:
        if handler is None:
            silent = socket.create_server(("127.0.0.1", 0))  # listens; nobody ever accepts
            servers.append(silent)
            port = silent.getsockname()[1]
        else:
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            servers.append(server)
            port = server.server_address[1]
        monkeypatch.setattr(hf_api.api, "endpoint", f"http://127.0.0.1:{port}")

    yield serve
    for server in servers:
        if isinstance(server, socket.socket):
            server.close()
        else:
            server.shutdown()
            server.server_close()


class _NoSuchRepository(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # what the hub answers for a repository that does not exist
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": "Repository not found"}')

    def log_message(self, *args) -> None:
        pass


def test_an_uncached_hub_id_gives_up_on_a_silent_hub_within_the_hub_timeout(empty_hub_cache: Path, local_hub) -> None:
    local_hub(None)
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as raised:
        resolve_model("nli-service-tests/no-such-model", offline=False, hub_timeout=1)
    assert time.monotonic() - started < 5, "the probe waited past NLI_HUB_TIMEOUT"
    message = str(raised.value)
    assert "no-such-model" in message and "the hub is unreachable" in message and "NLI_MODEL" in message


def test_an_uncached_hub_id_the_hub_does_not_have_is_reported_as_such(empty_hub_cache: Path, local_hub) -> None:
    local_hub(_NoSuchRepository)
    with pytest.raises(ModelLoadError) as raised:
        resolve_model("nli-service-tests/no-such-model", offline=False, hub_timeout=5)
    message = str(raised.value)
    assert "no-such-model" in message and "is not on the Hugging Face hub" in message
    assert "RepositoryNotFoundError" in message


def test_an_uncached_hub_id_with_the_hub_out_of_reach_fails_at_once(empty_hub_cache: Path) -> None:
    # conftest.py points the hub at a closed local port: the connection is refused.
    started = time.monotonic()
    with pytest.raises(ModelLoadError, match="the hub is unreachable"):
        resolve_model("nli-service-tests/no-such-model", offline=False, hub_timeout=5)
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("offline", [True, False])
def test_a_cached_hub_id_is_found_without_the_network(
    empty_hub_cache: Path, model_dir: Path, offline: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    real_snapshot_download = huggingface_hub.snapshot_download

    def local_only(*args, **kwargs):
        assert kwargs.get("local_files_only"), "a cached model must not be fetched"
        return real_snapshot_download(*args, **kwargs)

    def no_network(*args, **kwargs):
        raise AssertionError("the hub was contacted for a cached model")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", local_only)
    monkeypatch.setattr(huggingface_hub, "model_info", no_network)
    # Lay out the cache the way huggingface_hub does: refs/main -> snapshots/<commit>/files.
    repo = empty_hub_cache / "models--acme--tiny-nli"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in model_dir.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    source = resolve_model("acme/tiny-nli", offline=offline, hub_timeout=1)
    assert source.origin == "cache" and Path(source.path) == snapshot


def test_auto_dtype_is_float32_on_cpu_and_float16_on_gpu() -> None:
    import torch

    from nli_service.inference.loader import resolve_dtype

    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda", 0)) == torch.float16
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


def test_an_invalid_name_is_reported() -> None:
    with pytest.raises(ModelLoadError, match="neither an existing folder nor a valid hub id"):
        resolve_model("bad name!", offline=True, hub_timeout=1)


def test_a_model_without_nli_labels_is_refused(models_root: Path) -> None:
    folder = build_model(models_root / "sentiment", id2label={0: "negative", 1: "positive"})
    with pytest.raises(ModelLoadError, match="cannot serve NLI"):
        NLIEngine.from_pretrained(str(folder))


def test_a_corrupt_folder_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError) as raised:
        NLIEngine.from_pretrained(str(tmp_path))
    assert "cannot load model from" in str(raised.value) and "\n" not in str(raised.value)
