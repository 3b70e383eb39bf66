"""The process tracker (ledger/tracker.py) against a fake /proc (fakeproc.py),
a fake kernel and a fake clock: no BPF, no real process.

What it must hold: a process that vanishes, is denied or is a zombie at any
read is a normal outcome reported as news, never an exception; a process is
(pid, start time), and a reused pid inherits nothing; looks keep their
interval; an exec starts the process over; a rename is held back until it is
clear no exec made it.
"""
import errno
import mmap
import os
import shutil
import signal
import tempfile
import time
from types import SimpleNamespace

import pytest

import ramwatchd.ledger.look as look_mod
import ramwatchd.ledger.tracker as tracker_mod
from ramwatchd.kernel.events import CudaCall, CudaCallKind, Exec, Exit, Fork, Madvise, Mmap, Rename, RssStep
from ramwatchd.ledger import procfs
from ramwatchd.ledger.process import (DriverProbed, Ended, Execed, Looked, PinnedCall, Renamed, SpikeSeen,
                                      Started)
from ramwatchd.ledger.tracker import RENAME_HOLD_NS, VANISHED_GRACE_S, LookPolicy, Tracker

from fakeproc import (LIBCUDA, FakeClock, FakeKernel, FakeProc, Mapping, MiB, boot_ns_of,
                      shell_mappings)

PID, START = 4121, 316_152
NEW_START = START + 9_000        # the next owner of PID, 90 s later
PARENT, PARENT_START = 1000, START - 500
PINNED_AT = 0x7f4000000000       # where the CUDA driver's pinned buffer is mapped
WEIGHTS = Mapping(0x7f5000000000, 256 * MiB, "/models/llama/model-00001.safetensors", "r--s", 96 * MiB, 5005)



# ---- the world: fake /proc, kernel, clock, and the tracker over them ---------------

class World:
    def __init__(self, root, monkeypatch, **tracker_options):
        self.proc = FakeProc(root)
        self.kernel = FakeKernel()
        self.clock = FakeClock()
        self.fake = None                 # the FakeProcess at PID
        self.signals = []                # (pid, sig) that signal() really sent
        self.pidfds = []                 # the pidfds it opened (stand-ins: /dev/null)
        # RENAME_HOLD_NS is measured with time.monotonic_ns() against the
        # events' timestamps: put that on the fake clock too, so the hold
        # passes when the test says and not when the machine is slow.
        fake_time = SimpleNamespace(monotonic=time.monotonic, monotonic_ns=self.clock.monotonic_ns,
                                    sleep=time.sleep)
        monkeypatch.setattr(tracker_mod, "time", fake_time)
        monkeypatch.setattr(look_mod, "time", fake_time)   # when smaps was read: on the kernel's clock
        # signal() through pidfds: record instead of signalling anything real.
        pidfds = {}

        def pidfd_open(pid, flags=0):
            fd = os.open(os.devnull, os.O_RDONLY)
            pidfds[fd] = pid
            self.pidfds.append(fd)
            return fd

        def pidfd_send_signal(fd, sig, siginfo=None, flags=0):
            self.signals.append((pidfds[fd], sig))

        monkeypatch.setattr(os, "pidfd_open", pidfd_open, raising=False)
        monkeypatch.setattr(signal, "pidfd_send_signal", pidfd_send_signal, raising=False)
        self.tracker = Tracker(self.kernel, self.clock, proc_root=self.proc.root, **tracker_options)

    def at(self, t):
        self.clock.t = t
        return t

    def ev(self, cls, pid=PID, t=None, comm="python3", **fields):
        return cls(ts_ns=self.clock.ns(t), pid=pid, tid=pid, comm=comm, **fields)

    # the kernel's events, stamped on the fake clock
    def rss_step(self, pid=PID, t=None):
        return self.ev(RssStep, pid, t, rss=(0, 0, 0, 0), known=0)

    def exec_(self, pid=PID, filename="/usr/bin/bash", t=None):
        return self.ev(Exec, pid, t, comm=os.path.basename(filename), old_pid=pid, filename=filename)

    def exit_(self, pid=PID, t=None):
        return self.ev(Exit, pid, t, peak=0, peak_ns=0, peak_rss=(0, 0, 0, 0))

    def fork(self, child=PID, start=START, parent=PARENT, t=None):
        return self.ev(Fork, parent, t, child=child, child_boot_ns=boot_ns_of(start))

    def rename(self, newcomm, pid=PID, t=None):
        return self.ev(Rename, pid, t, renamed=pid, newcomm=newcomm)

    def mmap_code(self, pid=PID, t=None):
        """A library's code mapped: the tracker looks for the CUDA driver."""
        return self.ev(Mmap, pid, t, ret=LIBCUDA.start, addr=0, length=LIBCUDA.size,
                       prot=mmap.PROT_READ | mmap.PROT_EXEC, flags=mmap.MAP_PRIVATE, fd=5)

    def mmap_weights(self, pid=PID, t=None):
        """A weights file mapped whole: a large range, named and measured."""
        return self.ev(Mmap, pid, t, ret=WEIGHTS.start, addr=0, length=WEIGHTS.size, prot=mmap.PROT_READ,
                       flags=mmap.MAP_SHARED, fd=7)

    def dontneed(self, size, pid=PID, t=None):
        """madvise(MADV_DONTNEED) of size bytes of the anonymous region."""
        return self.ev(Madvise, pid, t, ret=0, addr=0x7f0000000000, length=size, advice=mmap.MADV_DONTNEED)

    def cuda_alloc(self, pid=PID, addr=PINNED_AT, size=64 * MiB, t=None):
        return self.ev(CudaCall, pid, t, call=CudaCallKind.ALLOC, symbol="cuMemHostAlloc", addr=addr,
                       size=size, flags=0, caller=LIBCUDA.start + 0x1000, result=0)

    # common starts
    def attached(self, t=0.0, **fake):
        """The process at PID, attached at t (its first look)."""
        self.fake = self.proc.spawn(PID, START, **fake)
        p, news = self.tracker.attach(PID, self.at(t))
        assert [type(n) for n in news] == [Looked]
        return p

    def forked(self, t=0.0, start=START, **fake):
        """The process at PID, tracked from its Fork event (no /proc read)."""
        self.proc.spawn(PARENT, PARENT_START)
        self.tracker.attach(PARENT, self.at(t))
        self.fake = self.proc.spawn(PID, START, ppid=PARENT, **fake)
        news = self.tracker.on_events([self.fork(PID, start, t=t)])
        (started,) = news
        assert type(started) is Started
        return started.process


