"""``make wheel-test``: the wheel carries the bundled model, so an installed copy falls back offline.

Builds the sdist and the wheel with ``python -m build`` from the committed tree (the wheel is
built from the sdist, so both must carry the model), installs the wheel into a fresh venv
(pip's configured wheel folder supplies the CPU torch), and runs its ``nli-service serve``
from an empty directory elsewhere with the hub offline, an empty Hugging Face cache and
``NLI_MODEL`` unset: the bundled model, read from the venv, must answer.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from release.served import CheckFailed, check_bundled_fallback, wait_for_status
from release.source import export_tree
from reliability.service import free_port

MODEL_IN_WHEEL = "nli_service/models/nli-minilm-l6/model.safetensors"
ISOLATED_PREFIXES = ("NLI_", "PROMETHEUS_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_")


def timed(command: list[str], timeout: float, **options: object) -> float:
    """Run ``command`` to completion; its seconds. CheckFailed with its output if it fails."""
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **options)
    if result.returncode != 0:
        raise CheckFailed(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return time.monotonic() - started


def build_wheel(source: Path, dist: Path) -> tuple[Path, float]:
    seconds = timed([sys.executable, "-m", "build", "--outdir", str(dist), str(source)], timeout=900)
    (wheel,) = dist.glob("*.whl")
    if MODEL_IN_WHEEL not in zipfile.ZipFile(wheel).namelist():
        raise CheckFailed(f"{wheel.name} does not carry {MODEL_IN_WHEEL}")
    return wheel, seconds


def offline_env(venv: Path, hf_home: Path, port: int, metrics_port: int) -> dict[str, str]:
    """No setting, no hub, no cache, no checkout on the path: only what the venv brings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(ISOLATED_PREFIXES) and key not in ("VIRTUAL_ENV", "PYTHONPATH")
    }
    env.update(
        PATH=f"{venv / 'bin'}:/usr/bin:/bin",
        HF_HOME=str(hf_home),
        HF_HUB_OFFLINE="1",
        NLI_HOST="127.0.0.1",
        NLI_PORT=str(port),
        NLI_METRICS_PORT=str(metrics_port),
    )
    return env


def serve_and_check(venv: Path, elsewhere: Path, hf_home: Path, ready_timeout: float) -> dict:
    port = free_port()
    env = offline_env(venv, hf_home, port, free_port())
    url = f"http://127.0.0.1:{port}"
    with (elsewhere / "serve.out").open("w+") as output:
        command = [str(venv / "bin" / "nli-service"), "serve"]
        process = subprocess.Popen(command, cwd=elsewhere, env=env, stdout=output, stderr=subprocess.STDOUT)
        try:
            ready = wait_for_status(f"{url}/ready", 200, ready_timeout, still_running=lambda: process.poll() is None)
            model = check_bundled_fallback(url, str(venv))
            process.send_signal(signal.SIGTERM)
            exit_code = process.wait(timeout=60)
        except (CheckFailed, subprocess.TimeoutExpired) as failure:
            output.seek(0)
            raise CheckFailed(f"{failure}\n--- service output ---\n{output.read()[-3000:]}") from None
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    if exit_code != 0:
        raise CheckFailed(f"the installed service exited {exit_code} on SIGTERM")
    return {"ready_seconds": round(ready, 1), "model": model["id"], "model_path": model["path"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="HEAD", help="commit to build (default HEAD: the committed tree)")
    parser.add_argument("--ready-timeout", type=float, default=180)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="nli-wheel-test-") as work_dir:
        work = Path(work_dir)
        commit = export_tree(args.source, work / "source")
        try:
            wheel, build_seconds = build_wheel(work / "source", work / "dist")
            timed([sys.executable, "-m", "venv", str(work / "venv")], timeout=120)
            install_seconds = timed([str(work / "venv" / "bin" / "pip"), "install", str(wheel)], timeout=1800)
            for empty in ("elsewhere", "hf-home"):
                (work / empty).mkdir()
            facts = serve_and_check(work / "venv", work / "elsewhere", work / "hf-home", args.ready_timeout)
        except CheckFailed as failure:
            print(f"FAILED: {failure}", file=sys.stderr)
            return 1
        facts = {
            "commit": commit[:12],
            "build_seconds": round(build_seconds, 1),
            "wheel_mb": round(wheel.stat().st_size / 1e6, 1),
            "install_seconds": round(install_seconds, 1),
            **facts,
        }
    print("wheel-test passed: " + json.dumps(facts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
