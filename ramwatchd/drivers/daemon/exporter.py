"""Stage 4 (the daemon's view): Prometheus metrics, built fresh at every scrape
from the daemon's aggregates, served over HTTP with optional TLS and basic auth
(configured as in Prometheus exporters' web config), in a way hostile clients
cannot turn against the scrape."""
import base64
import hashlib
import hmac
import html
import io
import logging
import os
import platform
import socket
import ssl
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import bcrypt

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import MetricsHandler

from ... import __version__
from ...kernel.probes import import_bcc
from ...ledger.classes import CLASSES
from .config import Limits

log = logging.getLogger("ramwatchd")

# Kernel stats that count records a full BPF map could not keep, by map.
MAPS_FULL = {"traced": "children_not_followed", "fault_regions": "fault_regions_full",
             "files": "files_full", "inflight": "inflight_full"}
LIMITS = tuple(name.removeprefix("max_") for name in vars(Limits()))


class DaemonCollector:
    """Turns the daemon's state into metric families; holds the daemon's lock
    only while it copies numbers, never while /proc is read."""

    def __init__(self, daemon):
        self.daemon = daemon
        self.build = build_labels()

    def collect(self):
        d = self.daemon
        with d.lock:
            resident, proportional, processes, pinned_requested, pinned_mapped = d.aggregate()
            mappings = d.top_mappings()
            live = d.groups.live()
            peaks = {g.name: g.peak for g in live}
            # Every counter a group or a limit has is there from the start, at 0,
            # so that increase() sees its first count.
            faults = {(g, cls): 0 for g in d.groups.groups for cls in CLASSES}
            faults.update(d.groups.faults())
            ooms = {g.name: g.oom_kills for g in d.groups.groups.values()}
            cut = dict.fromkeys(LIMITS, 0) | dict(d.node.cut, groups=d.groups.cut)
            node, durations = _NodeFigures(d.node), dict(d.durations)
            stats, attached, smaps_reads = d.probes.stats(), d.probes.programs_attached(), d.smaps_reads
            unattributed, hidden = d.tracker.unattributed_faults, d.unreadable()
            d.groups.drop_emptied(scraped=True)
        yield _gauge("ramwatchd_resident_bytes", "Resident bytes (RSS) of the group's processes, "
                     "by memory class.", ["group", "class"], resident)
        yield _gauge("ramwatchd_proportional_resident_bytes", "Proportional resident bytes (PSS): "
                     "shared pages divided among their mappers, so sums across groups count them "
                     "once.", ["group", "class"], proportional)
        yield _gauge("ramwatchd_mapping_resident_bytes", "Resident bytes of the largest mapped objects "
                     "(files, shm segments, the heap...) summed over the group's processes.",
                     ["group", "class", "mapping"], mappings)
        yield _gauge("ramwatchd_cuda_pinned_requested_bytes", "Host memory the group's processes asked "
                     "the CUDA driver to pin: allocated (class cuda_pinned) or registered (in place).",
                     ["group", "how"], pinned_requested)
        yield _gauge("ramwatchd_cuda_pinned_mapped_bytes", "Bytes of the mappings that hold the group's "
                     "CUDA pinned ranges.", ["group", "how"], pinned_mapped)
        yield _gauge("ramwatchd_resident_peak_bytes", "Highest VmRSS sum of the group seen since "
                     "ramwatchd started.", ["group"], {(g,): v for g, v in peaks.items()})
        yield _gauge("ramwatchd_processes", "Processes in the group.", ["group"],
                     {(g,): v for g, v in processes.items()})
        yield _counter("ramwatchd_page_faults", "Page faults by the class of the mapping they fell in "
                       "(sampled in the kernel, scaled by the sample period).", ["group", "class"], faults)
        yield _counter("ramwatchd_page_faults_unattributed", "Sampled page faults of processes not "
                       "yet looked at, so of no known class.", [], {(): unattributed})
        yield _counter("ramwatchd_oom_kills", "Processes of the group chosen by the OOM killer.",
                       ["group"], {(g,): v for g, v in ooms.items()})
        yield from _node(node)
        yield InfoMetricFamily("ramwatchd_build", "ramwatchd's version, the commit it was built from, "
                               "and the Python and bcc it runs on.", value=self.build)
        yield _gauge("ramwatchd_collection_duration_seconds", "How long the last run of each "
                     "collection tier took.", ["tier"], {(t,): v for t, v in durations.items()})
        yield _counter("ramwatchd_events_lost", "Kernel events dropped because the ring buffer was full.",
                       [], {(): stats["events_lost"]})
        yield _counter("ramwatchd_kernel_map_full", "Records the kernel side could not keep because a BPF "
                       "map was full: a process not traced (traced), sampled faults not located "
                       "(fault_regions), page-cache fills (files), a call's arguments from its entry to its "
                       "exit (inflight).",
                       ["map"], {(m,): stats[stat] for m, stat in MAPS_FULL.items()})
        yield _gauge("ramwatchd_programs_attached", "BPF programs attached.", [], {(): attached})
        yield _counter("ramwatchd_smaps_reads", "Reads of /proc/PID/smaps.", [], {(): smaps_reads})
        yield _gauge("ramwatchd_processes_unreadable", "Processes whose /proc ramwatchd may not read "
                     "(another user namespace, a hardened /proc).", [], {(): hidden})
        yield _counter("ramwatchd_series_cut", "Series (or samples) left out by a configured limit.",
                       ["limit"], {(k,): v for k, v in cut.items()})


