"""The daemon, read by a real Prometheus server, with real workloads of known size."""
import base64
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import bcrypt
import pytest

from conftest import RAMWATCHD, WORKLOAD, MiB, assert_near

REPO = Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url, auth=None, context=None):
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(req, timeout=10, context=context) as r:
        return r.status, r.read().decode()


def wait_until(what, check, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


class Daemon:
    def __init__(self, tmp_path, config_text, scheme="http", env=None):
        self.port = free_port()
        self.config = tmp_path / "ramwatchd.yaml"
        self.config.write_text(f"listen: {{address: 127.0.0.1, port: {self.port}}}\n" + config_text)
        self.log = open(tmp_path / "daemon.log", "w+")
        self.proc = subprocess.Popen(RAMWATCHD + ["daemon", "--config", str(self.config)],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.url = f"{scheme}://127.0.0.1:{self.port}/metrics"

    def wait_ready(self, **kw):
        def up():
            assert self.proc.poll() is None, self.output()
            try:
                return fetch(self.url, **kw)
            except (urllib.error.URLError, ConnectionError, ssl.SSLError):
                return None
        return wait_until("the daemon to serve", up)

    def output(self):
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=20)


@pytest.fixture
def daemon(tmp_path):
    started = []

    def go(config_text, **kw):
        d = Daemon(tmp_path, config_text, **kw)
        started.append(d)
        return d
    yield go
    for d in started:
        if d.proc.poll() is None:
            d.stop()


@pytest.fixture
def workloads(tmp_path):
    procs = []

    def go(*steps, env=None):
        ready = tmp_path / f"ready{len(procs)}"
        p = subprocess.Popen(WORKLOAD + list(steps) + [f"ready:{ready}", "sleep:120"],
                             stdout=subprocess.DEVNULL, env=env)
        procs.append(p)
        wait_until("the workload", lambda: ready.exists() or p.poll() is not None)
        assert p.poll() is None
        return p
    yield go
    for p in procs:
        p.kill()
        p.wait()


class Prometheus:
    def __init__(self, tmp_path, target, **more_jobs):
        """Scrape ramwatchd at target, and each job=target of more_jobs, every second."""
        self.port = free_port()
        cfg = tmp_path / "prometheus.yml"
        jobs = {"ramwatchd": target, **more_jobs}
        cfg.write_text("global: {scrape_interval: 1s, evaluation_interval: 1s}\nscrape_configs:\n" + "".join(
            f"  - job_name: {job}\n    static_configs: [{{targets: ['{t}']}}]\n" for job, t in jobs.items()))
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"))

    def query(self, promql):
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            _, body = fetch(url)
        except (urllib.error.URLError, ConnectionError):
            return []
        return [(r["metric"], float(r["value"][1])) for r in json.loads(body)["data"]["result"]]

    def value(self, promql):
        result = self.query(promql)
        return result[0][1] if len(result) == 1 else None


@pytest.fixture
def prometheus(tmp_path):
    started = []

    def go(target):
        p = Prometheus(tmp_path, target)
        started.append(p)
        return p
    yield go
    for p in started:
        p.proc.terminate()
        p.proc.wait(timeout=20)


TAGGED_GROUPS = """\
groups:
  - name: "test-{1}"
    match: {cmdline: 'ramwatchd\\.workloads tag:(\\w+)'}
collection: {smaps_min_interval: 500ms, discovery_interval: 1s, node_interval: 1s}
"""


def test_prometheus_reads_known_workloads(daemon, workloads, prometheus):
    name = f"ramwatchd-daemon-test-{os.getpid()}"
    d = daemon(TAGGED_GROUPS)
    d.wait_ready()
    big = workloads("tag:big", "anon:256M", f"shm:{name}:128M")
    workloads("tag:peer", f"attach:{name}")
    try:
        prom = prometheus(f"127.0.0.1:{d.port}")
        anon = wait_until("anon of test-big", lambda: (prom.value(
            'ramwatchd_resident_bytes{group="test-big",class="anon"}') or 0) >= 250 * MiB and prom.value(
            'ramwatchd_resident_bytes{group="test-big",class="anon"}'))
        assert_near(anon, 256 * MiB, what="anon")
        # The region is resident in both processes, but counted once in PSS sums.
        wait_until("both mappers", lambda: prom.value(f'ramwatchd_shm_object_processes{{name="{name}"}}') == 2)
        for group in ("test-big", "test-peer"):
            assert_near(prom.value(f'ramwatchd_resident_bytes{{group="{group}",class="shm_posix"}}'),
                        128 * MiB, what=f"shm_posix of {group}")
        shared_once = prom.value('sum(ramwatchd_proportional_resident_bytes{class="shm_posix",'
                                 'group=~"test-big|test-peer"})')
        assert_near(shared_once, 128 * MiB, what="PSS sum over both groups")
        assert_near(prom.value(f'ramwatchd_shm_object_bytes{{name="{name}"}}'), 128 * MiB, what="shm object")
        assert prom.value('ramwatchd_processes{group="test-big"}') == 1
        assert prom.value('ramwatchd_resident_peak_bytes{group="test-big"}') >= 384 * MiB
        assert prom.value("ramwatchd_node_memory_available_bytes") > 0
        assert prom.value('ramwatchd_programs_attached') >= 4
        # An exited process's series disappear at the next scrape.
        big.kill()
        big.wait()
        wait_until("test-big to go", lambda: prom.query('ramwatchd_processes{group="test-big"}') == [])
        assert prom.value('ramwatchd_processes{group="test-peer"}') == 1
    finally:
        os.unlink(f"/dev/shm/{name}")


def test_cuda_pinned_bytes_requested_and_mapped(daemon, workloads, driver_dir):
    env = dict(os.environ, LD_LIBRARY_PATH=str(driver_dir))
    name = f"ramwatchd-daemon-pinned-{os.getpid()}"
    d = daemon(TAGGED_GROUPS, env=env)
    d.wait_ready()
    workloads("tag:gpu", "pin:libcuda.so.1:300M", f"register:libcuda.so.1:{name}:128M", env=env)
    try:
        def value(text, series):
            lines = [l for l in text.splitlines() if l.startswith(series + " ")]
            return float(lines[0].split()[1]) if lines else None
        text = wait_until("pinned metrics", lambda: (lambda t: value(
            t, 'ramwatchd_cuda_pinned_mapped_bytes{group="test-gpu",how="registered"}') and t)(fetch(d.url)[1]))
        for how, size in (("allocated", 300 * MiB), ("registered", 128 * MiB)):
            assert value(text, f'ramwatchd_cuda_pinned_requested_bytes{{group="test-gpu",how="{how}"}}') == size
            assert value(text, f'ramwatchd_cuda_pinned_mapped_bytes{{group="test-gpu",how="{how}"}}') == size
        assert_near(value(text, 'ramwatchd_resident_bytes{class="cuda_pinned",group="test-gpu"}'),
                    300 * MiB, what="cuda_pinned")
    finally:
        os.unlink(f"/dev/shm/{name}")


def test_orphaned_shm_is_reported(daemon, tmp_path):
    name = f"ramwatchd-orphan-{os.getpid()}"
    with open(f"/dev/shm/{name}", "wb") as f:
        f.write(b"\1" * (32 * MiB))
    try:
        d = daemon(TAGGED_GROUPS)
        d.wait_ready()
        text = wait_until("the orphan", lambda: (lambda body: f'name="{name}"' in body and body)(
            fetch(d.url)[1]))
        lines = [l for l in text.splitlines() if l.startswith("ramwatchd_shm_orphaned_bytes ")]
        assert float(lines[0].split()[1]) >= 32 * MiB
        assert f'ramwatchd_shm_object_processes{{name="{name}"}} 0.0' in text
    finally:
        os.unlink(f"/dev/shm/{name}")


def test_exposition_passes_promtool(daemon, workloads):
    workloads("tag:lint", "anon:32M")
    d = daemon(TAGGED_GROUPS)
    _, text = d.wait_ready()
    text = wait_until("a lint group", lambda: (lambda b: 'group="test-lint"' in b and b)(fetch(d.url)[1]))
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    for name in ("ramwatchd_resident_bytes", "ramwatchd_proportional_resident_bytes",
                 "ramwatchd_page_faults_total", "ramwatchd_build_info", "ramwatchd_events_lost_total",
                 "ramwatchd_collection_duration_seconds", "ramwatchd_series_cut_total"):
        assert f"# TYPE {name.removesuffix('_total')}" in text, name


def test_starts_with_defaults_and_no_config(tmp_path):
    port = free_port()
    proc = subprocess.Popen(RAMWATCHD + ["daemon", "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, text = wait_until("the daemon", lambda: _try(f"http://127.0.0.1:{port}/metrics"))
        # The default groups by command name.
        assert 'ramwatchd_processes{group="python' in text or 'ramwatchd_processes{group="' in text
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _try(url):
    try:
        return fetch(url)
    except (urllib.error.URLError, ConnectionError):
        return None


def test_sighup_reloads_and_a_bad_reload_keeps_the_old_config(daemon, workloads):
    workloads("tag:reload", "anon:16M")
    d = daemon(TAGGED_GROUPS)
    d.wait_ready()
    wait_until("the first name", lambda: 'group="test-reload"' in fetch(d.url)[1])
    d.config.write_text(d.config.read_text().replace('"test-{1}"', '"renamed-{1}"'))
    d.proc.send_signal(signal.SIGHUP)
    wait_until("the new name", lambda: 'group="renamed-reload"' in fetch(d.url)[1])
    d.config.write_text(d.config.read_text() + "bogus_key: 1\n")
    d.proc.send_signal(signal.SIGHUP)
    wait_until("the refusal", lambda: "keeping the old config" in d.output())
    assert "bogus_key: unknown key" in d.output()
    assert 'group="renamed-reload"' in fetch(d.url)[1] and d.proc.poll() is None


@pytest.mark.parametrize("text, where, what", [
    ("listen: {port: 9725}\nlimits:\n  max_groups: lots\n", ":3:", "limits.max_groups: must be a whole number"),
    ("groups:\n  - name: x\n    match: {cmdline: '(unclosed'}\n", ":3:", "groups[0].match.cmdline: bad regex"),
    ("collection:\n  smaps_interval: 5s\n", ":2:", "collection.smaps_interval: unknown key"),
    ("listen: [1, 2]\n", ":1:", "listen: must be a mapping"),
])
def test_config_mistakes_name_the_line_and_key(tmp_path, text, where, what):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    done = subprocess.run(RAMWATCHD + ["daemon", "--config", str(cfg)], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{cfg}{where}" in lines[0] and what in lines[0], done.stderr


def test_tls_and_basic_auth(daemon, tmp_path):
    key, cert = tmp_path / "tls.key", tmp_path / "tls.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    d = daemon(f"web:\n  tls_server_config: {{cert_file: {cert}, key_file: {key}}}\n"
               f"  basic_auth_users:\n    prom: '{hashed}'\n", scheme="https")
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    status, body = d.wait_ready(auth="prom:s3cret", context=context)
    assert status == 200 and "ramwatchd_build_info" in body
    for auth in (None, "prom:wrong", "eve:s3cret"):
        with pytest.raises(urllib.error.HTTPError) as err:
            fetch(d.url, auth=auth, context=context)
        assert err.value.code == 401
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        fetch(d.url.replace("https:", "http:"), auth="prom:s3cret")


def test_systemd_unit_verifies():
    unit = REPO / "deploy" / "systemd" / "ramwatchd.service"
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = unit.read_text()
    assert "CAP_SYS_ADMIN" not in text and "NoNewPrivileges=yes" in text and "Restart=" in text


def metric(text, series):
    """The value of one series in an exposition, or None."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[1])
    return None


def test_groups_live_and_die_with_their_processes(daemon, tmp_path):
    # 30 short-lived programs, each its own group by comm, past max_groups of
    # 10: the groups empty as the programs exit, free their slots, and their
    # series go; a long-lived program started after them gets a group of its own.
    d = daemon("groups: [{name: '{comm}', match: {comm: '^rwgroup'}}]\n"
               "limits: {max_groups: 10}\n"
               "collection: {smaps_min_interval: 500ms, discovery_interval: 1s, node_interval: 1s}\n")
    d.wait_ready()
    names = []
    for i in range(30):
        link = tmp_path / f"rwgroup{i:02d}"
        link.symlink_to("/bin/sleep")
        names.append(link)
    churn = [subprocess.Popen([str(link), "1.5"]) for link in names]
    wait_until("groups cut at max_groups", lambda: metric(
        fetch(d.url)[1], 'ramwatchd_series_cut_total{limit="groups"}'))
    for proc in churn:
        proc.wait()
    # Emptied groups are exported once more, then gone.
    wait_until("the emptied groups to go", lambda: "rwgroup" not in fetch(d.url)[1] or None)
    fresh = tmp_path / "rwgroupfresh"
    fresh.symlink_to("/bin/sleep")
    late = subprocess.Popen([str(fresh), "60"])
    try:
        text = wait_until("the fresh group", lambda: (lambda t: 'group="rwgroupfresh"' in t and t)(fetch(d.url)[1]))
        assert metric(text, 'ramwatchd_processes{group="rwgroupfresh"}') == 1
        assert metric(text, 'ramwatchd_processes{group="other"}') is None
    finally:
        late.kill()
        late.wait()


def memory_cgroup(name, limit):
    """A memory cgroup (v1 or v2) under this process's own, limited to `limit`
    bytes; returns its procs file and a function that removes it."""
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    v1 = [line.split(":", 2)[2] for line in lines if "memory" in line.split(":")[1].split(",")]
    if v1:
        base = Path("/sys/fs/cgroup/memory" + v1[0]) / name
        base.mkdir()
        (base / "memory.limit_in_bytes").write_text(str(limit))
    else:
        parent = Path("/sys/fs/cgroup" + next(l.split(":", 2)[2] for l in lines if l.startswith("0::")))
        (parent / "cgroup.subtree_control").write_text("+memory")
        base = parent / name
        base.mkdir()
        (base / "memory.max").write_text(str(limit))
    return base / "cgroup.procs", base.rmdir


def test_an_oom_victim_is_counted_in_its_group(daemon):
    d = daemon(TAGGED_GROUPS)
    _, text = d.wait_ready()
    procs, remove = memory_cgroup(f"ramwatchd-oom-{os.getpid()}", 64 * MiB)
    try:
        # The workload joins the 64 MiB cgroup, then asks for 256 MiB.
        victim = subprocess.Popen(["sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh", *WORKLOAD,
                                   "tag:oom", "sleep:2", "anon:256M", "sleep:30"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until("the group's counter at 0", lambda: metric(
            fetch(d.url)[1], 'ramwatchd_oom_kills_total{group="test-oom"}') == 0)
        assert victim.wait(timeout=60) == -signal.SIGKILL
        wait_until("the kill counted", lambda: metric(
            fetch(d.url)[1], 'ramwatchd_oom_kills_total{group="test-oom"}') == 1)
    finally:
        remove()
