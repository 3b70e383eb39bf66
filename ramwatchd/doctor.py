"""`ramwatchd doctor`: every prerequisite of a capture, checked, with its fix."""
import ctypes
import os
import platform
import sys
import sysconfig
from pathlib import Path

from .kernel.probes import TRACEFS, ProbeError, ProbeOptions, Probes, import_bcc

CAP_SYS_PTRACE, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 19, 21, 38, 39
TRACEPOINTS = ["kmem/rss_stat", "filemap/mm_filemap_add_to_page_cache",
               "filemap/mm_filemap_delete_from_page_cache", "oom/mark_victim",
               "task/task_newtask", "task/task_rename", "sched/sched_process_exec", "sched/sched_process_exit",
               "syscalls/sys_enter_write"] + [
    f"syscalls/sys_{side}_{name}" for name in
    ("mmap", "munmap", "mremap", "brk", "madvise", "shmat", "shmdt", "memfd_create")
    for side in ("enter", "exit")]
SETUP = "run deploy/setup.sh as root"
ROOT = "run as root (sudo), or with CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH"
DISTRO_BCC = Path("/usr/lib/python3/dist-packages/bcc")    # where python3-bpfcc puts it


def _effective_caps():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_privileges():
    caps = _effective_caps()
    have = lambda c: bool(caps >> c & 1)
    bpf_ok = have(CAP_SYS_ADMIN) or (have(CAP_BPF) and have(CAP_PERFMON))
    if bpf_ok and have(CAP_SYS_PTRACE):
        return True, "root or CAP_BPF+CAP_PERFMON+CAP_SYS_PTRACE", ""
    return False, "not enough privilege to load BPF programs and read other processes' /proc", ROOT


