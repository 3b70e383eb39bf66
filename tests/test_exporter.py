"""The metrics endpoint: what it serves besides the metrics, and how it holds
up under hostile clients, each played by a real client on loopback."""
import base64
import http.client
import multiprocessing
import platform
import select
import socket
import ssl
import statistics
import subprocess
import threading
import time
from pathlib import Path

import bcrypt
import pytest
from prometheus_client.parser import text_string_to_metric_families

import ramwatchd
from ramwatchd.drivers.daemon.exporter import BCRYPT_WAITING, MAX_CONNECTIONS, REQUEST_TIMEOUT_S
from ramwatchd.kernel.probes import import_bcc
from ramwatchd.ledger.classes import CLASSES
from test_daemon import TAGGED_GROUPS, Daemon, fetch, wait_until, workloads  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parent.parent
GOOD_SCRAPE_S = 2.0      # what a good scrape may take while an attack runs
COST = 8                 # bcrypt cost of the test user: ~20-50 ms a check, slow enough to measure
USER, PASSWORD = "prom", "s3cret"
GROUP_COUNTERS = {"ramwatchd_page_faults", "ramwatchd_oom_kills"}   # by group (and class)


def families(text):
    return {f.name: f for f in text_string_to_metric_families(text)}


def git_revision():
    done = subprocess.run(["git", "-C", str(REPO), "-c", "safe.directory=*", "rev-parse", "HEAD"],
                          capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def test_first_scrape_has_self_metrics_and_every_counter_at_zero(tmp_path, workloads):
    d = Daemon(tmp_path, TAGGED_GROUPS)
    try:
        _, first = d.wait_ready()
        check = subprocess.run(["promtool", "check", "metrics"], input=first, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        seen = families(first)
        (build,) = seen["ramwatchd_build_info"].samples
        assert build.labels == {"version": ramwatchd.__version__, "revision": git_revision(),
                                "pythonversion": platform.python_version(),
                                "bccversion": import_bcc().__version__}
        assert seen["process_resident_memory_bytes"].samples[0].value > 0
        assert seen["process_cpu_seconds"].samples[0].value > 0
        assert seen["python_info"].samples
        # Every counter is there from the first scrape, at 0 if nothing was
        # counted, so that increase() sees its first count; but a group's come
        # with the group.
        empty = {f.name for f in seen.values() if f.type == "counter" and not f.samples}
        assert empty <= GROUP_COUNTERS, f"no series in the first scrape: {empty - GROUP_COUNTERS}"
        assert {s.labels["map"]: s.value for s in seen["ramwatchd_kernel_map_full"].samples} == dict.fromkeys(
            ("traced", "fault_regions", "files", "inflight"), 0)
        assert {s.labels["limit"] for s in seen["ramwatchd_series_cut"].samples} == {
            "groups", "mappings", "files", "shm_objects", "cgroups"}
        assert [s.value for s in seen["ramwatchd_events_lost"].samples] == [0]

        # A group's counters come with the group, every class of them.
        workloads("tag:zero", "anon:16M")
        text = wait_until("the new group", lambda: (lambda t: 'ramwatchd_processes{group="test-zero"}' in t and t)(
            fetch(d.url)[1]))
        mine = {name: [s for s in families(text)[name].samples if s.labels["group"] == "test-zero"]
                for name in GROUP_COUNTERS}
        assert [s.value for s in mine["ramwatchd_oom_kills"]] == [0]
        assert {s.labels["class"] for s in mine["ramwatchd_page_faults"]} == set(CLASSES)
    finally:
        d.stop()


# ---- hostile clients ------------------------------------------------------------

class Endpoint:
    """The daemon with TLS and basic auth on, and clients of it."""

    def __init__(self, tmp):
        key, cert = tmp / "tls.key", tmp / "tls.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True)
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=COST)).decode()
        self.daemon = Daemon(tmp, TAGGED_GROUPS + f"web:\n  tls_server_config: {{cert_file: {cert}, key_file: {key}}}\n"
                                                  f"  basic_auth_users:\n    {USER}: '{hashed}'\n", scheme="https")
        self.port = self.daemon.port
        self.tls = ssl.create_default_context(cafile=str(cert))
        self.tls.check_hostname = False

    def get(self, path="/metrics", auth=f"{USER}:{PASSWORD}", timeout=30):
        """(status, body, seconds) of one request on a connection of its own."""
        started = time.monotonic()
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.tls, timeout=timeout)
        headers = {"Authorization": "Basic " + _b64(auth)} if auth else {}
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            body = response.read()
            return response.status, body, time.monotonic() - started
        finally:
            conn.close()

    def good_scrape(self):
        """Seconds a scrape with the right credential took; it must succeed."""
        status, body, took = self.get(timeout=REQUEST_TIMEOUT_S)
        assert status == 200 and b"ramwatchd_build_info" in body, status
        return took

    def connect(self):
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)


