"""`ramwatchd top`: the daemon's node-wide collection, run in a thread of its
own and read into plain frames for the live view (views/top.py).

It is the daemon itself, without the metrics server: kernel events say which
processes changed, only those are read again (at most once a refresh each,
within the config's smaps budget), and the groups and the node tier are the
exporter's. A screen that refreshes every two seconds copies figures; it reads
no process that did not change.
"""
import argparse
import math
import signal
import sys
import threading
import time
import traceback

from ...ledger.classes import ANON, ANON_HEAP, CLASSES, CUDA_PINNED, FILE_WEIGHTS, SHM_ANON, SHM_POSIX, SHM_SYSV
from ...views import top

# Memory the kernel cannot give back by dropping caches, as the node headroom
# alert counts it (ramwatchd:unreclaimable_bytes in deploy/prometheus/alerts.yaml).
UNRECLAIMABLE = (CUDA_PINNED, SHM_POSIX, SHM_SYSV, SHM_ANON, ANON, ANON_HEAP)
REFRESH_S = 2.0
REFRESH_RANGE_S = (0.5, 3600.0)
SETTLE_BASE_S = 10.0          # --once waits this long, plus the smaps budget's time for every process
SETTLE_POLL_S = 0.1


def add_arguments(parser):
    """The options of `ramwatchd top`."""
    parser.add_argument("--config", metavar="FILE",
                        help="the daemon's YAML config, for its groups, weights patterns and limits "
                             "(default: built-in, a group per command name)")
    parser.add_argument("--interval", type=_interval, default=REFRESH_S, metavar="S",
                        help=f"refresh every S seconds; a process the kernel says changed is read "
                             f"again at most this often (default {REFRESH_S:g})")
    parser.add_argument("--sort", type=_sort, default="pss", metavar="COLUMN",
                        help="the column to sort by, largest first: a column title (rss, pss, anon, shm, "
                             "pinreq, wcache...) or a class name (default pss; < and > change it)")
    parser.add_argument("--groups", action="store_true",
                        help="show the config's groups instead of processes (g toggles)")
    parser.add_argument("--once", action="store_true",
                        help="print one frame as text once every process has been read, and exit "
                             "(what happens anyway when stdin or stdout is not a terminal)")


def _interval(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    low, high = REFRESH_RANGE_S
    if not (math.isfinite(value) and low <= value <= high):
        raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g} seconds, not {text!r}")
    return value


def _sort(text):
    names = top.sort_keys(CLASSES)
    if text.lower() not in names:
        raise argparse.ArgumentTypeError(f"no column {text!r}; name one by its title "
                                         f"({', '.join(top.titles(CLASSES))}) or its memory class")
    return names[text.lower()]


class _Stopped(Exception):
    """SIGTERM or SIGHUP: end as q does, giving the terminal back."""


def _stop(signum, _frame):
    raise _Stopped(signum)


def run(args):
    """`ramwatchd top`: the exit status."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop)
    try:
        return _run(args)
    except KeyboardInterrupt:
        return 130
    except _Stopped as stopped:
        return 128 + stopped.args[0]


def _run(args):
    # The collection loads with the command, not with every command's parser.
    from ...kernel.probes import ProbeError
    from . import config as configuration
    from .daemon import Daemon
    interactive = not args.once and sys.stdin.isatty() and sys.stdout.isatty()
    try:
        config = configuration.load(args.config) if args.config else configuration.Config()
        if interactive:
            top.check_terminal()    # before the seconds of compiling
        print("ramwatchd: compiling and attaching the BPF programs...", file=sys.stderr, flush=True)
        live = Live(Daemon(_fresh(config, args.interval)))
    except (configuration.ConfigError, top.TerminalError, ProbeError) as err:
        print(f"ramwatchd: {err}", file=sys.stderr)
        return 2 if isinstance(err, configuration.ConfigError) else 1
    view = top.View(groups=args.groups, sort=args.sort)
    try:
        if interactive:
            top.show(live.frame, view, args.interval)
        else:
            live.settle()
            frame = live.frame()
            if frame is not None:
                sys.stdout.write(top.plain(frame, view))
    finally:
        live.close()
    if live.failure is not None:
        print(f"ramwatchd: the collection stopped:\n{live.failure}", file=sys.stderr, end="")
        return 1
    return 0


def _fresh(config, interval):
    """A person watching wants figures as fresh as the screen: a process the
    kernel says changed is read again once a refresh, the node's figures too."""
    config.collection.smaps_min_interval_s = interval
    config.collection.node_interval_s = interval
    return config


