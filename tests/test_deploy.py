"""Monitoring files: Prometheus config and rules (promtool), dashboard, their metric names.

The manifests, compose file and Dockerfile are checked in tests/test_deploy_manifests.py.

promtool comes from the Debian package `prometheus` (`make setup-tools`, a
dependency of `make test`). YAML structure checks need PyYAML and are skipped
without it; the promtool checks and the metric-name checks never need it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from detector.metrics import Health, Metrics, serve

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PROM_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboard.json"
K8S = DEPLOY / "k8s"

EXPECTED_ALERTS = {
    "DetectorConsumerLagGrowing",
    "DetectorNoMessagesProcessed",
    "DetectorDeadLetterRatioHigh",
    "DetectorAlertStorm",
    "DetectorCheckpointTooOld",
    "DetectorTargetDown",
    "DetectorNotHealthy",
    "DetectorReloadRefused",
    "DetectorRolloutStuck",
}
METRIC_NAME = re.compile(r"\b(detector_[a-z_]+|process_[a-z_]+|up)\b")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Grafana variables, replaced by values that make the expressions plain PromQL.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$instance": ".*"}


# ---------------------------------------------------------------- helpers
def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool not found: run `make setup-tools` (Debian package `prometheus`)")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"{result.args}:\n{result.stdout}\n{result.stderr}"


def rule_exprs(text: str) -> list[str]:
    """The `expr:` values of a Prometheus rules file (plain or block scalars), without PyYAML."""
    lines = text.splitlines()
    exprs: list[str] = []
    i = 0
    while i < len(lines):
        match = re.match(r"^(\s*)(?:- )?expr:\s*(.*)$", lines[i])
        i += 1
        if not match:
            continue
        indent, rest = len(match.group(1)), match.group(2).strip()
        if rest[:1] not in ("|", ">"):
            exprs.append(rest.strip("'\""))
            continue
        block: list[str] = []
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
            block.append(lines[i].strip())
            i += 1
        exprs.append(" ".join(part for part in block if part))
    return exprs


def dashboard_exprs(dashboard: dict) -> list[str]:
    """Every PromQL expression of a dashboard: panel targets (rows included) and variables."""
    exprs: list[str] = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        if var.get("type") == "query" and query:
            exprs.append(query)
    return exprs


def metric_names(expr: str) -> set[str]:
    """detector_*, process_* and `up` identifiers of an expression (string literals removed)."""
    return set(METRIC_NAME.findall(re.sub(r'"[^"]*"', '""', expr)))


def exposed_families(text: str) -> tuple[set[str], set[str]]:
    """(all family and sample names, histogram/summary family names) of exposition text."""
    names: set[str] = set()
    histograms: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind in ("histogram", "summary"):
                histograms.add(name)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names, histograms


def unknown_names(exprs: list[str], exposed: set[str], histograms: set[str]) -> set[str]:
    """Identifiers used in `exprs` that no metric of the exposition provides (`up` is Prometheus's)."""
    unknown: set[str] = set()
    for expr in exprs:
        for name in metric_names(expr) - {"up"}:
            base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), None)
            if name in exposed or (base is not None and base in histograms):
                continue
            unknown.add(name)
    return unknown


def exercised_metrics() -> Metrics:
    m = Metrics()
    m.messages("scored", n=3)
    m.dead_letter("schema")
    m.alert("open")
    m.observe_score(1.0, probability=0.5)
    m.observe_batch(3, 0.002)
    m.observe_end_to_end(0.05)
    m.set_lag("sensors", 0, 7)
    m.checkpoint_succeeded(0.01)
    m.set_model_info("v1", "lstm", 4)
    m.set_build_info("0.1.0")
    m.progress()
    return m


@pytest.fixture(scope="module")
def exposition() -> Iterator[tuple[set[str], set[str]]]:
    """Metric names from the real /metrics endpoint of a `Metrics` instance."""
    server = serve(exercised_metrics(), Health(), host="127.0.0.1", port=0)
    try:
        text = requests.get(server.url + "/metrics", timeout=5).text
    finally:
        server.close()
    yield exposed_families(text)


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def yaml_module():
    return pytest.importorskip("yaml", reason="PyYAML is not installed (should be in the dev extras)")


# ---------------------------------------------------------------- promtool
def test_promtool_check_config() -> None:
    assert_ok(promtool("check", "config", str(PROM_CONFIG)))


def test_promtool_check_rules() -> None:
    assert_ok(promtool("check", "rules", str(ALERTS)))


def test_promtool_rule_unit_tests() -> None:
    """Each alert fires on a synthetic scenario and stays quiet on a healthy one."""
    assert_ok(promtool("test", "rules", str(ALERTS_TEST)))


def test_every_alert_is_defined_and_unit_tested() -> None:
    defined = set(re.findall(r"^\s*- alert:\s*(\w+)", ALERTS.read_text(), re.M))
    assert defined == EXPECTED_ALERTS
    tested = set(re.findall(r"alertname:\s*(\w+)", ALERTS_TEST.read_text()))
    assert tested == EXPECTED_ALERTS


def test_every_alert_has_severity_and_annotations() -> None:
    text = ALERTS.read_text()
    for block in re.split(r"^\s*- alert:", text, flags=re.M)[1:]:
        name = block.split()[0]
        for key in ("severity:", "summary:", "description:", "runbook:"):
            assert key in block, f"{name} lacks {key}"
        anchor = re.search(r"runbook:\s*\"?docs/operations.md#([a-z]+)", block)
        assert anchor and anchor.group(1) == name.lower(), name