def _b64(text):
    return base64.b64encode(text.encode()).decode()


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    e = Endpoint(tmp_path_factory.mktemp("endpoint"))
    try:
        e.daemon.wait_ready(auth=f"{USER}:{PASSWORD}", context=e.tls)
        yield e
    finally:
        e.daemon.stop()


def open_still(sock):
    """True while the server has not closed sock."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return True
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except (ConnectionError, ssl.SSLError):
        return False


def closed_by(sock, deadline):
    """When (time.monotonic()) the server closed sock, or None if not by the deadline."""
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            if sock.recv(4096) == b"":
                return time.monotonic()
        except TimeoutError:
            continue
        except (ConnectionError, ssl.SSLError):
            return time.monotonic()
    return None


def test_landing_page_404_and_401(endpoint):
    status, body, _ = endpoint.get("/")
    assert status == 200 and b'<a href="/metrics">' in body and git_revision().encode() in body
    assert endpoint.get("/metrics?x=1")[0] == 200
    for path in ("/nothing", "/metrics/", "/favicon.ico"):
        assert endpoint.get(path)[0] == 404, path
    for path in ("/", "/metrics", "/nothing"):
        assert endpoint.get(path, auth=None)[0] == 401, path
    # bcrypt reads 72 bytes of a password at most: a longer one is refused, not truncated.
    assert endpoint.get(auth=f"{USER}:{PASSWORD}" + "x" * 100)[0] == 401
    assert endpoint.get(auth=f"{USER}:{PASSWORD}")[0] == 200


def test_a_client_that_never_starts_its_handshake_holds_up_no_scrape(endpoint):
    silent = [endpoint.connect() for _ in range(5)]
    try:
        took = [endpoint.good_scrape() for _ in range(5)]
        print(f"\ngood scrape with 5 silent connections open: median {statistics.median(took) * 1000:.0f} ms, "
              f"max {max(took) * 1000:.0f} ms")
        assert max(took) < GOOD_SCRAPE_S, took
        assert all(open_still(s) for s in silent), "the silent clients were dropped, not waited on"
    finally:
        for s in silent:
            s.close()


def test_connections_that_send_nothing_or_trickle_are_closed_at_the_deadline(endpoint):
    silent = endpoint.connect()                                     # never says hello
    handshaken = endpoint.tls.wrap_socket(endpoint.connect())       # says hello, then nothing
    trickle = endpoint.tls.wrap_socket(endpoint.connect())          # one byte of a request a second
    started, closed = time.monotonic(), {}

    def drip():
        for byte in b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 100:
            if closed_by(trickle, time.monotonic() + 1) or not _send(trickle, bytes([byte])):
                closed["trickle"] = time.monotonic()
                return
    dripper = threading.Thread(target=drip)
    dripper.start()
    try:
        deadline = started + REQUEST_TIMEOUT_S + 5
        closed["silent"] = closed_by(silent, deadline)
        closed["handshaken"] = closed_by(handshaken, deadline)
        dripper.join(deadline - time.monotonic())
        print("\nclosed after: " + ", ".join(f"{name} {at - started:.1f} s" for name, at in closed.items() if at))
        for name in ("silent", "handshaken", "trickle"):
            assert closed.get(name), f"the {name} connection was still open {deadline - started:.0f} s later"
    finally:
        for s in (silent, handshaken, trickle):
            s.close()
        dripper.join()


def _send(sock, data):
    try:
        sock.sendall(data)
        return True
    except (ConnectionError, ssl.SSLError):
        return False


def test_connections_beyond_the_cap_are_closed_at_once_and_the_cap_frees(endpoint):
    held = [endpoint.connect() for _ in range(MAX_CONNECTIONS)]
    try:
        extra = [endpoint.connect() for _ in range(4)]
        deadline = time.monotonic() + 5
        assert all(closed_by(s, deadline) for s in extra), f"connections beyond {MAX_CONNECTIONS} were kept"
        assert all(open_still(s) for s in held)
        for s in extra:
            s.close()
    finally:
        for s in held:
            s.close()
    wait_until("a scrape once the held connections are gone", lambda: _scrape_works(endpoint), timeout=10)


def _scrape_works(endpoint):
    try:
        return endpoint.get()[0] == 200
    except (ConnectionError, ssl.SSLError, http.client.HTTPException):
        return False


class Guessers:
    """Clients sending wrong passwords, each one request after another, from a
    process of their own, as an attacker would be: not competing with the good
    scrape's client for its interpreter."""

    ANSWERS = (401, 429, "other")

    def __init__(self, endpoint, clients):
        fork = multiprocessing.get_context("fork")
        self.counts, self.stop = fork.Array("l", len(self.ANSWERS)), fork.Event()
        self.process = fork.Process(target=self._guess, args=(endpoint, clients))

    def __enter__(self):
        self.process.start()
        return self

    def __exit__(self, *_):
        self.stop.set()
        self.process.join()

    def answers(self):
        return {kind: n for kind, n in zip(self.ANSWERS, self.counts[:])}

    def _guess(self, endpoint, clients):
        def client(n):
            while not self.stop.is_set():
                try:
                    status = endpoint.get(auth=f"{USER}:wrong{n}")[0]
                except (OSError, http.client.HTTPException):
                    status = "other"
                with self.counts.get_lock():
                    self.counts[self.ANSWERS.index(status if status in self.ANSWERS else "other")] += 1
                n += clients
        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


