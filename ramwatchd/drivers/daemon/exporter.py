"""Stage 4 (the daemon's view): Prometheus metrics, built fresh at every scrape
from the daemon's aggregates, served over HTTP with optional TLS and basic auth
(configured as in Prometheus exporters' web config)."""
import base64
import hashlib
import logging
import ssl
import threading
from http.server import ThreadingHTTPServer

import bcrypt

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import MetricsHandler

from ... import __version__

log = logging.getLogger("ramwatchd")


class DaemonCollector:
    """Turns the daemon's state into metric families; holds the daemon's lock
    only while it copies numbers, never while /proc is read."""

    def __init__(self, daemon):
        self.daemon = daemon

    def collect(self):
        d = self.daemon
        with d.lock:
            resident, proportional, processes, pinned_requested, pinned_mapped = d.aggregate()
            mappings = d.top_mappings()
            live = d.groups.live()
            peaks = {g.name: g.peak for g in live}
            faults = d.groups.faults()
            ooms = {g.name: g.oom_kills for g in d.groups.groups.values()}
            cut = dict(d.node.cut, groups=d.groups.cut)
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
        yield InfoMetricFamily("ramwatchd_build", "ramwatchd's version.", value={"version": __version__})
        yield _gauge("ramwatchd_collection_duration_seconds", "How long the last run of each "
                     "collection tier took.", ["tier"], {(t,): v for t, v in durations.items()})
        yield _counter("ramwatchd_events_lost", "Kernel events dropped because the ring buffer was full.",
                       [], {(): stats["events_lost"]})
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


# ---- serving ------------------------------------------------------------------

class _AuthCache:
    """bcrypt costs ~50 ms a check by design: remember credentials that passed."""

    def __init__(self, users):
        self.users = users
        self.passed = set()
        self.lock = threading.Lock()

    def check(self, header):
        if not header or not header.startswith("Basic "):
            return False
        digest = hashlib.sha256(header.encode()).hexdigest()
        with self.lock:
            if digest in self.passed:
                return True
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
        if hashed is None or not bcrypt.checkpw(password.encode(), hashed.encode()):
            return False
        with self.lock:
            self.passed.add(digest)
        return True


def serve(daemon, config):
    """Start the metrics server in a thread; return the server (for shutdown)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon))
    base = MetricsHandler.factory(registry)
    auth = _AuthCache(config.web.basic_auth_users) if config.web.basic_auth_users else None

    class Handler(base):
        def do_GET(self):
            if auth and not auth.check(self.headers.get("Authorization")):
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="ramwatchd"')
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, *args):
            pass   # a scrape every 15 s is not news

    server = ThreadingHTTPServer((config.address, config.port), Handler)
    server.daemon_threads = True
    if config.web.tls_cert_file:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(config.web.tls_cert_file, config.web.tls_key_file)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
