"""The shipped image runs: as the Dockerfile ships it, and as the Kubernetes Deployment runs it.

Each run uses the image's ENTRYPOINT with the shipped arguments and configuration, a model fitted
on the host, and the bundled broker. The container shares the host's network, so two settings
come from the environment: the broker's address and a free metrics port. Each run must reach
/readyz 200, then stop on SIGTERM with exit 0.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from types import ModuleType

import pytest
import requests
import yaml

from detector.broker import create_topics, free_port
from detector.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
READY_WITHIN_S = 180.0
STOP_GRACE_S = 60

pytestmark = [pytest.mark.image, pytest.mark.kafka, pytest.mark.slow]


def _load_build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("image_build", ROOT / "deploy" / "image" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build_script()


def readable_copy(source: Path, target: Path) -> Path:
    """Copy ``source`` to ``target`` readable by the image's non-root user (pytest's dirs are 0700)."""
    shutil.copytree(source, target)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


def create_service_topics(bootstrap: str, settings: Settings) -> None:
    """The topics a deployment creates before it starts the detector (deploy/README.md)."""
    kafka = settings.kafka
    create_topics(bootstrap, [*kafka.input_topics, kafka.alert_topic, kafka.dead_letter_topic], partitions=3)
    create_topics(bootstrap, [kafka.checkpoint_topic], partitions=3, config={"cleanup.policy": "compact"})


class Container:
    """One detached container, removed on exit."""

    def __init__(self, image: str, args: list[str], flags: list[str]) -> None:
        self.name = f"detector-test-{uuid.uuid4().hex[:8]}"
        started = build.podman(
            "run",
            "--detach",
            "--name",
            self.name,
            *build.CONTAINER_FLAGS,
            *flags,
            image,
            *args,
            capture=True,
            check=False,
        )
        if started.returncode != 0:
            self.remove()
            pytest.fail(f"podman run failed ({started.returncode}): {started.stderr}")

    def state(self) -> tuple[str, int]:
        out = build.podman(
            "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", self.name, capture=True
        ).stdout.split()
        return out[0], int(out[1])

    def logs(self) -> str:
        result = build.podman("logs", self.name, capture=True, check=False)
        return result.stdout + result.stderr

    def wait_ready(self, url: str) -> None:
        deadline = time.monotonic() + READY_WITHIN_S
        last = "no answer"
        while time.monotonic() < deadline:
            status, code = self.state()
            if status != "running":
                pytest.fail(f"container {status} with exit {code} before it was ready:\n{self.logs()}")
            try:
                answer = requests.get(url, timeout=2)
                if answer.status_code == 200:
                    return
                last = f"{answer.status_code} {answer.text.strip()}"
            except requests.ConnectionError as error:
                last = str(error)
            time.sleep(1)
        pytest.fail(f"/readyz not 200 within {READY_WITHIN_S:.0f} s (last: {last}):\n{self.logs()}")

    def stop(self) -> int:
        """Send SIGTERM, as Kubernetes and `podman stop` do, and return the exit code."""
        build.podman("kill", "--signal", "TERM", self.name, capture=True)
        try:
            subprocess.run([*build.PODMAN, "wait", self.name], check=True, capture_output=True, timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {STOP_GRACE_S} s after SIGTERM:\n{self.logs()}")
        return self.state()[1]

    def remove(self) -> None:
        build.podman("rm", "--force", self.name, capture=True, check=False)


@pytest.fixture(scope="module")
def image() -> str:
    name = build.image_name()
    if not build.image_exists(name):
        pytest.fail(f"image {name} not found: run `make image`")
    return name


@pytest.fixture(scope="module")
def models(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory holding the session's model as ``current/``, as the image expects."""
    root = tmp_path_factory.mktemp("models")
    root.chmod(0o755)
    readable_copy(model_dir, root / "current")
    return root