@pytest.fixture
def make_world(tmp_path, monkeypatch):
    """make_world(**tracker options) -> a new World in its own folder. The
    folders are on tmpfs where there is one: the fake /proc is rewritten
    often, and a loaded disk would make the tests slow (never wrong)."""
    made = []
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    root = tempfile.mkdtemp(prefix="ramwatchd-fakeproc-", dir=shm) if shm else str(tmp_path)

    def make(**options):
        w = World(os.path.join(root, f"proc{len(made)}"), monkeypatch, **options)
        made.append(w)
        return w
    yield make
    for w in made:
        w.tracker.close()
    if shm:
        shutil.rmtree(root, ignore_errors=True)


class Reads:
    """Counts the reads of PID's /proc (ProcDir.read, and the ProcDir methods
    that reach /proc without it: exe, map_file, resident) and can run `before`
    just before read number `at`."""

    def __init__(self, monkeypatch):
        self.watch(None)
        real_read = procfs.ProcDir.read

        def read(handle, name):
            self._tick(handle, name)
            return real_read(handle, name)
        monkeypatch.setattr(procfs.ProcDir, "read", read)
        for name in ("exe", "map_file", "resident"):
            real = getattr(procfs.ProcDir, name, None)
            if real is not None:
                monkeypatch.setattr(procfs.ProcDir, name, self._counted(name, real))

    def _counted(self, name, real):
        def method(handle, *args):
            self._tick(handle, name)
            return real(handle, *args)
        return method

    def watch(self, pid, at=None, before=None):
        self.pid, self.at, self.before, self.names = pid, at, before, []

    def _tick(self, handle, name):
        if handle.pid != self.pid:
            return
        if len(self.names) == self.at:
            self.before()
        self.names.append(name)


@pytest.fixture
def reads(monkeypatch):
    return Reads(monkeypatch)


def deny(monkeypatch, fake, name, err=errno.EACCES):
    """Reading `name` in fake's /proc folder fails with err (EACCES: a hardened
    /proc, another user namespace); every other open is untouched."""
    real_open = os.open

    def guarded(path, flags, *args, dir_fd=None, **kw):
        if path == name and dir_fd is not None and os.readlink(f"/proc/self/fd/{dir_fd}") == fake.dir:
            raise OSError(err, os.strerror(err), path)
        return real_open(path, flags, *args, dir_fd=dir_fd, **kw)
    monkeypatch.setattr(os, "open", guarded)


def of(news, kind, p=None):
    return [n for n in news if type(n) is kind and (p is None or getattr(n, "process", None) is p)]


def settle(w, t):
    """Run verify once now and once after VANISHED_GRACE_S: what a driver's
    housekeeping does. Returns the news."""
    return w.tracker.verify(w.at(t)) + w.tracker.verify(w.at(t + VANISHED_GRACE_S + 0.01))


# ---- 1. every vanish point ----------------------------------------------------------
#
# Each scenario: (tracker options, setup(w) -> process or None, act(w, p) -> news,
# the news the act gives when nothing vanishes). The matrix runs the act once
# to count its reads of PID's /proc, then again from scratch for each read k,
# making the process vanish (exited and reaped) just before read k.

def _setup_spawned(w):
    w.fake = w.proc.spawn(PID, START)


def _setup_moved(w):
    p = w.attached()
    w.fake.set_anon(300 * MiB)       # something for the look to report
    w.at(0.5)
    return p


def _setup_forked(w):
    p = w.forked()
    w.at(0.5)
    return p


def _setup_new_library(w):
    p = _setup_moved(w)
    w.fake.map(LIBCUDA)
    return p


def _setup_weights(w):
    p = _setup_moved(w)
    w.fake.map(WEIGHTS)
    return p


def _setup_renamed(w):
    p = _setup_moved(w)
    w.fake.rename("VLLM::Worker")
    return p


def _setup_execed(w):
    p = _setup_moved(w)
    w.fake.exec()
    return p


def _setup_execed_seen(w):
    p = _setup_execed(w)
    assert of(w.tracker.on_events([w.exec_()]), Execed)
    return p


def _attach(w, p):
    return w.tracker.attach(PID, w.clock.t)[1]


def _signal(w, p):
    w.tracker.signal(p, signal.SIGTERM)
    return []


def _discover(w, p):
    w.proc.spawn(4200, START + 7)        # someone else to find meanwhile
    return w.tracker.discover(w.clock.t)


SCENARIOS = {
    "attach": ({}, _setup_spawned, _attach, Looked),
    "adopt": ({}, _setup_spawned, lambda w, p: w.tracker.adopt(PID, w.clock.t)[1], Started),
    "look": ({}, _setup_moved, lambda w, p: w.tracker.look(p, w.clock.t, min_change=0), Looked),
    "look forked": ({}, _setup_forked, lambda w, p: w.tracker.look(p, w.clock.t, min_change=0), Looked),
    "RssStep": ({}, _setup_moved, lambda w, p: w.tracker.on_events([w.rss_step()]), None),
    "RssStep forked": ({}, _setup_forked, lambda w, p: w.tracker.on_events([w.rss_step()]), None),
    "RssStep unknown pid": ({"adopt_unknown": True}, _setup_spawned,
                            lambda w, p: w.tracker.on_events([w.rss_step()]), Started),
    "Mmap": ({}, _setup_new_library, lambda w, p: w.tracker.on_events([w.mmap_code()]), DriverProbed),
    "Mmap large": ({}, _setup_weights, lambda w, p: w.tracker.on_events([w.mmap_weights()]), None),
    "Exec then look": ({}, _setup_execed,
                       lambda w, p: w.tracker.on_events([w.exec_()]) + w.tracker.look(p, w.clock.t, 0),
                       Looked),
    "Exec unknown pid": ({"adopt_unknown": True}, _setup_spawned,
                         lambda w, p: w.tracker.on_events([w.exec_()]), Execed),
    "Rename": ({}, _setup_renamed, lambda w, p: _renamed_after_its_hold(w), Renamed),
    "CudaCall": ({}, _setup_moved, lambda w, p: w.tracker.on_events([w.cuda_alloc()]), PinnedCall),
    "verify": ({}, _setup_renamed, lambda w, p: w.tracker.verify(w.clock.t), Renamed),
    "verify forked": ({}, _setup_forked, lambda w, p: w.tracker.verify(w.clock.t), None),
    "verify after Exec": ({}, _setup_execed_seen, lambda w, p: w.tracker.verify(w.clock.t), None),
    "discover": ({"adopt_unknown": True}, _setup_renamed, _discover, Renamed),
    "read_names": ({}, _setup_execed_seen, lambda w, p: w.tracker.read_names(p) or [], None),
    "signal": ({}, _setup_moved, _signal, None),
    "signal forked": ({}, _setup_forked, _signal, None),
}


