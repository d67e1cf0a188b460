"""Build the container image, run it, and get a real upscale out of it (slow: minutes).

No registry can be reached here, so the test builds the image as the README says for an offline
machine: a Debian base made by `docker/debian-base.sh` (debootstrap), the wheelhouse from
`docker/wheelhouse.py cpu`, then `docker build --build-arg BASE=…`. It uses a running Docker engine
if there is one, else starts Debian's dockerd for the test only (needs root, as in CI).

Checkpoints: the shipped ones in models/checkpoints when there are any; otherwise one untrained
checkpoint is written into the build context (never into the repository).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest
from deploy_support import DOCKER, REPO, tool
from PIL import Image

pytestmark = pytest.mark.slow

BASE_TAG = "elasticsr-base:bookworm"
IMAGE_TAG = "elasticsr:test"
CONTAINER = "elasticsr-image-test"
READY_TIMEOUT_S = 300


def _run(*cmd: str, env: dict[str, str] | None = None, timeout: float = 900) -> str:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        tail = f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        raise AssertionError(f"{' '.join(cmd)} exited {done.returncode}:\n{tail}")
    return done.stdout


# ---- the engine, the base, the build ----


@pytest.fixture(scope="module")
def docker_env() -> Iterator[dict[str, str]]:
    """Environment whose DOCKER_HOST reaches a working engine (ours if none was running)."""
    docker = tool("docker")
    env = dict(os.environ)
    if subprocess.run([docker, "info"], capture_output=True, env=env).returncode == 0:
        yield env
        return
    dockerd = tool("dockerd")
    # Short paths: the socket path must fit in sockaddr_un (108 bytes).
    root = Path(tempfile.mkdtemp(prefix="esr-dockerd-", dir="/tmp"))
    env["DOCKER_HOST"] = f"unix://{root}/docker.sock"
    env["ELASTICSR_TEST_OWN_DOCKERD"] = "1"  # everything it holds goes away with it
    paths = ["--data-root", f"{root}/data", "--exec-root", f"{root}/exec", "--pidfile", f"{root}/dockerd.pid"]
    with open(root / "dockerd.log", "wb") as log:
        # nice: builds and containers run under the daemon and inherit its priority (2 shared cores).
        daemon = subprocess.Popen(
            ["nice", "-n", "10", dockerd, "--host", env["DOCKER_HOST"], *paths], stdout=log, stderr=log
        )
        try:
            deadline = time.monotonic() + 60
            while subprocess.run([docker, "info"], capture_output=True, env=env).returncode:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    log_tail = (root / "dockerd.log").read_text()[-3000:]
                    raise AssertionError(f"dockerd did not start:\n{log_tail}")
                time.sleep(0.5)
            yield env
        finally:
            daemon.terminate()
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
            _unmount_under(root)
            shutil.rmtree(root, ignore_errors=True)


def _unmount_under(root: Path) -> None:
    """The daemon can leave mounts behind (overlays, its network namespace file) that block removal;
    unmount every one below `root`, deepest first."""
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(f"{root}/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def _untrained_checkpoint(folder: Path) -> str:
    """Write one untrained checkpoint + manifest (synthetic quality and timing) into `folder`."""
    import torch
    from service_support import synthetic_manifest

    from models import registry
    from models.checkpoint import export_weights, write_manifest

    name = "ssrno"
    torch.manual_seed(0)
    model = registry.build(name).eval()
    sha = export_weights(model, folder / f"{name}.safetensors")
    write_manifest(synthetic_manifest(name, model, sha), folder)
    return name


def _build_context(into: Path) -> str:
    """Assemble what the .dockerignore allow-list admits; return the method the image will serve."""
    for name in ("pyproject.toml", "README.md", ".dockerignore"):
        shutil.copy2(REPO / name, into / name)
    for name in ("models", "service"):
        shutil.copytree(REPO / name, into / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (into / "docker").mkdir()
    for name in ("Dockerfile", "healthcheck.py"):
        shutil.copy2(DOCKER / name, into / "docker" / name)
    shutil.copytree(DOCKER / "wheels", into / "docker" / "wheels", copy_function=os.link)
    checkpoints = into / "models" / "checkpoints"
    shipped = sorted(p.stem for p in checkpoints.glob("*.json"))
    return shipped[0] if shipped else _untrained_checkpoint(checkpoints)


def _wheelhouse_is_current() -> bool:
    wanted = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    listed = DOCKER / "wheels" / "requirements.txt"
    return listed.is_file() and listed.read_text().splitlines() == wanted


@pytest.fixture(scope="module")
def image(docker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Build the image once for the module; yields its tag and the method it serves."""
    tool("debootstrap")
    started = time.monotonic()
    if not _wheelhouse_is_current():
        _run("nice", "-n", "10", sys.executable, str(DOCKER / "wheelhouse.py"), "cpu")
    _run("nice", "-n", "10", str(DOCKER / "debian-base.sh"), BASE_TAG, env=docker_env)
    context = tmp_path_factory.mktemp("context")
    method = _build_context(context)
    prepared = time.monotonic()
    build = ["docker", "build", "--network", "host", "--build-arg", f"BASE={BASE_TAG}"]
    build += ["-f", str(context / "docker" / "Dockerfile"), "-t", IMAGE_TAG, str(context)]
    _run(*build, env=docker_env | {"DOCKER_BUILDKIT": "0"})  # no buildx here; the legacy builder suffices
    built = time.monotonic()
    size = int(_run("docker", "image", "inspect", "-f", "{{.Size}}", IMAGE_TAG, env=docker_env))
    prepare_s, build_s = prepared - started, built - prepared
    print(f"\nimage: {size / 1e6:.0f} MB; base+wheels+context {prepare_s:.0f} s, build {build_s:.0f} s")
    yield {"tag": IMAGE_TAG, "method": method}
    if "ELASTICSR_TEST_OWN_DOCKERD" not in docker_env:
        subprocess.run(["docker", "image", "rm", "-f", IMAGE_TAG], capture_output=True, env=docker_env)


