"""deploy/: the Grafana dashboards, the alert rules and the Kubernetes manifests.

Every panel's query runs against a real Prometheus that scrapes a real daemon
watching workloads of known kinds, and must return data."""
import json
import os
import re
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
import yaml

from conftest import WORKLOAD
from ramwatchd.drivers.daemon import config as configuration
from test_daemon import TAGGED_GROUPS, Daemon, Prometheus, free_port, wait_until

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana").glob("*.json"))
GRAFANA_UNITS = {"bytes", "percentunit", "ops", "short", "s", "Bps"}
VARIABLES = {"datasource", "job", "instance", "group", "class"}
# Panels coloured where an alert fires, and the alert.
ALERTING_PANELS = {"Headroom used: pinned + shm + anon vs MemAvailable": "RamwatchdNodeHeadroomLow",
                   "/dev/shm orphaned": "RamwatchdShmOrphaned"}


def board(path):
    return json.loads(path.read_text())


def panels():
    """(dashboard, panel) for every panel that shows data (rows only group them)."""
    for path in DASHBOARDS:
        for panel in board(path)["panels"]:
            if panel["type"] != "row":
                yield path.stem, panel


def alerts():
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    return {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"] if "alert" in r}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboards_are_grafana_models(path):
    dashboard = board(path)
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    names = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert VARIABLES <= names.keys()
    assert names["datasource"]["type"] == "datasource" and names["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24 and g["w"] > 0 and g["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["fieldConfig"]["defaults"]["unit"] in GRAFANA_UNITS, p["title"]
        assert p["targets"] and all(t["expr"] for t in p["targets"]), p["title"]
        assert p["description"], p["title"]
    assert len({board(d)["uid"] for d in DASHBOARDS}) == len(DASHBOARDS)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboards_are_laid_out_in_rows(path):
    """Open rows, each heading the panels below it down to the next row; no
    two panels share a cell of the grid."""
    layout = board(path)["panels"]
    assert layout[0]["type"] == "row", "the first panel must be a row"
    rows = [p for p in layout if p["type"] == "row"]
    assert len(rows) >= 2 and len({r["title"] for r in rows}) == len(rows)
    for r in rows:
        assert r["gridPos"] == {"h": 1, "w": 24, "x": 0, "y": r["gridPos"]["y"]}, r["title"]
        assert r["collapsed"] is False and r["panels"] == [], r["title"]
    assert layout == sorted(layout, key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"])), "panels in reading order"
    taken = set()
    for p in layout:
        g = p["gridPos"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & taken, f"{p['title']} overlaps another panel"
        taken |= cells
    starts = [layout.index(r) for r in rows] + [len(layout)]
    for r, begin, end in zip(rows, starts, starts[1:]):
        section = layout[begin + 1:end]
        assert section, f"row {r['title']} is empty"
        if end < len(layout):
            assert max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in section) <= layout[end]["gridPos"]["y"]


METRIC = re.compile(r"([a-zA-Z_:][\w:]*)\s*[{\[]")


def top_level_ratio(expr):
    """(numerator, denominator) of a query that divides, else (expr, None)."""
    depth = 0
    for i, ch in enumerate(expr):
        depth += ch in "({["
        depth -= ch in ")}]"
        if ch == "/" and depth == 0:
            return expr[:i], expr[i + 1:]
    return expr, None


def expected_unit(expr):
    """The unit of a query's values, from the names of its metrics: _bytes are
    bytes, _seconds seconds, a rate of a _total is per second and its increase
    a count, a deriv of bytes is bytes per second, bytes over bytes a fraction,
    bytes over a count bytes each, and any other metric (processes, programs
    attached) is a count."""
    top, below = top_level_ratio(expr)
    if below is not None:
        ratio = (expected_unit(top), expected_unit(below))
        assert ratio in {("bytes", "bytes"), ("bytes", "short")}, f"no unit for {expr}"
        return "percentunit" if ratio == ("bytes", "bytes") else "bytes"
    suffixes = {next((s for s in ("_bytes", "_seconds", "_total") if name.endswith(s)), "")
                for name in METRIC.findall(expr)}
    assert len(suffixes) == 1, f"{expr} mixes metrics of different units"
    suffix = suffixes.pop()
    if suffix == "_total":
        return "ops" if re.search(r"\bi?rate\(", expr) else "short"
    if suffix == "_bytes":
        return "Bps" if "deriv(" in expr else "bytes"
    return "s" if suffix == "_seconds" else "short"


def unit_shown(panel, target):
    """The unit Grafana shows a target's values in: its column's override, else the panel's."""
    column = "Value" if len(panel["targets"]) == 1 else f"Value #{target['refId']}"
    for override in panel["fieldConfig"]["overrides"]:
        if override["matcher"] == {"id": "byName", "options": column}:
            units = [p["value"] for p in override["properties"] if p["id"] == "unit"]
            if units:
                return units[0]
    return panel["fieldConfig"]["defaults"]["unit"]


@pytest.mark.parametrize("board_name, panel", list(panels()), ids=lambda x: x if isinstance(x, str) else x["title"])
def test_units_follow_the_metric_names(board_name, panel):
    for target in panel["targets"]:
        assert unit_shown(panel, target) == expected_unit(target["expr"]), f"{board_name} / {panel['title']}"


def test_threshold_colours_turn_red_where_the_alerts_fire():
    rules = alerts()
    shown = {p["title"]: p for _, p in panels()}
    for title, alert in ALERTING_PANELS.items():
        defaults = shown[title]["fieldConfig"]["defaults"]
        steps = defaults["thresholds"]["steps"]
        assert defaults["thresholds"]["mode"] == "absolute" and steps[0]["value"] is None, title
        levels = [s["value"] for s in steps[1:]]
        assert levels == sorted(levels), title
        fires_above = float(re.search(r">\s*([0-9.e+]+)\s*$", rules[alert].strip()).group(1))
        assert steps[-1] == {"color": "red", "value": fires_above}, title
        if defaults["unit"] == "percentunit":
            assert (defaults["min"], defaults["max"]) == (0, 1), title


def data_links(panel):
    return panel["fieldConfig"]["defaults"].get("links", [])


def test_dashboards_link_to_each_other():
    boards = {b["uid"]: b for b in map(board, DASHBOARDS)}
    for uid, dashboard in boards.items():
        linked = {l["url"] for l in dashboard["links"] if l["includeVars"] and l["keepTime"]}
        assert linked == {f"/d/{other}" for other in boards if other != uid}, dashboard["title"]
    followed = set()
    for uid, dashboard in boards.items():
        for panel in dashboard["panels"]:
            for link in data_links(panel) if panel["type"] != "row" else []:
                url = urlsplit(link["url"])
                target = url.path.removeprefix("/d/")
                assert target in boards.keys() - {uid}, link["url"]
                names = {v["name"] for v in boards[target]["templating"]["list"]}
                given = {k.removeprefix("var-") for k, _ in parse_qsl(url.query) if k.startswith("var-")}
                assert given and given <= names, link["url"]
                assert "${__url_time_range}" in link["url"], "a drill-down keeps the time range"
                followed.add((uid, target))
    assert len(followed) == len(boards), "each dashboard drills down into the other"


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
    made = tmp / "shm-made"
    procs = [subprocess.Popen(WORKLOAD + steps, stdout=subprocess.DEVNULL, env=env) for steps in (
        ["tag:engine", "anon:64M", "malloc:32M", f"weights:{tmp}/model.safetensors:64M:0.5",
         f"shm:{shm}:32M", f"ready:{made}", "pin:libcuda.so.1:64M", "sleep:300"],
        ["tag:peer", f"await:{made}", f"attach:{shm}", "churn:16M:300"])]
    vllm = VllmStandIn()
    prom = Prometheus(tmp, f"127.0.0.1:{daemon.port}", vllm=vllm.target)
    try:
        wait_until("every kind of data", lambda: all(prom.query(q) for q in (
            'ramwatchd_cuda_pinned_mapped_bytes{group="test-engine"}',
            'ramwatchd_page_cache_bytes', 'ramwatchd_page_faults_total{group="test-peer"}',
            f'ramwatchd_shm_object_processes{{name="{shm}"}} == 2')), timeout=90)
        # rate() and deriv() need a few scrapes of each series
        wait_until("three scrapes", lambda: fleet_scrapes(prom) >= 3, timeout=60)
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


def fleet_scrapes(prom):
    counts = prom.query('min(count_over_time(ramwatchd_page_faults_total{group="test-peer"}[1m]))')
    return counts[0][1] if counts else 0


def as_grafana_sends(expr):
    """Variables at 'All', and $__rate_interval as Grafana computes it for a 15 s scrape."""
    for name in ("job", "instance", "group", "class"):
        expr = expr.replace(f"${name}", ".*")
    return expr.replace("$__rate_interval", "1m")


@pytest.mark.parametrize("board_name, panel", list(panels()), ids=lambda x: x if isinstance(x, str) else x["title"])
def test_every_panel_query_returns_data_named_by_node_and_group(fleet, board_name, panel):
    """Each query returns data. A legend names every label that tells its
    series apart, the node first among them: one series per node at least."""
    where = f"{board_name} / {panel['title']}"
    for target in panel["targets"]:
        result = fleet.query(as_grafana_sends(target["expr"]))
        assert result, f"{where}: no data for {target['expr']}"
        labels = {name for metric, _ in result for name in metric} - {"__name__", "job"}
        assert "instance" in labels or not labels, f"{where}: series of several nodes are added up"
        if target.get("format") != "table":
            assert set(re.findall(r"{{(\w+)}}", target["legendFormat"])) == labels, where
        for link in data_links(panel):
            assert set(re.findall(r"__field\.labels\.(\w+)", link["url"])) <= labels, where


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