def _renamed_after_its_hold(w):
    """A Rename arrives; once its hold has passed with no Exec, it is news."""
    news = w.tracker.on_events([w.rename("VLLM::Worker", t=w.clock.t)])
    w.at(w.clock.t + 0.1)
    return news + w.tracker.on_events([])


def _run(make_world, reads, name, details, at=None, then="vanish"):
    """Scenario `name` in a new world; with `at`, PID does `then` (vanish:
    exits and is reaped; zombie: exits, not reaped) just before read `at`."""
    options, setup, act, _ = SCENARIOS[name]
    w = make_world(details=details, **options)
    p = setup(w)
    reads.watch(PID, at, lambda: getattr(w.fake, then)())
    raised = None
    try:
        news = act(w, p)
    except procfs.NoSuchProcess as err:
        raised, news = err, []
    reads.pid = None                 # stop counting; reads.names stays
    return w, news, raised


@pytest.mark.parametrize("details", [False, True], ids=["plain", "details"])
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_a_process_that_vanishes_before_any_read_is_ended(make_world, reads, request, name, details):
    """For each entry point that reads /proc, and each of its reads: the process
    exits and is reaped just before that read. Nothing escapes; the process is
    ended (now, or once verify() finds it gone for VANISHED_GRACE_S); nothing
    read about it is wrong; a gone process is never untraced."""
    expected = SCENARIOS[name][3]
    w, news, raised = _run(make_world, reads, name, details)
    n_reads = len(reads.names)
    assert raised is None and n_reads > 0, (raised, reads.names)
    if expected is not None:
        assert of(news, expected), news
    assert not of(news, Ended)
    if name.startswith("signal"):
        assert w.signals == [(PID, signal.SIGTERM)]

    for k in range(n_reads):
        w, news, raised = _run(make_world, reads, name, details, at=k)
        what = f"{name}: vanished before read {k} ({reads.names[k] if k < len(reads.names) else '?'})"
        p = w.tracker.processes.get((PID, START))
        assert not w.signals, what
        if p is None:
            # Never tracked: adopt found it gone (or attach, which says so by
            # raising NoSuchProcess, as its docstring promises).
            assert raised is None or name == "attach", what
            assert PID not in w.tracker.alive and PID not in w.tracker.ignored, what
            assert not w.kernel.called("trace", PID) and not of(news, Started), what
            continue
        assert raised is None, what
        later = settle(w, w.clock.t)
        ended = of(news + later, Ended, p)
        assert len(ended) == 1 and not p.alive and p.ended_how == "gone", what
        assert PID not in w.tracker.alive and not w.kernel.called("untrace", PID), what
        # What was reported was read before it went: the VmRSS its status really showed.
        for _, total, _ in p.rss.points:
            assert total in w.fake.rss_values, what
        for n in of(news + later, Looked, p):
            assert n.snapshot.vm_rss in w.fake.rss_values and n.snapshot.reconciled, what
        assert p.cmdline, what       # a name read from a gone process is not ""


@pytest.mark.parametrize("name", ["look", "look forked", "RssStep", "RssStep forked", "Mmap", "Mmap large",
                                  "Exec then look", "CudaCall", "read_names", "signal"])
def test_a_process_that_becomes_a_zombie_before_any_read_waits_for_its_exit(make_world, reads, name):
    """The same, but the process exits and its parent has not reaped it yet:
    nothing read from the zombie passes for its memory (no RSS of 0, no
    look), it is not ended as denied or unreadable, and its exit event,
    which the kernel sends at the exit, ends it."""
    _run(make_world, reads, name, details=True)
    for k in range(len(reads.names)):
        w, news, raised = _run(make_world, reads, name, details=True, at=k, then="zombie")
        what = f"{name}: a zombie before read {k} ({reads.names[k] if k < len(reads.names) else '?'})"
        p = w.tracker.processes[(PID, START)]
        # (A zombie keeps its pid until reaped: signalling it is harmless.)
        assert raised is None and not of(news, Ended) and p.alive, what
        for _, total, _ in p.rss.points:
            assert total in w.fake.rss_values, what
        assert not [n for n in of(news, Looked) if n.snapshot.vm_rss not in w.fake.rss_values], what
        assert of(w.tracker.on_events([w.exit_(t=w.clock.t)]), Ended) == [Ended(p)], what
        assert p.ended_how == "exited" and not w.kernel.called("untrace") and p.cmdline, what


def test_an_exit_event_after_a_vanish_ends_it_once(make_world):
    w = make_world()
    p = w.attached()
    w.fake.vanish()
    assert w.tracker.look(p, w.at(0.2)) == []
    assert p.vanished_at == 0.2 and p.alive and p not in w.tracker.due(w.at(5.0))
    (ended,) = w.tracker.on_events([w.exit_(t=0.3)])
    assert ended == Ended(p) and p.ended_how == "exited" and p.exited_at == pytest.approx(0.3)
    assert settle(w, 5.0) == [] and not w.kernel.called("untrace")


def test_a_process_missing_from_the_listing_is_ended_by_discover(make_world):
    w = make_world(adopt_unknown=True)
    p = w.attached()
    w.fake.vanish()
    assert w.tracker.discover(w.at(1.0)) == []          # its exit event may still come
    assert p.vanished_at == 1.0 and p.alive
    assert w.tracker.discover(w.at(1.0 + VANISHED_GRACE_S)) == [Ended(p)]
    assert p.ended_how == "gone" and not w.kernel.called("untrace")


def _open_fds():
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("k", [0, 1, 2])
def test_attach_of_a_process_gone_midway_leaks_no_descriptor(make_world, reads, k):
    """A process gone between attach's first reads raises NoSuchProcess, and
    the directory fd attach opened is closed: a capture that loses children
    while it attaches a tree leaks nothing."""
    w = make_world()
    w.fake = w.proc.spawn(PID, START)
    before = _open_fds()
    reads.watch(PID, k, w.fake.vanish)
    with pytest.raises(procfs.NoSuchProcess):
        w.tracker.attach(PID, w.at(0.0))
    assert _open_fds() == before, f"vanished before read {k} ({reads.names[k]})"
    assert PID not in w.tracker.alive and not w.kernel.called("trace")