class _NodeFigures:
    """A copy of the node tier's figures, taken under the daemon's lock."""

    def __init__(self, tier):
        self.meminfo, self.cgroups = dict(tier.meminfo), dict(tier.cgroups)
        self.shm, self.shm_orphaned, self.page_cache = list(tier.shm), tier.shm_orphaned, dict(tier.page_cache)


def _gauge(name, doc, labels, values):
    g = GaugeMetricFamily(name, doc, labels=labels)
    for key, v in sorted(values.items()):
        g.add_metric(list(key), v)
    return g


def _counter(name, doc, labels, values):
    c = CounterMetricFamily(name, doc, labels=labels)
    for key, v in sorted(values.items()):
        c.add_metric(list(key), v)
    return c


def _node(node):
    info = node.meminfo
    if info:
        yield _gauge("ramwatchd_node_memory_total_bytes", "MemTotal of the node.", [], {(): info["MemTotal"]})
        yield _gauge("ramwatchd_node_memory_available_bytes", "MemAvailable of the node.", [],
                     {(): info["MemAvailable"]})
    yield _gauge("ramwatchd_cgroup_memory_bytes", "Memory charged to a cgroup (container), from its "
                 "memory.stat.", ["cgroup", "kind"],
                 {(path, kind): v for path, charged in node.cgroups.items()
                  for kind, v in zip(("anon", "file", "shmem"), charged)})
    yield _gauge("ramwatchd_shm_object_bytes", "Resident bytes of each /dev/shm object.", ["name"],
                 {(name,): size for name, size, _ in node.shm})
    yield _gauge("ramwatchd_shm_object_processes", "Watched processes mapping each /dev/shm object.",
                 ["name"], {(name,): n for name, _, n in node.shm})
    yield _gauge("ramwatchd_shm_orphaned_bytes", "Bytes in /dev/shm that no process maps.", [],
                 {(): node.shm_orphaned})
    yield _gauge("ramwatchd_page_cache_bytes", "Page cache held by each mapped weights file.", ["file"],
                 {(path,): v for path, v in node.page_cache.items()})



# ---- build -----------------------------------------------------------------------

def build_labels():
    return {"version": __version__, "revision": revision(), "pythonversion": platform.python_version(),
            "bccversion": getattr(import_bcc(), "__version__", "unknown")}


