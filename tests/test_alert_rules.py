"""The alert rules in deploy/prometheus/: ``promtool check rules`` passes, every alert has
``promtool test rules`` cases that fire and that stay quiet (and they fail when the
alert is broken), the PrometheusRule holds the same rules, and the real Prometheus of
the test stack loads and evaluates them without error."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.prometheus_fixture import RULES, PrometheusStack, binary

PROMETHEUS_DIR = RULES.parent
UNIT_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yaml"))


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("promtool"), *args], capture_output=True, text=True,
                          timeout=120, check=False, cwd=cwd)


def alerts(rules: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}


def load_rules() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return loaded


def test_promtool_check_rules() -> None:
    out = promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alerts(load_rules()))} rules found" in out.stdout


def test_promtool_unit_tests_pass() -> None:
    assert UNIT_TESTS, "no promtool unit tests in deploy/prometheus/tests"
    out = promtool("test", "rules", *map(str, UNIT_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("SUCCESS") == len(UNIT_TESTS), out.stdout


def test_every_alert_has_firing_and_quiet_cases() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in UNIT_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = set(alerts(load_rules()))
    assert names - firing == set(), "alerts without a firing test case"
    assert names - quiet == set(), "alerts without a test case where they stay quiet"
    assert (firing | quiet) - names == set(), "test cases for alerts that do not exist"


@pytest.mark.parametrize("alert", sorted(alerts(load_rules())))
def test_unit_tests_catch_a_broken_alert(alert: str, tmp_path: Path) -> None:
    """With the alert's expression replaced by one that never fires, its unit tests
    fail: they really test it."""
    rules = load_rules()
    alerts(rules)[alert]["expr"] = "vector(1) == 0"
    (tmp_path / "scanward-rules.yaml").write_text(yaml.safe_dump(rules))
    tests_dir = tmp_path / "tests"
    shutil.copytree(PROMETHEUS_DIR / "tests", tests_dir)
    out = promtool("test", "rules", *(p.name for p in UNIT_TESTS), cwd=tests_dir)
    assert out.returncode != 0
    assert f"alertname: {alert}," in out.stdout + out.stderr


def test_prometheusrule_holds_the_same_rules() -> None:
    check = subprocess.run([sys.executable, str(PROMETHEUS_DIR / "make_prometheusrule.py"),
                            "--check"], capture_output=True, text=True, timeout=60,
                           check=False)
    assert check.returncode == 0, check.stderr
    (rule,) = yaml.safe_load_all((PROMETHEUS_DIR / "prometheusrule.yaml").read_text())
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == load_rules()["groups"]


def test_real_prometheus_loads_and_evaluates_every_rule(
        prometheus_stack: PrometheusStack) -> None:
    expected = set(alerts(load_rules()))
    deadline = time.monotonic() + 30
    while True:
        rules = {r["name"]: r for g in prometheus_stack.rule_groups() for r in g["rules"]}
        evaluated = {n for n, r in rules.items() if r.get("lastEvaluation", "").
                     startswith("2") and r.get("health") != "unknown"}
        if expected <= evaluated or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert set(rules) == expected
    assert {n: (r["health"], r.get("lastError", "")) for n, r in rules.items()} == {
        n: ("ok", "") for n in expected}


def test_scrape_config_example(tmp_path: Path) -> None:
    """deploy/prometheus/scrape-config.yaml: the Pushgateway job honours pushed labels,
    and promtool accepts it. Debian's Prometheus is built without Kubernetes service
    discovery, so the pod job is checked here with a static target in its place."""
    config = yaml.safe_load((PROMETHEUS_DIR / "scrape-config.yaml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["scanward-pushgateway"]["honor_labels"] is True
    pods = jobs["scanward-worker"]
    assert [sd["role"] for sd in pods.pop("kubernetes_sd_configs")] == ["pod"]
    assert "health|metrics" in [r.get("regex") for r in pods["relabel_configs"]]
    pods["static_configs"] = [{"targets": ["127.0.0.1:8080"]}]
    config["rule_files"] = [str(RULES)]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    out = promtool("check", "config", str(path))
    assert out.returncode == 0, out.stdout + out.stderr


def test_podmonitor_scrapes_both_worker_ports() -> None:
    (monitor,) = yaml.safe_load_all((PROMETHEUS_DIR / "podmonitor.yaml").read_text())
    (worker,) = [d for d in yaml.safe_load_all(
        (PROMETHEUS_DIR.parent / "worker.yaml").read_text()) if d and d["kind"] == "Deployment"]
    pod = worker["spec"]["template"]
    ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} == {"health",
                                                                           "metrics"} <= ports
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