def test_verify_after_an_exec_survives_a_process_gone_before_its_exe_is_read(make_world, reads):
    """With details (the daemon), verify() reads an exec'd program's names,
    exe last; a process gone just before that read is an outcome, not an
    exception out of verify()."""
    w = make_world(details=True)
    _setup_execed_seen(w)
    reads.watch(PID, 3, w.fake.vanish)       # stat, cmdline, cgroup, then exe
    w.tracker.verify(w.at(0.6))
    assert reads.names == ["stat", "cmdline", "cgroup", "exe"]


# ---- 2. identity is (pid, start time) -------------------------------------------------

def test_a_reused_pid_is_a_new_process_with_nothing_of_the_old(make_world):
    w = make_world(adopt_unknown=True, details=True)
    old = w.attached(cgroup="/system.slice/vllm.service")
    w.fake.map(Mapping(PINNED_AT, 64 * MiB, "/dev/zero (deleted)", "rw-s", 64 * MiB, 77))
    w.fake.set_anon(400 * MiB)
    w.tracker.on_events([w.cuda_alloc(t=w.at(0.2)), w.rss_step(t=0.2)])
    w.fake.rename("VLLM::Worker")
    w.tracker.on_events([w.rename("VLLM::Worker", t=0.2)])
    w.at(0.4)
    assert of(w.tracker.on_events([]), Renamed)
    assert old.pinned.ranges and old.rss.points and old.history and old.renames

    w.fake.vanish()
    new_fake = w.proc.spawn(PID, NEW_START, comm="nginx", argv=("nginx", "-g", "daemon off;"),
                            mappings=shell_mappings(), exe="/usr/sbin/nginx",
                            cgroup="/system.slice/nginx.service")
    # The old one's handle reads the old folder: gone. Its pid is not adopted
    # until the old one is ended.
    assert w.tracker.discover(w.at(1.0)) == [] and old.vanished_at == 1.0
    news = w.tracker.discover(w.at(1.0 + VANISHED_GRACE_S))
    assert [type(n) for n in news] == [Ended, Started] and news[0].process is old
    new = news[1].process
    assert new is not old and new.key == (PID, NEW_START) and w.tracker.alive[PID] is new
    assert set(w.tracker.processes) == {(PID, START), (PID, NEW_START)}
    assert (new.comm, new.cmdline, new.exe, new.cgroup) == ("nginx", "nginx -g daemon off;", "/usr/sbin/nginx",
                                                          "/system.slice/nginx.service")
    assert new.rss.points == [] and new.rss.peak is None and new.history == [] and new.looks == 0
    assert new.pinned.ranges == {} and new.renames == [] and new.execs == []
    assert new.latest is None and new.baseline is None and new.largest is None
    (looked,) = w.tracker.look(new, w.at(2.5), min_change=0)
    assert looked.changes == [] and looked.snapshot.vm_rss == new_fake.vm_rss
    assert looked.snapshot.classes["cuda_pinned"] == 0 and looked.snapshot.pinned == []
    assert old.ended_how == "gone" and not w.kernel.called("untrace")


def test_a_fork_onto_a_tracked_pid_ends_the_old_process_without_untracing(make_world):
    """The old process's exit event was lost (the ring buffer was full): the
    kernel traces the new child now, so the old one ends as gone, not untraced."""
    w = make_world(details=True)
    w.proc.spawn(PARENT, PARENT_START, comm="launcher", argv=("launcher",), exe="/usr/bin/launcher",
                 cgroup="/system.slice/launcher.service")
    w.tracker.attach(PARENT, w.at(0.0))
    old = w.attached(comm="python3", cgroup="/system.slice/vllm.service")
    w.tracker.on_events([w.cuda_alloc(t=w.at(0.1)), w.rss_step(t=0.1)])
    assert old.pinned.ranges and old.rss.points and old.exe and old.cgroup
    w.fake.vanish()
    new_fake = w.proc.spawn(PID, NEW_START, ppid=PARENT, comm="launcher", argv=("launcher",),
                            exe="/usr/bin/launcher", cgroup="/system.slice/launcher.service")
    news = w.tracker.on_events([w.fork(PID, NEW_START, t=w.at(0.5))])
    assert [type(n) for n in news] == [Ended, Started] and news[0].process is old
    assert old.ended_how == "gone" and old.pinned.ranges == {}
    new = news[1].process
    assert new.key == (PID, NEW_START) and (new.comm, new.cmdline) == ("launcher", "launcher")
    assert new.rss.points == [] and new.pinned.ranges == {} and new.history == [] and new.renames == []
    assert new.exe != old.exe and new.cgroup != old.cgroup
    assert not w.kernel.called("untrace")
    (looked,) = w.tracker.look(new, w.at(1.0))
    assert looked.snapshot.vm_rss == new_fake.vm_rss


def test_a_forked_child_starts_as_a_copy_of_its_parent_exe_and_cgroup_too(make_world):
    """A forked child inherits its parent's comm, cmdline, exe and cgroup,
    which the daemon groups by: a forked worker joins a group configured by
    exe or cgroup at once, and no later read reports a false rename."""
    w = make_world(details=True, adopt_unknown=True)
    w.proc.spawn(PARENT, PARENT_START)
    parent, _ = w.tracker.adopt(PARENT, w.at(0.0))
    assert (parent.exe, parent.cgroup) == ("/usr/bin/python3.11", "/system.slice/vllm.service")
    w.fake = w.proc.spawn(PID, START, ppid=PARENT)
    (started,) = w.tracker.on_events([w.fork(PID, START, t=w.at(0.1))])
    child = started.process
    assert child.parent is parent and (child.comm, child.cmdline) == (parent.comm, parent.cmdline)
    news = w.tracker.discover(w.at(5.0))
    assert (child.exe, child.cgroup) == (parent.exe, parent.cgroup)
    assert not of(news, Renamed, child)


@pytest.mark.parametrize("off_by", [-1, 1])
def test_the_start_of_a_forked_child_may_differ_by_one_tick(make_world, off_by):
    w = make_world()
    p = w.forked(start=START + off_by)
    (looked,) = w.tracker.look(p, w.at(0.5))
    assert looked.snapshot.vm_rss == w.fake.vm_rss and p.vanished_at is None