def check_bpf_syscall():
    """Create and close a one-entry BPF array map: the bpf() syscall works."""
    attr = (ctypes.c_uint32 * 30)(2, 4, 4, 1)   # BPF_MAP_TYPE_ARRAY, key 4, value 4, 1 entry
    libc = ctypes.CDLL(None, use_errno=True)
    nr = {"x86_64": 321, "aarch64": 280}.get(platform.machine())
    if nr is None:
        return False, f"bpf() syscall number unknown on {platform.machine()}", "x86_64 and arm64 are supported"
    fd = libc.syscall(nr, 0, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        return False, f"bpf() syscall failed: {os.strerror(err)}", \
            "the kernel needs CONFIG_BPF_SYSCALL=y, and the caller CAP_BPF (or root)"
    os.close(fd)
    return True, "bpf() syscall", ""


def check_btf():
    if Path("/sys/kernel/btf/vmlinux").exists():
        return True, "kernel BTF at /sys/kernel/btf/vmlinux", ""
    return None, "no kernel BTF (not needed: ramwatchd reads only tracepoint arguments)", ""


def _exists(path):
    """True, False, or None where this user may not look (tracefs is root's)."""
    try:
        return path.exists()
    except PermissionError:
        return None


def check_tracefs():
    try:
        mounted = (TRACEFS / "events").is_dir()
    except PermissionError:
        return False, f"tracefs at {TRACEFS} is not readable by this user", ROOT
    if mounted:
        return True, f"tracefs mounted at {TRACEFS}", ""
    return False, f"tracefs is not mounted at {TRACEFS}", f"mount -t tracefs nodev {TRACEFS}"


def check_bcc():
    try:
        bcc = import_bcc()
    except ProbeError as err:
        if DISTRO_BCC.is_dir():     # a virtualenv sees only its own packages
            return False, (f"bcc is not importable by {sys.executable}: python3-bpfcc is installed "
                           f"({DISTRO_BCC}) but this Python does not see it"), \
                f"ln -s {DISTRO_BCC} {sysconfig.get_paths()['purelib']}/bcc (deploy/setup.sh links it so)"
        return False, "bcc is not importable", str(err)
    except OSError as err:     # the module is there, its library is not
        return False, f"bcc's library does not load: {err}", "apt-get install libbpfcc"
    return True, f"bcc {getattr(bcc, '__version__', '?')} importable", ""


def check_headers(privileged=True):
    build = Path(f"/lib/modules/{platform.release()}/build")
    if not privileged:   # compiling is fine, loading is not: a failure would blame the headers
        if build.is_dir():
            return None, f"kernel headers at {build} not tried: loading a probe needs root", ""
        return False, f"no kernel headers at {build}", SETUP
    try:
        bcc = import_bcc()
        bcc.BPF(text="TRACEPOINT_PROBE(sched, sched_process_exit) { return 0; }").cleanup()
    except ProbeError:
        return None, "kernel headers not checked: bcc is missing (above)", ""
    except Exception:
        return False, f"kernel headers at {build} do not compile a probe", SETUP
    where = build.resolve()
    if platform.release() not in str(where):
        return True, (f"kernel headers compile a probe ({where}, not this kernel's own: sound, "
                      "since ramwatchd reads no kernel structs)"), ""
    return True, f"kernel headers compile a probe ({where})", ""


def check_uprobes():
    if _exists(TRACEFS / "uprobe_events"):
        return True, "uprobes (for the CUDA driver's host-memory calls)", ""
    return None, "uprobes unavailable: CUDA pinned memory will not be told apart", \
        "a kernel with CONFIG_UPROBE_EVENTS=y"


def check_tracepoint(tp):
    if (TRACEFS / "events" / tp / "format").exists():
        return True, f"tracepoint {tp.replace('/', ':')}", ""
    return False, f"tracepoint {tp.replace('/', ':')} missing", \
        "a kernel with it (CONFIG_FTRACE_SYSCALLS for syscalls:*), and tracefs mounted"


def check_fault_tracepoints():
    missing = [tp for tp in ("exceptions/page_fault_user", "exceptions/page_fault_kernel")
               if not _exists(TRACEFS / "events" / tp / "format")]
    if not missing:
        return True, "tracepoints exceptions:page_fault_user and page_fault_kernel", ""
    return None, (f"no {', '.join(missing)} (not x86): faults are sampled with a perf event "
                  "and kmem:rss_stat tells when RSS moves, at a little more cost"), ""


def check_programs():
    try:
        Probes(ProbeOptions()).close()
    except ProbeError as err:
        return False, "ramwatchd's BPF programs do not load", str(err)
    return True, "ramwatchd's BPF programs load and attach", ""


def capture_blockers():
    """The cheap checks a capture cannot start without, as one-line reasons."""
    out = []
    for check in (check_privileges, check_bcc, check_tracefs):
        ok, what, fix = check()
        if ok is False:
            out.append(f"{what}: {fix}")
    return out


def run_doctor():
    privileged, tracefs = check_privileges()[0], check_tracefs()[0]
    checks = [check_privileges, check_bpf_syscall, check_btf, check_tracefs, check_bcc,
              lambda: check_headers(privileged)]
    if tracefs:
        checks += [check_uprobes] + [lambda tp=tp: check_tracepoint(tp) for tp in TRACEPOINTS]
        checks += [check_fault_tracepoints]
    failed = False
    for check in checks:
        ok, what, fix = check()
        failed |= ok is False
        _say(ok, what, fix)
    if not tracefs:
        _say(None, "tracepoints and uprobes not checked without tracefs (above)", "")
    if not failed:
        ok, what, fix = check_programs()
        failed |= not ok
        _say(ok, what, fix)
    print("\na capture can run" if not failed else "\na capture cannot run until the FAIL lines are fixed")
    return 1 if failed else 0


def _say(ok, what, fix):
    label = {True: "OK  ", False: "FAIL", None: "WARN"}[ok]
    print(f"{label}  {what}" + (f"\n      fix: {fix}" if fix else ""))