def revision():
    """The commit this copy was built from: the REVISION file a package build
    writes into the package, else the HEAD of the git checkout it runs from
    (an editable install), else "unknown"."""
    package = Path(__file__).resolve().parents[2]
    try:
        return (package / "REVISION").read_text().strip() or "unknown"
    except OSError:
        pass
    if not (package.parent / ".git").exists():
        return "unknown"     # not a checkout of its own: git would answer for an enclosing one
    try:
        done = subprocess.run(["git", "-C", str(package.parent), "-c", "safe.directory=*", "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 else "unknown"


# ---- serving ------------------------------------------------------------------
#
# As exporter-toolkit (Go's net/http) serves, so that no client, however slow or
# hostile, holds up the scrape: the accept loop only accepts; each connection
# gets a thread of its own, where its TLS handshake happens; the handshake and
# the request must both arrive before a deadline; connections are capped; and
# bcrypt, slow by design, runs once per credential and one check at a time.

REQUEST_TIMEOUT_S = 10.0   # from accept to a whole request (Prometheus' default scrape timeout)
MAX_CONNECTIONS = 128      # open at once; the next is closed at once
BCRYPT_WAITING = MAX_CONNECTIONS // 2   # password checks waiting their turn (so guesses hold at
                                        # most half the connections); the next is answered 429 at once
BCRYPT_MAX_PASSWORD = 72   # bytes bcrypt reads (bcrypt 5 refuses longer)

LANDING_PAGE = """<!DOCTYPE html>
<html><head><title>ramwatchd</title></head>
<body><h1>ramwatchd</h1>
<p>Host memory of this node by process group and memory class, seen from the kernel.</p>
<p><a href="/metrics">Metrics</a></p>
<p>version {version}, revision {revision}</p>
</body></html>
"""


class MetricsServer(ThreadingHTTPServer):
    """The daemon's metrics, a landing page at /, and 404 elsewhere."""

    daemon_threads = True
    block_on_close = False                  # a stuck client does not hold up the daemon's exit
    request_queue_size = socket.SOMAXCONN   # a burst of connections waits in the kernel, not refused

    def __init__(self, config, collector):
        self.tls = _tls_context(config.web) if config.web.tls_cert_file else None
        users = config.web.basic_auth_users
        self.credentials = Credentials(users) if users else None
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        for own in (ProcessCollector, PlatformCollector, GCCollector):   # the daemon's own CPU, memory, Python
            own(registry=registry)
        self.landing_page = LANDING_PAGE.format(**{k: html.escape(v) for k, v in collector.build.items()}).encode()
        self.address_family = socket.AF_INET6 if ":" in config.address else socket.AF_INET
        super().__init__((config.address, config.port), Handler.factory(registry))

    # socketserver calls these in this order: process_request in the accept
    # loop, the rest in the connection's own thread.

    def process_request(self, sock, address):
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(sock)
            return
        super().process_request(sock, address)

    def process_request_thread(self, sock, address):
        try:
            super().process_request_thread(sock, address)
        finally:
            self.slots.release()

    def finish_request(self, sock, address):
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        sock.settimeout(REQUEST_TIMEOUT_S)
        if self.tls:
            sock = self.tls.wrap_socket(sock, server_side=True)   # the handshake, bounded by the timeout
        try:
            self.RequestHandlerClass(sock, address, self, deadline)
        finally:
            self.shutdown_request(sock)    # the TLS socket: the plain one was handed over to it

    def handle_error(self, sock, address):
        # A client that times out, resets or fails its handshake is not news;
        # anything else is a fault of ours.
        if not isinstance(sys.exc_info()[1], OSError):
            log.exception("error serving %s", address[0])


class Handler(MetricsHandler):
    """One request on one connection (HTTP/1.0: the connection closes after
    the answer). Every path asks for the credentials, as exporter-toolkit does."""

    def __init__(self, sock, address, server, deadline):
        self.deadline = deadline
        super().__init__(sock, address, server)

    def setup(self):
        super().setup()
        self.rfile.close()
        self.rfile = io.BufferedReader(_UntilDeadline(self.connection, self.deadline))

    def do_GET(self):
        self.connection.settimeout(REQUEST_TIMEOUT_S)    # the answer has its own time to be read
        verdict = self.server.credentials.verdict(self.headers.get("Authorization")) \
            if self.server.credentials else 200
        path = urlsplit(self.path).path
        if verdict == 401:
            self._answer(401, b"Unauthorized\n", ("WWW-Authenticate", 'Basic realm="ramwatchd"'))
        elif verdict == 429:
            self._answer(429, b"Too many password checks at once; try again\n", ("Retry-After", "1"))
        elif path == "/metrics":
            super().do_GET()
        elif path == "/":
            self._answer(200, self.server.landing_page, ("Content-Type", "text/html; charset=utf-8"))
        else:
            self._answer(404, b"404 page not found\n")

    def _answer(self, status, body, *headers):
        self.send_response(status)
        for header in headers or (("Content-Type", "text/plain; charset=utf-8"),):
            self.send_header(*header)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _UntilDeadline(io.RawIOBase):
    """A connection's bytes, all of which must arrive before its deadline: a
    client that sends one byte every few seconds does not keep it open."""

    def __init__(self, sock, deadline):
        self.sock, self.deadline = sock, deadline

    def readable(self):
        return True

    def readinto(self, buffer):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


class Credentials:
    """Basic auth that a flood of guesses cannot turn against the scrape.

    bcrypt costs tens of milliseconds a check, by design. So a credential that
    passed is remembered (its SHA-256, one per user) and never checked again;
    checks run one at a time, so the other CPU stays free; at most
    BCRYPT_WAITING wait their turn and the next is answered 429 at once,
    holding no connection; and an unknown user is checked against a dummy
    hash of the users' cost, so it answers no faster than a wrong password."""

    def __init__(self, users):
        self.hashes = {user: hashed.encode() for user, hashed in users.items()}
        self.dummy = bcrypt.hashpw(os.urandom(16).hex().encode(), bcrypt.gensalt(rounds=_cost(self.hashes)))
        self.verified = {}                        # user -> SHA-256 of the password that passed
        self.turn = threading.Lock()
        self.queue = threading.BoundedSemaphore(BCRYPT_WAITING + 1)

    def verdict(self, header):
        """200, 401 or 429 for a request's Authorization header."""
        user, password = _basic_auth(header)
        if user is None or len(password) > BCRYPT_MAX_PASSWORD:
            return 401
        digest = hashlib.sha256(password).digest()
        if hmac.compare_digest(self.verified.get(user, b""), digest):
            return 200
        if not self.queue.acquire(blocking=False):
            return 429
        try:
            with self.turn:
                matched = _bcrypt_matches(password, self.hashes.get(user, self.dummy))
        finally:
            self.queue.release()
        if not matched or user not in self.hashes:
            return 401
        self.verified[user] = digest
        return 200


def _basic_auth(header):
    """(user, password bytes) from an Authorization header, or (None, None)."""
    if not header or not header.startswith("Basic "):
        return None, None
    try:
        user, colon, password = base64.b64decode(header[6:], validate=True).partition(b":")
        return (user.decode(), password) if colon else (None, None)
    except (ValueError, UnicodeDecodeError):
        return None, None


def _bcrypt_matches(password, hashed):
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:          # a hash bcrypt cannot read: no password matches it
        return False


def _cost(hashes):
    """The users' bcrypt cost ($2b$COST$...), the highest if they differ."""
    costs = [int(h.split(b"$")[2]) for h in hashes.values() if h.count(b"$") >= 3 and h.split(b"$")[2].isdigit()]
    return max(costs, default=10)


def _tls_context(web):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(web.tls_cert_file, web.tls_key_file)
    return context


def serve(daemon, config):
    """Start the metrics server in a thread; return the server (for shutdown)."""
    server = MetricsServer(config, DaemonCollector(daemon))
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