@pytest.mark.parametrize("off_by", [-2, 2, 9_000])
def test_a_forked_child_whose_proc_entry_has_another_start_is_gone(make_world, reads, off_by):
    """The pid in /proc is another process already: the child is gone, and
    nothing of the other process is read into it."""
    w = make_world()
    p = w.forked(start=START + off_by, comm="sshd", argv=("sshd: root",))
    assert (p.comm, p.cmdline) == ("python3", "python3 serve.py")     # its parent's, at fork
    reads.watch(PID)
    news = w.tracker.on_events([w.rss_step(t=w.at(0.5))]) + w.tracker.look(p, w.at(0.6))
    news += w.tracker.on_events([w.cuda_alloc(t=0.7)]) + settle(w, 0.8)
    assert w.tracker.signal(p, signal.SIGTERM) is False and w.signals == []
    assert reads.names == ["stat"]          # the start time, once; then it is known gone
    assert of(news, Ended, p) == [Ended(p)] and p.ended_how == "gone"
    assert not of(news, Looked) and p.rss.points == [] and (p.comm, p.cmdline) == ("python3", "python3 serve.py")
    (caller,) = [n.caller for n in of(news, PinnedCall)]
    assert caller == "?"                    # not a library of the other process


def test_signal_reaches_only_the_process_itself(make_world):
    w = make_world()
    p = w.attached()
    assert w.tracker.signal(p, signal.SIGTERM) is True and w.signals == [(PID, signal.SIGTERM)]
    # Its pid given to a newer process while p's handle is open: not signalled.
    w.fake.vanish()
    w.proc.spawn(PID, NEW_START)
    assert w.tracker.signal(p, signal.SIGKILL) is False
    # A forked child never read, whose pid is another's by now: not signalled.
    w2 = make_world()
    child = w2.forked()
    w2.proc.spawn(PID, NEW_START)
    assert w2.tracker.signal(child, signal.SIGKILL) is False
    # An ended process: not even a pidfd.
    w2.tracker.on_events([w2.exit_(t=1.0)])
    assert w2.tracker.signal(child, signal.SIGKILL) is False
    assert w.signals == [(PID, signal.SIGTERM)] and w2.signals == []


def test_signal_closes_its_pidfd_whatever_it_finds(make_world):
    w = make_world()
    p = w.attached()
    for gone in (False, True):
        if gone:
            w.fake.vanish()
        assert w.tracker.signal(p, signal.SIGTERM) is not gone
        with pytest.raises(OSError):
            os.fstat(w.pidfds[-1])
    assert len(w.pidfds) == 2


def test_a_fork_event_for_a_process_discover_already_adopted_keeps_it(make_world):
    """In the daemon, discover() can adopt a child before its Fork event is
    polled. The Fork of the same (pid, start) changes nothing: no Ended, no
    second Process, its looks kept."""
    w = make_world(adopt_unknown=True, details=True)
    w.proc.spawn(PARENT, PARENT_START)
    w.fake = w.proc.spawn(PID, START, ppid=PARENT)
    w.at(1.0)
    news = w.tracker.discover(1.0)
    (child,) = [n.process for n in of(news, Started) if n.process.pid == PID]
    w.tracker.look(child, w.at(1.2))
    news = w.tracker.on_events([w.fork(PID, START, t=0.99)])    # forked just before discover ran
    assert not of(news, Ended), "a live process was reported ended"
    assert w.tracker.alive.get(PID) is child and child.alive and child.looks == 1


def test_a_denied_read_of_a_reused_pid_does_not_untrace_its_new_owner(make_world, monkeypatch):
    """A forked child (never read) whose exit event was lost; its pid now
    belongs to a newer process whose stat cannot be read, so the identity
    check cannot tell them apart: the pid must not be untraced, since it may
    be the newer process's."""
    w = make_world()
    child = w.forked()
    w.fake.vanish()
    newer = w.proc.spawn(PID, NEW_START, comm="sshd")
    deny(monkeypatch, newer, "stat")
    news = settle(w, 1.0)
    assert of(news, Ended, child) and not child.alive
    assert not w.kernel.called("untrace", PID)


# ---- 3. gone, denied, zombie: distinct outcomes -------------------------------------

def test_procdir_tells_gone_denied_zombie_and_other_errors_apart(make_world, monkeypatch):
    w = make_world()
    fakes = {pid: w.proc.spawn(pid, START + pid) for pid in (11, 12, 13, 14)}
    handles = {pid: procfs.ProcDir(pid, root=w.proc.root) for pid in fakes}
    fakes[11].vanish()
    deny(monkeypatch, fakes[12], "status")
    fakes[13].zombie()
    with pytest.raises(procfs.NoSuchProcess):
        handles[11].status()
    with pytest.raises(procfs.AccessDenied):
        handles[12].status()
    with pytest.raises(procfs.ZombieProcess):
        handles[13].status()
    assert handles[13].stat().zombie and not handles[13].stat().kernel_thread
    deny(monkeypatch, fakes[14], "smaps", errno.EIO)
    with pytest.raises(procfs.ProcessError) as err:
        handles[14].smaps()
    assert type(err.value) is procfs.ProcessError
    for cls in (procfs.NoSuchProcess, procfs.AccessDenied, procfs.ZombieProcess):
        others = {procfs.NoSuchProcess, procfs.AccessDenied, procfs.ZombieProcess} - {cls}
        assert issubclass(cls, procfs.ProcessError) and not any(issubclass(cls, o) for o in others)
    for h in handles.values():
        h.close()


@pytest.mark.parametrize("name,act", [
    ("smaps", lambda w, p: w.tracker.look(p, w.at(0.5))),
    ("status", lambda w, p: w.tracker.on_events([w.rss_step(t=w.at(0.5))])),
])
def test_a_denied_process_is_ended_at_once_and_untraced(make_world, monkeypatch, name, act):
    w = make_world()
    p = w.attached()
    deny(monkeypatch, w.fake, name)
    assert act(w, p) == [Ended(p)]
    assert p.ended_how == "denied" and p.exited_at == 0.5 and PID not in w.tracker.alive
    assert w.kernel.called("untrace") == [PID]       # alive but unreadable: stop its events
    assert settle(w, 1.0) == []


def test_a_gone_process_is_not_ended_before_its_grace_nor_untraced(make_world):
    w = make_world()
    p = w.attached()
    w.fake.vanish()
    assert w.tracker.on_events([w.rss_step(t=w.at(0.5))]) == []
    assert p.vanished_at == 0.5 and w.tracker.verify(w.at(0.5 + VANISHED_GRACE_S * 0.9)) == []
    assert w.tracker.verify(w.at(0.5 + VANISHED_GRACE_S)) == [Ended(p)]
    assert p.ended_how == "gone" and not w.kernel.called("untrace")


