"""deploy/prometheus/alerts.yaml: its rules pass promtool and their unit tests,
every alert says what to do and links a runbook that exists, every metric they
read is one the daemon serves, and the Prometheus Operator's copy is the same."""
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from test_daemon import TAGGED_GROUPS, Daemon, fetch, wait_until

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "deploy" / "prometheus"
RUNBOOKS = "https://github.com/ramwatchd/ramwatchd#"


def groups():
    return yaml.safe_load((RULES / "alerts.yaml").read_text())["groups"]


def alerts():
    return [rule for group in groups() for rule in group["rules"] if "alert" in rule]


def test_rules_pass_promtool_and_their_unit_tests():
    for command in (["check", "rules", "alerts.yaml"], ["test", "rules", "alerts_test.yaml"]):
        done = subprocess.run(["promtool", *command], cwd=RULES, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_seen_firing_in_a_unit_test():
    tests = yaml.safe_load((RULES / "alerts_test.yaml").read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test.get("alert_rule_test", ())
             if case.get("exp_alerts")}
    assert {a["alert"] for a in alerts()} <= fired
    assert {a["alert"] for a in alerts()} >= {"RamwatchdDown", "RamwatchdEventsLost", "RamwatchdKernelMapFull",
                                              "RamwatchdProcessesUnreadable", "RamwatchdOOMKill"}


def github_anchors(markdown):
    """The anchors GitHub gives a document's headings."""
    anchors, seen = set(), {}
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not re.match(r"#{1,6} ", line):
            continue
        slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: a["alert"])
def test_every_alert_says_what_happened_and_links_its_runbook(alert):
    notes = alert["annotations"]
    assert notes.get("summary") and notes.get("description"), alert["alert"]
    assert notes.get("runbook_url", "").startswith(RUNBOOKS), alert["alert"]
    anchor = notes["runbook_url"].removeprefix(RUNBOOKS)
    assert anchor in github_anchors((REPO / "README.md").read_text()), f"README.md has no section #{anchor}"
    assert alert["labels"]["severity"] in {"info", "warning", "critical"}


def test_the_prometheus_operator_rule_has_the_same_groups():
    manifest = yaml.safe_load((REPO / "deploy" / "kubernetes" / "prometheusrule.yaml").read_text())
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1" and manifest["kind"] == "PrometheusRule"
    assert manifest["metadata"]["namespace"] == "ramwatchd"
    assert manifest["spec"]["groups"] == groups(), (
        "deploy/kubernetes/prometheusrule.yaml differs from deploy/prometheus/alerts.yaml: "
        "its spec.groups must be alerts.yaml's groups")


def test_the_rules_read_only_metrics_the_daemon_serves(tmp_path):
    read = {name for group in groups() for rule in group["rules"]
            for name in re.findall(r"\b(?:ramwatchd|process)_[a-z_]+\b", rule["expr"])}
    d = Daemon(tmp_path, TAGGED_GROUPS)
    try:
        d.wait_ready()
        text = wait_until("the node's figures", lambda: (
            lambda t: "ramwatchd_node_memory_available_bytes" in t and t)(fetch(d.url)[1]))
    finally:
        d.stop()
    served = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    assert read and read <= served, f"not served: {sorted(read - served)}"