@pytest.mark.parametrize("clients", [40, BCRYPT_WAITING + 36])
def test_a_flood_of_wrong_passwords_does_not_starve_a_good_scrape(endpoint, clients):
    # 40 guessers all wait their turn at bcrypt; of 100, those past
    # BCRYPT_WAITING are told 429 at once and come straight back.
    endpoint.good_scrape()       # the credential verified once, as by Prometheus' first scrape
    took = []
    with Guessers(endpoint, clients) as guessers:
        while len(took) < 10 or sum(guessers.answers().values()) < 200:
            took.append(endpoint.good_scrape())
            time.sleep(0.1)
    answers = guessers.answers()
    print(f"\ngood scrape during {sum(answers.values())} wrong-password requests, {clients} at a time: "
          f"median {statistics.median(took) * 1000:.0f} ms, max {max(took) * 1000:.0f} ms; answers {answers}")
    assert max(took) < GOOD_SCRAPE_S, took
    assert answers[401] > 0 and answers["other"] == 0, answers
    assert (answers[429] > 0) == (clients > BCRYPT_WAITING + 1), answers


def test_an_unknown_user_costs_what_a_wrong_password_costs(endpoint):
    # Timed as an attacker would time them: from the client, whole requests.
    wrong, unknown = [], []
    for i in range(15):
        for user, times in ((USER, wrong), (f"nobody{i}", unknown)):
            status, _, took = endpoint.get(auth=f"{user}:guess{i}")
            assert status == 401
            times.append(took)
    ratio = statistics.median(unknown) / statistics.median(wrong)
    print(f"\nwrong password: median {statistics.median(wrong) * 1000:.1f} ms; "
          f"unknown user: median {statistics.median(unknown) * 1000:.1f} ms")
    assert 0.7 < ratio < 1.4, (wrong, unknown)