def test_adopt_ignores_a_denied_process_and_a_kernel_thread(make_world, monkeypatch):
    w = make_world()
    w.proc.kernel_thread(2, 14, "kthreadd")
    denied = w.proc.spawn(PID, START)
    deny(monkeypatch, denied, "cmdline")
    assert w.tracker.adopt(2, w.at(1.0)) == (None, [])
    assert w.tracker.adopt(PID, 1.0) == (None, [])
    assert w.tracker.ignored == {2: (14, "kernel thread"), PID: (START, "denied")}
    assert not w.kernel.calls and not w.tracker.alive


@pytest.mark.parametrize("details", [True, False], ids=["details", "plain"])
def test_adopt_does_not_start_a_zombie_nor_call_it_a_kernel_thread(make_world, details):
    """A zombie is not adopted (it has exited; its exit event says so), and it
    is ignored as a zombie, not as a kernel thread, until it is reaped."""
    w = make_world(details=details, adopt_unknown=True)
    w.fake = w.proc.spawn(PID, START)
    w.fake.zombie()
    news = []
    for i in range(1, 13):                  # a daemon's loop for 6 s: discover, then looks
        t = w.at(i * 0.5)
        news += w.tracker.discover(t)
        news += [n for p in w.tracker.due(t) for n in w.tracker.look(p, t)]
    assert w.tracker.ignored.get(PID, (None, ""))[1] != "kernel thread"
    assert not of(news, Started), [type(n).__name__ for n in news]


def test_a_zombie_found_by_a_look_waits_for_its_exit_event(make_world):
    w = make_world()
    p = w.attached()
    w.fake.zombie()
    assert w.tracker.look(p, w.at(0.5)) == []
    assert w.tracker.on_events([w.rss_step(t=0.5)]) == []
    assert p.vanished_at == 0.5 and p.alive and len(p.rss.points) == 1
    assert w.tracker.on_events([w.exit_(t=w.at(0.6))]) == [Ended(p)]
    assert p.ended_how == "exited" and not w.kernel.called("untrace")


def test_verify_ends_a_zombie_and_does_not_call_it_renamed(make_world):
    """A zombie's stat and (empty) cmdline read fine: verify() must see the
    zombie, not report a rename to "", and end it once VANISHED_GRACE_S has
    passed without its exit event."""
    w = make_world()
    p = w.attached()
    w.fake.zombie()
    news = settle(w, 1.0) + settle(w, 5.0)
    assert not of(news, Renamed), "a zombie was reported renamed"
    assert of(news, Ended, p) == [Ended(p)] and p.cmdline == "python3 serve.py"


def test_an_rss_reading_of_an_exiting_process_is_not_recorded(make_world):
    """Between exit_mm and exit_notify a process has no mm and is not a zombie
    yet: its status has no VmRSS. That reading is no 0 in its series (it
    would make a false spike of the exit)."""
    w = make_world()
    p = w.attached()                        # ~110 MiB
    w.fake.set_anon(612 * MiB)
    w.tracker.on_events([w.rss_step(t=w.at(1.0))])
    w.fake.exiting()
    w.tracker.on_events([w.rss_step(t=w.at(1.05))])
    assert 0 not in [total for _, total, _ in p.rss.points], p.rss.points
    assert not of(w.tracker.spikes(w.at(2.0)), SpikeSeen)


def test_a_counter_change_after_the_exit_event_does_not_bring_it_back(make_world):
    """The daemon adopts a process it does not know on its first event. The
    last counter changes of an exiting process come after its exit event,
    while its /proc is still there: they are not a new process."""
    w = make_world(adopt_unknown=True)
    p = w.attached()
    w.fake.exiting()
    news = w.tracker.on_events([w.exit_(t=w.at(1.0)), w.rss_step(t=w.at(1.01))])
    assert of(news, Ended, p) == [Ended(p)]
    assert PID not in w.tracker.alive and not of(news, Started)
    w.tracker.discover(w.at(2.0))
    assert PID not in w.tracker.alive


# ---- 4. the look interval ----------------------------------------------------------
#
# cost_factor=0: the interval is min_interval alone, not a multiple of how long
# a look took on this machine, so a loaded machine cannot change the outcome.

