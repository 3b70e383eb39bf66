"""deploy/: the Grafana dashboards, the alert rules and the Kubernetes manifests.

Every panel's query runs against a real Prometheus that scrapes a real daemon
watching workloads of known kinds, and must return data."""
import json
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from conftest import WORKLOAD
from ramwatchd.drivers.daemon import config as configuration
from test_daemon import TAGGED_GROUPS, Daemon, Prometheus, free_port, wait_until

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana").glob("*.json"))
GRAFANA_UNITS = {"bytes", "percentunit", "ops", "short", "s", "Bps"}
VARIABLES = {"datasource", "job", "instance", "group", "class"}


def panels():
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            yield path.stem, panel


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboards_are_grafana_models(path):
    board = json.loads(path.read_text())
    assert board["schemaVersion"] >= 36 and board["uid"] and board["title"]
    names = {v["name"]: v for v in board["templating"]["list"]}
    assert VARIABLES <= names.keys()
    assert names["datasource"]["type"] == "datasource" and names["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in board["panels"]:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["fieldConfig"]["defaults"]["unit"] in GRAFANA_UNITS, p["title"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24 and g["w"] > 0 and g["h"] > 0, p["title"]
        assert p["targets"] and all(t["expr"] for t in p["targets"]), p["title"]
        assert p["description"], p["title"]
    assert len({json.loads(d.read_text())["uid"] for d in DASHBOARDS}) == len(DASHBOARDS)


class VllmStandIn:
    """A vLLM-style request counter, so the per-request panel has its divisor."""

    def __init__(self):
        started = time.monotonic()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                served = int((time.monotonic() - started) * 10)
                body = (f"# TYPE vllm:request_success_total counter\n"
                        f"vllm:request_success_total {served}\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass
        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.target = f"127.0.0.1:{self.server.server_port}"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, driver_dir):
    """A daemon watching every kind of memory the panels show, and a Prometheus
    scraping it and a vLLM-style counter every second."""
    tmp = tmp_path_factory.mktemp("fleet")
    env = dict(os.environ, LD_LIBRARY_PATH=str(driver_dir))
    shm, orphan = f"ramwatchd-fleet-{os.getpid()}", f"/dev/shm/ramwatchd-fleet-orphan-{os.getpid()}"
    with open(orphan, "wb") as f:
        f.write(b"\1" * (8 << 20))
    daemon = Daemon(tmp, TAGGED_GROUPS, env=env)
    daemon.wait_ready()
    procs = [subprocess.Popen(WORKLOAD + steps, stdout=subprocess.DEVNULL, env=env) for steps in (
        ["tag:engine", "anon:64M", "malloc:32M", f"weights:{tmp}/model.safetensors:64M:0.5",
         f"shm:{shm}:32M", "pin:libcuda.so.1:64M", "sleep:300"],
        ["tag:peer", "sleep:1", f"attach:{shm}", "churn:16M:300"])]
    vllm = VllmStandIn()
    prom = Prometheus(tmp, f"127.0.0.1:{daemon.port}", vllm=vllm.target)
    try:
        wait_until("every kind of data", lambda: all(prom.query(q) for q in (
            'ramwatchd_cuda_pinned_mapped_bytes{group="test-engine"}',
            'ramwatchd_page_cache_bytes', 'ramwatchd_page_faults_total{group="test-peer"}',
            f'ramwatchd_shm_object_processes{{name="{shm}"}} == 2')), timeout=90)
        time.sleep(5)   # a few more scrapes, for rate() and deriv()
        yield prom
    finally:
        for p in procs:
            p.kill()
            p.wait()
        daemon.stop()
        prom.proc.terminate()
        prom.proc.wait()
        vllm.server.shutdown()
        for path in (f"/dev/shm/{shm}", orphan):
            if os.path.exists(path):
                os.unlink(path)


def as_grafana_sends(expr):
    """Variables at 'All', and $__rate_interval as Grafana computes it for a 15 s scrape."""
    for name in ("job", "instance", "group", "class"):
        expr = expr.replace(f"${name}", ".*")
    return expr.replace("$__rate_interval", "1m")


@pytest.mark.parametrize("board, panel", list(panels()), ids=lambda x: x if isinstance(x, str) else x["title"])
def test_every_panel_query_returns_data(fleet, board, panel):
    for target in panel["targets"]:
        result = fleet.query(as_grafana_sends(target["expr"]))
        assert result, f"{board} / {panel['title']}: no data for {target['expr']}"


def test_alert_rules_check_and_pass_their_unit_tests():
    rules = DEPLOY / "prometheus"
    check = subprocess.run(["promtool", "check", "rules", "alerts.yaml"], cwd=rules,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    tests = subprocess.run(["promtool", "test", "rules", "alerts_test.yaml"], cwd=rules,
                           capture_output=True, text=True)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    names = {r["alert"] for g in yaml.safe_load((rules / "alerts.yaml").read_text())["groups"]
             for r in g["rules"] if "alert" in r}
    assert names == {"RamwatchdNodeHeadroomLow", "RamwatchdShmOrphaned", "RamwatchdAnonGrowth",
                     "RamwatchdPinnedWaste", "RamwatchdOOMKill"}


def test_daemonset_sees_the_node_with_least_privilege(tmp_path):
    docs = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / "ramwatchd.yaml").read_text())}
    pod = docs["DaemonSet"]["spec"]["template"]
    spec = pod["spec"]
    assert spec["hostPID"] is True
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert not sc.get("privileged") and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == {"BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH", "SYS_RESOURCE"}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for path in ("/sys/kernel/tracing", "/lib/modules", "/usr/src", "/sys/fs/cgroup", "/dev/shm"):
        assert mounts[path]["readOnly"] is True, path
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert docs["ServiceMonitor"]["spec"]["endpoints"][0]["port"] == "metrics"
    # The shipped config is one ramwatchd accepts.
    cfg = tmp_path / "config.yaml"
    cfg.write_text(docs["ConfigMap"]["data"]["config.yaml"])
    assert [g.name for g in configuration.load(cfg).groups][-1] == "{comm}"
    example = configuration.load(DEPLOY / "config.example.yaml")
    assert example.port == 9725 and example.web.basic_auth_users == {}