@pytest.fixture(scope="module")
def served(image: dict, docker_env: dict[str, str]) -> Iterator[str]:
    """Run the image as Kubernetes does (read-only root, writable /tmp); yields its URL once ready."""
    env = docker_env
    subprocess.run(["docker", "rm", "-f", CONTAINER], capture_output=True, env=env)
    run = ["docker", "run", "-d", "--name", CONTAINER, "-p", "127.0.0.1::8000"]
    run += ["--read-only", "--tmpfs", "/tmp"]
    # One torch thread: CI has two cores and other work on them.
    run += ["-e", f"ELASTICSR_METHODS={image['method']}", "-e", "ELASTICSR_TORCH_THREADS=1", image["tag"]]
    _run(*run, env=env)
    try:
        port = _run("docker", "port", CONTAINER, "8000/tcp", env=env).splitlines()[0].rsplit(":", 1)[1]
        base = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        while _status(f"{base}/readyz") != 200:
            if not _state(env)["Running"] or time.monotonic() - started > READY_TIMEOUT_S:
                logs = subprocess.run(["docker", "logs", CONTAINER], capture_output=True, text=True, env=env)
                raise AssertionError(f"never ready:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}")
            time.sleep(1)
        print(f"\nready {time.monotonic() - started:.0f} s after start")
        yield base
    finally:
        subprocess.run(["docker", "rm", "-f", CONTAINER], capture_output=True, env=env)


# ---- helpers ----


def _state(env: dict[str, str]) -> dict:
    return json.loads(_run("docker", "inspect", CONTAINER, env=env))[0]["State"]


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _upscale(base: str, png: bytes, scale: float) -> tuple[int, Message, bytes]:
    req = urllib.request.Request(
        f"{base}/upscale?scale={scale}", data=png, headers={"Content-Type": "image/png"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.radial_gradient("L").resize((width, height)).convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def _inflight(base: str) -> float:
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("elasticsr_inflight_requests "):
                return float(line.split()[1])
    return 0.0


# ---- the tests (in file order; the last one stops the container) ----


def test_image_answers_a_real_upscale(served: str, image: dict) -> None:
    status, headers, body = _upscale(served, _png(24, 16), 2)
    assert status == 200, body[:500]
    assert Image.open(io.BytesIO(body)).size == (48, 32)
    assert headers.get("X-ElasticSR-Method") == image["method"]  # case-insensitive lookup


def test_image_runs_as_non_root_and_reports_healthy(served: str, docker_env: dict[str, str]) -> None:
    # Kubernetes' runAsNonRoot relies on the numeric USER of the image.
    assert _run("docker", "exec", CONTAINER, "id", "-u", env=docker_env).strip() == "10001"
    deadline = time.monotonic() + 60  # the HEALTHCHECK's first probe comes after its 15 s interval
    health = ""
    while health != "healthy" and time.monotonic() < deadline:
        time.sleep(2)
        health = _state(docker_env)["Health"]["Status"]
    assert health == "healthy"


def test_sigterm_lets_the_request_in_flight_finish(served: str, docker_env: dict[str, str]) -> None:
    result: dict = {}
    slow = threading.Thread(target=lambda: result.update(answer=_upscale(served, _png(96, 96), 8)))
    slow.start()
    deadline = time.monotonic() + 30
    while _inflight(served) < 1:
        assert time.monotonic() < deadline, "the request never showed as in flight"
        time.sleep(0.05)
    stopping = time.monotonic()
    _run("docker", "kill", "--signal", "SIGTERM", CONTAINER, env=docker_env)
    slow.join(timeout=120)
    status, _, body = result["answer"]
    assert status == 200, body[:500]
    assert Image.open(io.BytesIO(body)).size == (768, 768)
    _run("docker", "wait", CONTAINER, env=docker_env, timeout=60)
    state = _state(docker_env)
    assert state["ExitCode"] == 0, state
    print(f"\ndrained and exited 0 {time.monotonic() - stopping:.1f} s after SIGTERM")