def _drive(w, until, step=0.05, moves=()):
    """A driver's loop on the fake clock: events, then looks at what is due.
    Returns the times of the looks."""
    looked = []
    for i in range(1, round(until / step) + 1):
        t = w.at(round(i * step, 6))
        if any(abs(t - m) < 1e-9 for m in moves):
            w.fake.set_anon(w.fake.vm_rss // 2 + 10 * MiB)
            w.tracker.on_events([w.rss_step(t=t)])
        for p in w.tracker.due(t):
            looked += [t for n in w.tracker.look(p, t, min_change=0) if type(n) is Looked]
    return looked


def test_a_moving_process_gets_at_most_one_look_per_interval(make_world, reads):
    w = make_world(policy=LookPolicy(min_interval=10.0, cost_factor=0))
    w.fake = w.proc.spawn(PID, START)
    (started,) = w.tracker.adopt(PID, w.at(0.0))[1]
    reads.watch(PID)
    moves = [i * 0.25 for i in range(1, 13)]            # every 250 ms for 3 s
    looked = _drive(w, 3.0, moves=moves)
    assert looked == [0.25]                             # the first movement: its first look
    assert reads.names.count("smaps") == 1 and started.process.looks == 1
    assert reads.names.count("status") >= 12            # its counters were read at each step


def test_the_settle_look_waits_for_the_interval(make_world):
    """A look that movement caused asks for one more once things are quiet
    (settle_delay later): that one too waits for min_interval."""
    w = make_world(policy=LookPolicy(min_interval=10.0, settle_delay=0.2, cost_factor=0))
    w.fake = w.proc.spawn(PID, START)
    p, _ = w.tracker.adopt(PID, w.at(0.0))
    looked = _drive(w, 30.0, moves=[0.1])
    assert looked == [0.1, 10.1], looked                # not at 0.3, when it settled
    assert p.settle_at is None and p.looks == 2


def test_a_quiet_process_is_looked_at_after_first_look_after(make_world):
    w = make_world(policy=LookPolicy(min_interval=10.0, cost_factor=0))
    w.fake = w.proc.spawn(PID, START)
    w.tracker.adopt(PID, w.at(0.0))
    assert _drive(w, 12.0) == [1.0]


# ---- 5. an exec starts the process over ---------------------------------------------

def _rise_then(w, p, then_exec, same_layout=False):
    """Attached at ~110 MiB; a pinned buffer; a rise of 512 MiB at 0.9 s; at
    0.95 s either an exec (a small program in its place) or a release of it
    all. Returns the news of the first look after."""
    w.fake.map(Mapping(PINNED_AT, 64 * MiB, "/dev/zero (deleted)", "rw-s", 64 * MiB, 77))
    w.tracker.on_events([w.cuda_alloc(t=w.at(0.3))])
    assert w.tracker.look(p, w.at(0.4))[0].snapshot.classes["cuda_pinned"] == 64 * MiB
    w.fake.set_anon(612 * MiB)
    w.tracker.on_events([w.rss_step(t=w.at(0.9))])
    if then_exec:
        w.fake.exec(same_layout=same_layout)
        assert of(w.tracker.on_events([w.exec_(t=w.at(0.95))]), Execed)
    else:
        w.fake.mappings = [m for m in w.fake.mappings if m.start != PINNED_AT]
        w.fake.set_anon(0)
    w.tracker.on_events([w.rss_step(t=w.at(1.0))])
    return w.tracker.look(p, w.at(1.2), min_change=0)


@pytest.mark.parametrize("same_layout", [False, True], ids=["new layout", "same layout"])
def test_after_an_exec_the_first_look_reports_no_changes(make_world, same_layout):
    """The Exec event itself starts the process over: not only the look's own
    check of the layout (which an exec without ASLR may leave unchanged)."""
    w = make_world()
    p = w.attached()
    news = _rise_then(w, p, then_exec=True, same_layout=same_layout)
    (looked,) = of(news, Looked)
    assert looked.changes == []                                  # no releases: a new program
    assert p.pinned.ranges == {} and looked.snapshot.pinned == []
    assert looked.snapshot.classes["cuda_pinned"] == 0 and p.comm == "bash" and p.cmdline == "bash -c true"
    old, new = p.rss.images[-2:]
    assert [total for _, total, _ in new] == [w.fake.vm_rss, w.fake.vm_rss]
    assert max(total for _, total, _ in old) > 600 * MiB and p.rss.peak.bytes == w.fake.vm_rss
    assert not of(w.tracker.spikes(w.at(3.0)), SpikeSeen)        # no spike spans the exec
    assert p.rss.all_spikes(w.tracker.spike_rule) == []


def test_without_an_exec_the_same_readings_are_a_release_and_a_spike(make_world):
    """The control for the test above: its assertions can fail."""
    w = make_world()
    p = w.attached()
    (looked,) = of(_rise_then(w, p, then_exec=False), Looked)
    released = {(c.cls, c.name): c.delta for c in looked.changes if c.delta < 0}
    assert released == {("anon", "[anonymous]"): -100 * MiB, ("cuda_pinned", "/dev/zero (deleted)"): -64 * MiB}
    assert of(w.tracker.spikes(w.at(3.0)), SpikeSeen)


def test_an_rss_step_in_the_batch_of_an_exec_is_not_read_into_the_old_program(make_world):
    """An RssStep that precedes an Exec of the same pid in its batch is stale:
    the counters read now are the new program's, and read into the old
    image they would make a spike out of the exec."""
    w = make_world()
    p = w.attached()
    w.fake.set_anon(612 * MiB)
    w.tracker.on_events([w.rss_step(t=w.at(0.9))])
    w.fake.exec()
    w.at(0.95)
    w.tracker.on_events([w.rss_step(t=0.94), w.exec_(t=0.95)])
    old = p.rss.images[-2]
    assert w.fake.vm_rss not in [total for _, total, _ in old], "the new program's RSS is in the old image"
    assert p.rss.all_spikes(w.tracker.spike_rule) == []


def test_a_spike_that_ended_just_before_an_exec_is_still_reported(make_world):
    """A spike whose fall window is still open when the process execs is
    judged at the exec: it reaches the timeline (SpikeSeen), not only the
    summary."""
    w = make_world()
    p = w.attached()
    w.fake.set_anon(612 * MiB)
    w.tracker.on_events([w.rss_step(t=w.at(0.9))])
    w.fake.set_anon(100 * MiB)
    w.tracker.on_events([w.rss_step(t=w.at(0.95))])
    news = w.tracker.spikes(0.95)
    w.fake.exec()
    news += w.tracker.on_events([w.exec_(t=w.at(0.98))])
    news += w.tracker.spikes(w.at(2.0))
    assert len(p.rss.all_spikes(w.tracker.spike_rule)) == 1
    assert len(of(news, SpikeSeen)) == 1


# ---- 6. a rename is held back: exec renames too ---------------------------------------

def test_a_rename_alone_is_reported_once_its_hold_has_passed(make_world):
    w = make_world()
    p = w.attached()
    w.fake.rename("VLLM::Worker")
    hold = RENAME_HOLD_NS / 1e9
    assert w.tracker.on_events([w.rename("VLLM::Worker", t=w.at(1.0))]) == []
    assert w.tracker.on_events([]) == [] and p.comm == "python3"
    assert w.tracker.on_events([w.rss_step(t=w.at(1.0 + hold * 0.9))]) == []
    w.at(1.0 + hold)
    assert w.tracker.on_events([]) == [Renamed(p, "python3", "python3 serve.py")]
    assert p.comm == "VLLM::Worker" and p.renames == [(1.0, "python3", "VLLM::Worker")]
    w.at(5.0)
    assert w.tracker.on_events([]) == [] and w.tracker.on_events([]) == []


@pytest.mark.parametrize("same_batch", [True, False])
def test_a_rename_followed_by_an_exec_is_no_rename(make_world, same_batch):
    w = make_world()
    p = w.attached()
    w.fake.exec()
    rename, exec_ = w.rename("bash", t=w.at(1.0)), w.exec_(t=1.0 + (0 if same_batch else 0.02))
    if same_batch:
        news = w.tracker.on_events([rename, exec_])
    else:
        news = w.tracker.on_events([rename])
        w.at(1.02)
        news += w.tracker.on_events([exec_])
    w.at(2.0)
    news += w.tracker.on_events([]) + w.tracker.on_events([])
    assert [type(n) for n in news] == [Execed] and p.renames == [] and p.comm == "bash"


def test_a_rename_received_late_still_waits_for_the_exec_behind_it(make_world):
    """A tracker running behind by more than the hold (a look of a large
    process takes ~100 ms; a loaded machine) must still hold an exec's own
    rename when the poll that drained the ring buffer ended between the
    rename and the Exec (the kernel emits them ~0.1-1 ms apart): the hold
    runs from the rename's arrival, not from its timestamp."""
    w = make_world()
    p = w.attached()
    w.fake.exec()
    w.at(1.3)                               # 300 ms behind the kernel
    news = w.tracker.on_events([w.rename("bash", t=1.0)])
    news += w.tracker.on_events([w.exec_(t=1.0005)])
    w.at(2.0)
    news += w.tracker.on_events([])
    assert [type(n) for n in news] == [Execed] and p.renames == []


def test_a_rename_already_equal_to_the_name_is_no_news(make_world):
    w = make_world()
    w.attached()
    w.tracker.on_events([w.rename("python3", t=w.at(1.0))])
    w.at(2.0)
    assert w.tracker.on_events([]) == []


def test_a_held_rename_is_not_given_to_the_pids_next_owner(make_world):
    """A process renamed and exited within RENAME_HOLD_NS, and a new process
    forked onto its pid: the held rename dies with the old one."""
    w = make_world()
    w.proc.spawn(PARENT, PARENT_START)
    w.tracker.attach(PARENT, w.at(0.0))
    old = w.attached()
    w.tracker.on_events([w.rename("doomed", t=w.at(1.0))])
    w.fake.vanish()
    w.proc.spawn(PID, NEW_START, ppid=PARENT)
    news = w.tracker.on_events([w.exit_(t=w.at(1.01)), w.fork(PID, NEW_START, t=1.02)])
    assert of(news, Ended, old)
    (new,) = [n.process for n in of(news, Started)]
    w.at(1.2)
    news = w.tracker.on_events([])
    assert not of(news, Renamed) and new.comm == "python3" and new.renames == []



def test_a_range_merged_at_the_start_of_a_mapping_keeps_its_own_addresses():
    """mmap places a new range just below the last one and the kernel merges
    the two into one mapping: the range's part and the rest must each keep
    their own addresses, or an address in the range finds the rest, and what
    the range holds is counted again as the rest's growth."""
    from ramwatchd.kernel.events import Mmap
    from ramwatchd.ledger import look, regions
    from ramwatchd.ledger.procfs import Vma
    start, size, rest = 0x7f0000000000, 64 << 20, 2 << 20
    call = Mmap(0, 1, 1, "python", ret=start, addr=0, length=size, prot=3, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                fd=-1)
    ranges = regions.Regions()
    ranges.add(regions.made_by(call, 0.0))
    merged = Vma(start, start + size + rest, "rw-p", 0, (0, 0), 0, "", rss=size + (1 << 20))
    proc = SimpleNamespace(resident=lambda lo, hi: min(hi, start + size) - lo if lo < start + size else 0)
    parts = look._parts(proc, merged, "anon", ranges, {})
    spans = sorted((part.start, part.end, name, part.rss) for part, name in parts)
    assert spans == [(start, start + size, "[anon mmap 64.0 MiB @ 0.00s]", size),
                     (start + size, start + size + rest, "[anonymous]", 1 << 20)], spans


# ---- a look and the calls that ran through it ---------------------------------

def _releases(news):
    return [ch for n in news if type(n) is Looked for ch in n.changes if ch.delta < 0]


def test_a_release_ended_during_the_read_but_sent_after_it_is_its_cause(make_world):
    """madvise ended just before smaps was read; its record was still in the
    ring buffer when the look began. Taken between read and settle, it names
    the release."""
    w = make_world()
    p = w.attached()
    w.fake.set_anon(0)
    w.at(1.0)
    snap, news = w.tracker.read(p, 1.0)
    w.tracker.on_events([w.dontneed(100 * MiB, t=0.999)])
    (release,) = _releases(w.tracker.settle(p, snap, min_change=0))
    assert release.delta == -100 * MiB and "madvise DONTNEED 100.0 MiB" in release.cause


def test_a_look_a_releasing_call_ran_through_is_taken_again(make_world):
    """madvise ran while smaps was read: the look saw part of its release. It
    is thrown away and taken again, whole and with its cause; a call still
    running (busy) throws it away too; after MAX_TORN_LOOKS in a row one is
    taken as it is."""
    w = make_world()
    p = w.attached()
    w.fake.set_anon(40 * MiB)       # half-way through the release, as the read saw it
    snap, _ = w.tracker.read(p, w.at(1.0))
    w.tracker.on_events([w.dontneed(100 * MiB, t=1.0)])
    assert w.tracker.settle(p, snap, min_change=0) == []
    w.fake.set_anon(0)
    news = w.tracker.look(p, w.at(1.5), min_change=0)
    (release,) = _releases(news)
    assert release.delta == -100 * MiB and "madvise DONTNEED 100.0 MiB" in release.cause

    w.kernel.allocating.add(PID)    # a call still running
    for i in range(tracker_mod.MAX_TORN_LOOKS):
        assert w.tracker.look(p, w.at(2.0 + i), min_change=0) == []
    assert [type(n) for n in w.tracker.look(p, w.at(9.0), min_change=0)] == [Looked]


def test_a_look_a_cuda_allocation_ended_in_is_taken_again(make_world):
    """The driver maps a pinned buffer inside cuMemHostAlloc: a look that read
    smaps before the call returned saw plain shared memory. It is thrown away,
    and the next one sees the buffer as cuda_pinned."""
    w = make_world()
    p = w.attached()
    w.fake.map(Mapping(PINNED_AT, 64 * MiB, "/dev/zero (deleted)", "rw-s", 64 * MiB, 77))
    snap, _ = w.tracker.read(p, w.at(1.0))
    assert snap.classes["shm_anon"] == 64 * MiB
    w.tracker.on_events([w.cuda_alloc(t=1.0)])
    assert w.tracker.settle(p, snap, min_change=0) == []
    (looked,) = w.tracker.look(p, w.at(1.5), min_change=0)
    assert looked.snapshot.classes["cuda_pinned"] == 64 * MiB and looked.snapshot.classes["shm_anon"] == 0


def test_a_call_sent_after_the_read_is_kept_for_the_next_look(make_world):
    """A call that ended after smaps was read belongs to the next look."""
    w = make_world()
    p = w.attached()
    snap, _ = w.tracker.read(p, w.at(1.0))
    w.at(1.1)
    w.tracker.on_events([w.dontneed(100 * MiB, t=1.1)])
    w.fake.set_anon(0)
    assert _releases(w.tracker.settle(p, snap, min_change=0, retry_torn=False)) == []
    (release,) = _releases(w.tracker.look(p, w.at(1.5), min_change=0))
    assert "madvise DONTNEED 100.0 MiB" in release.cause