def run_and_stop(image: str, args: list[str], flags: list[str]) -> tuple[int, str]:
    """Run until /readyz answers 200, check /metrics, stop with SIGTERM: (exit code, logs)."""
    port = free_port()
    # numba reports its cache: the kernels the image compiled at build time must be loaded, not compiled
    flags = [*flags, "--env", f"DETECTOR_METRICS__PORT={port}", "--env", "NUMBA_DEBUG_CACHE=1"]
    container = Container(image, args, flags)
    try:
        container.wait_ready(f"http://127.0.0.1:{port}/readyz")
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert "detector_model_info{" in metrics
        return container.stop(), container.logs()
    finally:
        container.remove()


def assert_kernels_precompiled(logs: str) -> None:
    """The container loaded its compiled kernels from the image's cache and compiled none."""
    assert "[cache] data loaded from" in logs, logs
    compiled = [line for line in logs.splitlines() if "[cache] data saved to" in line]
    assert not compiled, "the container compiled kernels the image should hold:\n" + "\n".join(compiled)


def test_image_runs_as_shipped(image: str, models: Path, kafka_bootstrap: str) -> None:
    """ENTRYPOINT and CMD of the Dockerfile, its default configuration, a model under /models."""
    create_service_topics(kafka_bootstrap, load_settings(ROOT / "config.example.toml"))
    flags = ["--volume", f"{models}:/models:ro", "--env", f"DETECTOR_KAFKA__BOOTSTRAP_SERVERS={kafka_bootstrap}"]
    code, logs = run_and_stop(image, [], flags)
    assert code == 0, logs
    assert "Traceback" not in logs, logs
    assert_kernels_precompiled(logs)


def deployment_container() -> tuple[dict, dict]:
    """The detector container of deploy/k8s/deployment.yaml and its pod spec."""
    pod = yaml.safe_load((K8S / "deployment.yaml").read_text())["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "detector"), pod


def kubernetes_flags(container: dict, pod: dict, models: Path, config_dir: Path) -> list[str]:
    """podman flags that give the container what the Deployment gives it.

    The environment (Secret references resolved from secret.yaml), the ConfigMap's files, the
    models volume as the fetch-model initContainer leaves it, other emptyDirs as tmpfs, and the
    pod's and container's security contexts.
    """
    secret = yaml.safe_load((K8S / "secret.yaml").read_text())
    configmap = yaml.safe_load((K8S / "configmap.yaml").read_text())
    flags: list[str] = []
    for var in container["env"]:
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        value = secret["stringData"][ref["key"]] if ref else var["value"]
        flags += ["--env", f"{var['name']}={value}"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            assert volume["configMap"]["name"] == configmap["metadata"]["name"]
            for name, text in configmap["data"].items():
                (config_dir / name).write_text(text)
                (config_dir / name).chmod(0o644)
            flags += ["--volume", f"{config_dir}:{mount['mountPath']}:ro"]
        elif mount["mountPath"] == "/models":
            flags += ["--volume", f"{models}:/models:ro"]
        else:
            assert "emptyDir" in volume, mount
            flags += ["--tmpfs", mount["mountPath"]]
    security = container["securityContext"]
    if security.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    if security.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    flags += [f"--cap-drop={cap.lower()}" for cap in security.get("capabilities", {}).get("drop", [])]
    flags += ["--user", f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"]
    return flags


def test_image_runs_as_the_kubernetes_deployment(
    image: str, models: Path, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The Deployment's image, args, environment, ConfigMap, volumes and security context."""
    container, pod = deployment_container()
    assert container["image"] == image, "the Deployment runs the image `make image` builds"
    config_dir = tmp_path / "config"
    config_dir.mkdir(mode=0o755)
    flags = kubernetes_flags(container, pod, models, config_dir)
    create_service_topics(kafka_bootstrap, load_settings(config_dir / "config.toml"))
    flags += ["--env", f"DETECTOR_KAFKA__BOOTSTRAP_SERVERS={kafka_bootstrap}"]
    code, logs = run_and_stop(container["image"], container["args"], flags)
    assert code == 0, logs
    assert "Traceback" not in logs, logs
    assert_kernels_precompiled(logs)
