from __future__ import annotations

import pytest

from nli_service.config import (
    DEFAULT_MODEL,
    MAX_CPU_WORKERS,
    ConfigError,
    Settings,
    available_cores,
    cpu_quota,
    default_layout,
    documented_settings,
)


def test_defaults_match_the_documented_table() -> None:
    settings = Settings.from_env({})
    assert settings.model == DEFAULT_MODEL
    assert (settings.device, settings.dtype) == ("auto", "auto")
    layout = default_layout(available_cores())
    assert (settings.workers, settings.worker_class, settings.threads, settings.batch_size) == (
        layout.workers,
        "gthread",
        layout.threads,
        layout.batch_size,
    )
    assert settings.max_length is None
    assert settings.max_pairs == 256
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.request_timeout == 20
    assert (settings.log_dir, settings.log_level) == ("logs", "INFO")
    assert settings.metrics_port == 8000
    assert (settings.host, settings.port) == ("0.0.0.0", 5000)
    assert settings.offline is False


@pytest.mark.parametrize(
    ("cores", "gpu", "expected"),
    [
        (1, False, (1, "gthread", 16, 16)),
        (2, False, (2, "gthread", 16, 16)),
        (64, False, (MAX_CPU_WORKERS, "gthread", 16, 16)),
        (64, True, (1, "gthread", 32, 32)),
    ],
)
def test_the_default_layout_follows_the_cores_and_the_device(cores: int, gpu: bool, expected: tuple) -> None:
    layout = default_layout(cores, gpu=gpu)
    assert (layout.workers, layout.worker_class, layout.threads, layout.batch_size) == expected


def test_auto_layout_settings_fill_only_what_is_not_set(monkeypatch) -> None:
    import nli_service.config as config

    monkeypatch.setattr(config, "available_cores", lambda: 6)
    auto = Settings.from_env({})
    assert (auto.workers, auto.threads, auto.batch_size, auto.torch_threads_for(auto.workers)) == (6, 16, 16, 1)
    gpu = Settings.from_env({"NLI_DEVICE": "cuda"})
    assert (gpu.workers, gpu.threads, gpu.batch_size, gpu.worker_class) == (1, 32, 32, "gthread")
    mine = Settings.from_env({"NLI_WORKERS": "4", "NLI_WORKER_CLASS": "sync", "NLI_BATCH_SIZE": "8"})
    assert (mine.workers, mine.worker_class, mine.threads, mine.batch_size) == (4, "sync", 16, 8)


def test_values_are_parsed() -> None:
    settings = Settings.from_env(
        {
            "NLI_BATCH_SIZE": "32",
            "NLI_MAX_LENGTH": "128",
            "NLI_REQUEST_TIMEOUT": "2.5",
            "NLI_DEVICE": "CUDA:1",
            "NLI_DTYPE": "bfloat16",
            "NLI_LOG_LEVEL": "debug",
            "NLI_METRICS_PORT": "0",
        }
    )
    assert settings.batch_size == 32 and settings.max_length == 128 and settings.request_timeout == 2.5
    assert settings.device == "cuda:1" and settings.dtype == "bfloat16"
    assert settings.log_level == "DEBUG" and settings.metrics_port == 0


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("NLI_BATCH_SIZE", "0"),
        ("NLI_BATCH_SIZE", "eight"),
        ("NLI_MAX_PAIRS", "-1"),
        ("NLI_REQUEST_TIMEOUT", "0"),
        ("NLI_REQUEST_TIMEOUT", "nan"),
        ("NLI_DEVICE", "gpu"),
        ("NLI_DTYPE", "int8"),
        ("NLI_METRICS_PORT", "70000"),
        ("NLI_LOG_LEVEL", "LOUD"),
        ("NLI_MODEL", "  "),
        ("NLI_OFFLINE", "maybe"),
    ],
)
def test_an_invalid_value_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({variable: value})
    message = str(raised.value)
    assert message.startswith(f"{variable}=") and "\n" not in message


def test_hf_hub_offline_implies_offline() -> None:
    assert Settings.from_env({"HF_HUB_OFFLINE": "1"}).offline is True


def test_torch_threads_never_oversubscribe_the_cores() -> None:
    settings = Settings.from_env({})
    assert settings.torch_threads_for(workers=1000) == 1
    assert settings.torch_threads_for(workers=1) >= 1
    assert Settings.from_env({"NLI_TORCH_THREADS": "3"}).torch_threads_for(workers=4) == 3


def test_every_setting_is_documented() -> None:
    table = documented_settings()
    assert {row[0] for row in table} >= {
        "NLI_MODEL",
        "NLI_DEVICE",
        "NLI_DTYPE",
        "NLI_BATCH_SIZE",
        "NLI_MAX_LENGTH",
        "NLI_MAX_PAIRS",
        "NLI_REQUEST_TIMEOUT",
        "NLI_LOG_DIR",
        "NLI_LOG_LEVEL",
        "NLI_METRICS_PORT",
        "NLI_HOST",
        "NLI_PORT",
        "NLI_WORKERS",
    }
    assert all(doc for _, _, doc in table)


def test_the_readme_documents_every_setting_with_its_default() -> None:
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for env, default, _ in documented_settings():
        assert f"| `{env}` | `{default}` |" in readme, env


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),  # cgroup v2: a pod limited to 1.5 cores
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_a_cpu_quota_is_read_from_cgroup_v2_or_v1(tmp_path, files: dict[str, str], quota: float | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cpu_quota(tmp_path) == quota


def test_a_cpu_limit_below_the_affinity_caps_the_cores(tmp_path) -> None:
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a core: still one worker's core
    assert available_cores(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{1000 * 100000} 100000\n")  # above the affinity: the affinity
    assert available_cores(tmp_path) == available_cores(tmp_path / "absent")
