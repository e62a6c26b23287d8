"""Deployment manifests agree with each other and with the detector: Kubernetes, compose, Dockerfile.

What runs is tested by tests/image (`make test-image`): the image as shipped and as the
Deployment runs it. These checks are the cheap half: the files parse, name the same topics,
brokers, ports and image tag, and keep the choices deploy/README.md explains.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from detector.config import Settings, load_settings
from detector.metrics import Health, Metrics, serve

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
# API groups every Kubernetes cluster serves: `kubectl apply -f deploy/k8s/` needs no CRD.
CORE_API_VERSIONS = {"v1", "apps/v1", "batch/v1", "policy/v1", "autoscaling/v2", "networking.k8s.io/v1"}


def version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def manifests(directory: Path) -> dict[str, dict]:
    return {p.stem: yaml.safe_load(p.read_text()) for p in sorted(directory.glob("*.yaml"))}


def configmap_settings(tmp_path: Path) -> Settings:
    text = manifests(K8S)["configmap"]["data"]["config.toml"]
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_settings(path)


def detector_container() -> dict:
    pod = manifests(K8S)["deployment"]["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "detector")


def created_topics(script: str) -> dict[str, str]:
    """``{topic: its kafka-topics.sh line}`` for each topic a shell script creates."""
    return {
        m.group(1): m.group(0)
        for m in re.finditer(r"--topic ([\w.-]+)(.*)", script)
        if "--describe" not in m.group(0) and "--list" not in m.group(0)
    }


def service_topics(settings: Settings) -> set[str]:
    kafka = settings.kafka
    return {*kafka.input_topics, kafka.alert_topic, kafka.dead_letter_topic, kafka.checkpoint_topic}


# ---------------------------------------------------------------- Kubernetes
def test_core_manifests_need_no_operator() -> None:
    """deploy/k8s/ applies on a cluster without the Prometheus Operator; its files are apart."""
    core = manifests(K8S)
    assert {"deployment", "configmap", "secret", "service"} <= core.keys()
    for name, doc in [*core.items(), *manifests(K8S / "topics").items()]:
        assert doc["apiVersion"] in CORE_API_VERSIONS, f"{name}: {doc['apiVersion']} needs a CRD"
        assert doc["kind"] and doc["metadata"]["name"], name
        assert "namespace" not in doc["metadata"], f"{name} must be namespace-agnostic"
    operator = manifests(K8S / "operator")
    assert {doc["kind"] for doc in operator.values()} == {"ServiceMonitor", "PrometheusRule"}
    assert {doc["apiVersion"] for doc in operator.values()} == {"monitoring.coreos.com/v1"}


def test_deployment_wiring() -> None:
    docs = manifests(K8S)
    spec = docs["deployment"]["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == 60
    container = detector_container()
    assert container["args"] == ["run", "--config", "/etc/detector/config.toml"]
    assert container["resources"]["requests"] == {"cpu": "1", "memory": "1Gi"}
    assert container["resources"]["limits"]
    env = {e["name"]: e for e in container["env"]}
    secret_name = docs["secret"]["metadata"]["name"]
    for var, key in (("DETECTOR_KAFKA__SASL_USERNAME", "username"), ("DETECTOR_KAFKA__SASL_PASSWORD", "password")):
        ref = env[var]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret_name and key in docs["secret"]["stringData"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/etc/detector"] == "config"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["config"]["configMap"]["name"] == docs["configmap"]["metadata"]["name"]
    assert mounts["/models"] in volumes

    labels = docs["deployment"]["spec"]["template"]["metadata"]["labels"]
    service = docs["service"]["spec"]
    assert all(labels.get(k) == v for k, v in service["selector"].items())
    assert service["ports"] == [{"name": "metrics", "port": 9100, "targetPort": "metrics", "protocol": "TCP"}]
    monitor = manifests(K8S / "operator")["servicemonitor"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_probes_ride_out_a_broker_outage(tmp_path: Path) -> None:
    """Readiness reports an outage; liveness restarts a pod only after 10 minutes without progress.

    /healthz fails after ``stall_after_s`` without progress, which a broker outage can cause
    while the loop holds unpublished alerts; restarting then would restart every pod at once.
    """
    container = detector_container()
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    assert readiness["httpGet"] == {"path": "/readyz", "port": 9100}
    assert liveness["httpGet"] == {"path": "/healthz", "port": 9100}
    stall_after_s = configmap_settings(tmp_path).metrics.stall_after_s
    assert stall_after_s + liveness["failureThreshold"] * liveness["periodSeconds"] >= 600
    assert liveness["timeoutSeconds"] < liveness["periodSeconds"]


def test_configmap_config_loads_with_detector_settings(tmp_path: Path) -> None:
    config = manifests(K8S)["configmap"]["data"]["config.toml"]
    assert "config.example.toml" in config
    settings = configmap_settings(tmp_path)
    assert settings.kafka.input_topics == ["sensors"]
    assert settings.metrics.port == 9100 == detector_container()["ports"][0]["containerPort"]


def test_topics_job_creates_what_the_configmap_names(tmp_path: Path) -> None:
    job = manifests(K8S / "topics")["create-topics"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    settings = configmap_settings(tmp_path)
    assert env["BOOTSTRAP_SERVERS"] == settings.kafka.bootstrap_servers
    script = container["args"][0]
    assert container["command"][0] == "/bin/bash"
    syntax = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True, timeout=30)
    assert syntax.returncode == 0, syntax.stderr
    topics = created_topics(script)
    assert topics.keys() == service_topics(settings)
    assert "--if-not-exists" in script
    assert "cleanup.policy=compact" in topics[settings.kafka.checkpoint_topic]
    replicas = manifests(K8S)["deployment"]["spec"]["replicas"]
    partitions = int(env["PARTITIONS"])
    assert partitions >= replicas and partitions % replicas == 0, "each instance gets the same share"


def all_images() -> dict[str, str]:
    """``{where: image}`` for every image the manifests and the compose file run."""
    images: dict[str, str] = {}
    for directory in (K8S, K8S / "topics"):
        for name, doc in manifests(directory).items():
            pod = doc.get("spec", {}).get("template", {}).get("spec", {})
            for c in pod.get("initContainers", []) + pod.get("containers", []):
                images[f"{name}/{c['name']}"] = c["image"]
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    images.update({f"compose/{n}": s["image"] for n, s in compose["services"].items() if "image" in s})
    return images


def test_images_are_tagged_by_version() -> None:
    images = all_images()
    assert len(images) >= 7
    for where, image in images.items():
        tag = image.rpartition(":")[2] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag and tag != "latest", f"{where}: {image} needs a version tag"
    assert images["deployment/detector"] == images["compose/detector"] == f"detector:{version()}"


# ---------------------------------------------------------------- docker compose
def test_compose_services() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "create-topics", "detector", "prometheus", "grafana"} <= services.keys()
    assert services["kafka"]["image"].startswith("apache/kafka")
    detector = services["detector"]
    assert (DEPLOY / detector["build"]["context"] / detector["build"]["dockerfile"]).is_file()
    assert detector["environment"]["DETECTOR_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert detector["environment"]["DETECTOR_MODEL__PATH"] == "/models/current"
    assert "9100:9100" in detector["ports"]
    topics = created_topics(" ".join(services["create-topics"]["command"]))
    assert topics.keys() == service_topics(load_settings(ROOT / "config.example.toml"))
    assert re.search(r"--partitions 12\b", topics["sensors"])
    assert "cleanup.policy=compact" in topics["detector-checkpoints"]
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), source


# ---------------------------------------------------------------- Dockerfile
def test_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.M)
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cpu$", text, re.M)
    assert re.search(r'torch==2\.13\.0 --index-url "\$TORCH_INDEX_URL"', text)
    assert re.search(r"pip install --no-cache-dir \.", text)
    assert re.search(r"^USER (?!root|0)\S+", text, re.M)
    assert 'ENTRYPOINT ["detector"]' in text
    assert 'CMD ["run", "--config", "/etc/detector/config.toml"]' in text
    assert re.search(r"^EXPOSE 9100$", text, re.M)
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "deploy"} <= set(ignore)


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint not found: it is in the dev extras (pip install -e '.[dev]')")
    result = subprocess.run(
        [hadolint, "--no-color", "Dockerfile"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_healthcheck_command_works() -> None:
    """Run the HEALTHCHECK's python one-liner against a live server (port substituted)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    argv = json.loads(re.search(r"^HEALTHCHECK .*?CMD (\[.*\])\s*$", text, re.M).group(1))
    assert argv[:2] == ["python", "-c"] and "http://127.0.0.1:9100/healthz" in argv[2]
    now = [0.0]  # the health clock, moved by hand: no race with a slow interpreter start
    health = Health(stall_after_s=60.0, clock=lambda: now[0])
    server = serve(Metrics(process_metrics=False), health, host="127.0.0.1", port=0)
    try:
        code = argv[2].replace(":9100/", f":{server.port}/")
        health.beat()
        assert subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30).returncode == 0
        now[0] += 61.0
        assert subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30).returncode != 0
    finally:
        server.close()