def test_runbook_sections_exist_in_operations_docs() -> None:
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in (DEPLOY.parent / "docs" / "operations.md").read_text().splitlines()
        if line.startswith("#")
    }
    missing = {name.lower() for name in EXPECTED_ALERTS} - headings
    assert not missing, missing


def test_dashboard_expressions_are_valid_promql(tmp_path: Path, dashboard: dict) -> None:
    """Every dashboard query (Grafana variables substituted) parses, checked by promtool."""
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(dashboard_exprs(dashboard)):
        if expr.startswith("label_values("):
            continue  # Grafana's own function, not PromQL
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"unsubstituted Grafana variable in {expr!r}"
        lines += [f"      - record: dashboard:query_{i}", f"        expr: {json.dumps(expr)}"]
    rules = tmp_path / "dashboard_rules.yml"
    rules.write_text("\n".join(lines) + "\n")
    assert_ok(promtool("check", "rules", str(rules)))


# ---------------------------------------------------------------- metric names
def test_alert_metrics_exist(exposition: tuple[set[str], set[str]]) -> None:
    exprs = rule_exprs(ALERTS.read_text())
    assert len(exprs) == len(EXPECTED_ALERTS)
    assert not unknown_names(exprs, *exposition)
    used = set().union(*(metric_names(e) for e in exprs))
    assert {"detector_checkpoint_age_seconds", "up"} <= used


def test_dashboard_metrics_exist(dashboard: dict, exposition: tuple[set[str], set[str]]) -> None:
    exprs = dashboard_exprs(dashboard)
    assert len(exprs) >= 20
    assert not unknown_names(exprs, *exposition)
    used = set().union(*(metric_names(e) for e in exprs))
    assert {"detector_anomaly_score_bucket", "process_resident_memory_bytes", "detector_consumer_lag_messages"} <= used


def test_name_check_catches_unknown_metrics(exposition: tuple[set[str], set[str]]) -> None:
    exprs = [
        'rate(detector_messages_total{outcome="scored"}[5m])',  # exists
        "histogram_quantile(0.9, rate(detector_step_duration_seconds_bucket[5m]))",  # exists
        "rate(detector_messages_scored_total[5m])",  # does not
        "detector_entities_tracked_bucket",  # not a histogram
        "process_imaginary_bytes",  # does not
    ]
    assert unknown_names(exprs, *exposition) == {
        "detector_messages_scored_total",
        "detector_entities_tracked_bucket",
        "process_imaginary_bytes",
    }


def test_up_refers_to_the_scrape_job() -> None:
    job = re.search(r"job_name:\s*\"?([\w-]+)", PROM_CONFIG.read_text()).group(1)
    ups = re.findall(r"\bup\{([^}]*)\}", ALERTS.read_text())
    assert ups and all(f'job="{job}"' in labels for labels in ups)
    assert "detector:9100" in PROM_CONFIG.read_text()
    assert re.search(r"^rule_files:\s*\n\s*-\s*alerts\.yml", PROM_CONFIG.read_text(), re.M)


def test_rule_expr_extraction_matches_yaml() -> None:
    yaml = yaml_module()
    doc = yaml.safe_load(ALERTS.read_text())
    parsed = [" ".join(r["expr"].split()) for g in doc["groups"] for r in g["rules"]]
    assert [" ".join(e.split()) for e in rule_exprs(ALERTS.read_text())] == parsed


# ---------------------------------------------------------------- Grafana
def test_dashboard_structure(dashboard: dict) -> None:
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] and dashboard["title"]
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys()
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "prometheus"
    kinds = {p["type"] for p in panels}
    assert {"timeseries", "heatmap", "row"} <= kinds
    titles = " ".join(p["title"].lower() for p in panels)
    for word in (
        "throughput",
        "alerts",
        "score",
        "step latency",
        "end-to-end",
        "lag",
        "entities",
        "evictions",
        "checkpoint age",
        "checkpoint duration",
        "commit failures",
        "memory",
    ):
        assert word in titles, word


def test_dashboard_latency_panels_show_p50_p95_p99(dashboard: dict) -> None:
    for title in ("Model step latency", "End-to-end latency"):
        panel = next(p for p in dashboard["panels"] if p["title"] == title)
        quantiles = sorted(re.search(r"histogram_quantile\(([\d.]+)", t["expr"]).group(1) for t in panel["targets"])
        assert quantiles == ["0.5", "0.95", "0.99"]


def test_grafana_provisioning_matches_dashboard() -> None:
    datasource = (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    assert re.search(r"^\s*uid:\s*prometheus\s*$", datasource, re.M)
    assert "http://prometheus:9090" in datasource
    provider = (DEPLOY / "grafana/provisioning/dashboards/dashboards.yml").read_text()
    path = re.search(r"path:\s*(\S+)", provider).group(1)
    compose = (DEPLOY / "docker-compose.yml").read_text()
    assert f"./grafana/dashboard.json:{path}/" in compose


# ---------------------------------------------------------------- YAML structure
def all_yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))


def test_all_yaml_files_parse() -> None:
    yaml = yaml_module()
    files = all_yaml_files()
    assert len(files) >= 12
    for path in files:
        docs = list(yaml.safe_load_all(path.read_text()))
        assert docs and all(isinstance(d, dict) for d in docs), path


def test_prometheusrule_mirrors_alerts_yml() -> None:
    yaml = yaml_module()
    rule = yaml.safe_load((K8S / "operator" / "prometheusrule.yaml").read_text())
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())