class Live:
    """The daemon's collection in a thread, read as frames under its lock."""

    def __init__(self, daemon):
        self.daemon = daemon
        self.failure = None           # the traceback that stopped the collection
        self._thread = threading.Thread(target=self._collect, name="collection", daemon=True)
        self._thread.start()

    def _collect(self):
        try:
            self.daemon.run()
        except Exception:
            self.failure = traceback.format_exc()

    def close(self):
        self.daemon.stop()
        self._thread.join()

    def settle(self):
        """Wait until every process there at the start has been read (or has
        gone), at most as long as the smaps budget needs for them all (the
        frame then says how many are left); then read the node's figures once
        more, for the weights files those reads found."""
        d = self.daemon
        while self._thread.is_alive() and "discovery" not in d.durations:
            self._thread.join(SETTLE_POLL_S)
        with d.lock:
            first = [p for p in d.tracker.alive.values() if p.watched]
        deadline = time.monotonic() + SETTLE_BASE_S + len(first) / d.config.collection.smaps_per_second
        while self._thread.is_alive() and time.monotonic() < deadline:
            with d.lock:
                if all(p.latest is not None or not p.alive or p.vanished_at is not None for p in first):
                    break
            self._thread.join(SETTLE_POLL_S)
        with d.lock:
            d.node.read(d.groups, d.tracker)

    def frame(self):
        """The newest figures as a top.Frame; None once the collection has stopped."""
        if not self._thread.is_alive():
            return None
        d = self.daemon
        with d.lock:
            cache = dict(d.node.page_cache)
            processes, unread = [], 0
            for group in d.groups.live():
                for p in group.members:
                    if p.latest is None:
                        unread += 1
                    else:
                        processes.append(_process_row(p, group.name, cache))
            resident, proportional, counts, requested, mapped = d.aggregate()
            groups = [_group_row(g, cache, resident, proportional, counts, requested, mapped)
                      for g in d.groups.live()]
            node = top.Node(total=d.node.meminfo.get("MemTotal", 0),
                            available=d.node.meminfo.get("MemAvailable", 0),
                            unreclaimable=sum(v for (_, c), v in proportional.items() if c in UNRECLAIMABLE),
                            shm=sum(size for _, size, _ in d.node.shm), shm_orphaned=d.node.shm_orphaned,
                            weights_cache=sum(cache.values()))
            return top.Frame(CLASSES, processes, groups, node, unread=unread,
                             smaps_reads=d.smaps_reads, events_lost=d.probes.stats()["events_lost"],
                             taken=time.time())


def _process_row(p, group, cache):
    look = p.latest
    return top.Row(name=p.comm, group=group, command=p.cmdline, pid=p.pid, rss=look.total,
                   pss=sum(look.pss.values()), classes=dict(look.classes),
                   pinned_requested=sum(r.requested for r, _, _, _ in look.pinned),
                   pinned_mapped=sum(mapped for _, mapped, _, _ in look.pinned),
                   weights_cache=sum(cache.get(name, 0) for name in _weights_files(p)))


def _group_row(group, cache, resident, proportional, counts, requested, mapped):
    """A group's row from the daemon's own sums (those the exporter serves); a
    weights file mapped by several of its processes counts once."""
    name = group.name
    classes = {c: resident[(name, c)] for c in CLASSES}
    files = set().union(*(_weights_files(p) for p in group.members))
    return top.Row(name=name, group=name, processes=counts[name], rss=sum(classes.values()),
                   pss=sum(proportional[(name, c)] for c in CLASSES), classes=classes,
                   pinned_requested=sum(v for (g, _), v in requested.items() if g == name),
                   pinned_mapped=sum(v for (g, _), v in mapped.items() if g == name),
                   weights_cache=sum(cache.get(f, 0) for f in files))


def _weights_files(p):
    return {o.name for o in (p.latest.objects.values() if p.latest else ()) if o.cls == FILE_WEIGHTS}
