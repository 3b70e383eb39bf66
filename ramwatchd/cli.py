"""The ramwatchd command: capture (--pid, run, demo), report, diff, top, doctor and daemon."""
import argparse
import json
import math
import os
import re
import signal
import sys
import textwrap

from . import __version__
from .ledger.classes import CLASSES
from .units import fmt_bytes, size_arg

OK, FAILED, USAGE, OVER_BUDGET, INTERNAL_ERROR = 0, 1, 2, 3, 70

EPILOG = f"""\
examples:
  ramwatchd -p 4121 --children -d 60 -o engine.json
  ramwatchd run -- python serve.py --model /models/llama
  ramwatchd run --max-rss 6GiB --max-class cuda_pinned=2GiB -o load.json -- python load.py
  ramwatchd report engine.json --png engine.png
  ramwatchd diff before.json after.json
  ramwatchd top
  ramwatchd doctor
  ramwatchd daemon --config /etc/ramwatchd/config.yaml

{textwrap.fill("Memory is split into classes that add up to the kernel's VmRSS: " + ", ".join(CLASSES) + ".", 88)}
Sizes accept units: 16MiB, 1.5GiB, 4096. Options may come before or after run and demo.
A capture ends at --duration, when every traced process has exited, or on Ctrl-C, SIGTERM
or SIGHUP; it prints its summary and saves its file whichever ends it.

exit status:
  {OK}   done (run: the program exited 0, or the capture ended it)
  {FAILED}   nothing was captured: no such process or command, too little privilege, a
      prerequisite missing (see ramwatchd doctor), an output that cannot be written
  {USAGE}   bad input: an option, a config file or a saved capture (one line says what)
  {OVER_BUDGET}   a process passed --max-rss or --max-class (the summary shows where)
  {INTERNAL_ERROR}  a defect of ramwatchd ended the capture; what was collected is saved
  128+N  ended by signal N before the capture began (130: Ctrl-C)
  run: when the program itself fails, its exit status (128+N if signal N killed it),
  ahead of {OVER_BUDGET}
"""


class CliError(Exception):
    """One line for the user, and exit status 1 (or the status given)."""

    def __init__(self, message, status=FAILED):
        super().__init__(message)
        self.status = status


class Parser(argparse.ArgumentParser):
    """Bad arguments get one line naming what is wrong, and exit status 2."""

    def error(self, message):
        self.exit(USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


# ---- values checked as they are parsed -----------------------------------------

MAX_SIZE = 1 << 50          # 1 PiB: more memory than any machine has
MAX_DURATION_S = 7 * 86400  # a capture keeps every look in memory; the daemon is for longer
PID_MAX_LIMIT = 1 << 22     # the kernel's highest possible pid


def _duration(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or not 0 < value <= MAX_DURATION_S:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most {MAX_DURATION_S} seconds (7 days), "
                                         f"not {text!r}")
    return value


def _size(low):
    """argparse type: a size from low to MAX_SIZE."""
    def parse(text):
        value = size_arg(text)
        if value < low:
            least = "above 0" if low == 1 else f"at least {fmt_bytes(low)}"
            raise argparse.ArgumentTypeError(f"must be {least}, not {text!r}")
        if value > MAX_SIZE:
            raise argparse.ArgumentTypeError(f"{text!r} is more memory than any machine has (at most 1 PiB)")
        return value
    return parse


def _whole(low, high, what):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} from {low} to {high:,}, not {text}")
        return value
    return parse


def _pattern(text):
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty pattern matches no file")
    return text


def _regex(text):
    try:
        re.compile(text)
    except re.error as err:
        raise argparse.ArgumentTypeError(f"bad regular expression {text!r}: {err}") from None
    return text


def _class_budget(text):
    cls, equals, size = text.partition("=")
    if not equals:
        raise argparse.ArgumentTypeError(f"expected CLASS=SIZE such as anon=4GiB, not {text!r}")
    if cls not in CLASSES:
        raise argparse.ArgumentTypeError(f"unknown class {cls!r} (classes: {', '.join(CLASSES)})")
    return cls, _size(0)(size)


# ---- the parser ------------------------------------------------------------------

# A capture's options, given before the subcommand or after it: argparse would
# let a subcommand's defaults overwrite what came before it, so none has a
# default on the parser, and these fill in what was not given.
CAPTURE_DEFAULTS = {
    "pid": None, "children": False, "duration": None, "output": None, "format": "json", "json": None,
    "png": None, "weights": None, "min_change": 8 << 20, "rss_step": 16 << 20, "exact_rss": False,
    "min_syscall": 1 << 20, "fault_sample": 64, "spike": 256 << 20, "stacks": True, "phase": None,
    "quiet": False, "max_rss": None, "max_class": None,
}
CAPTURE_COMMANDS = (None, "run", "demo")


def _capture_options(p):
    """Adds a capture's options to p; returns {dest: flag} for messages."""
    flags = {}
    g = p.add_argument_group("capture")

    def add(*names, **kw):
        action = g.add_argument(*names, default=argparse.SUPPRESS, **kw)
        flags[action.dest] = names[-1]

    add("-d", "--duration", type=_duration, metavar="S",
        help="stop after S seconds (default: when the traced processes exit, or Ctrl-C)")
    add("-o", "--output", metavar="FILE",
        help="save the capture to FILE, readable by you only, for 'ramwatchd report' and 'diff' "
             "('-': to stdout, with everything else on stderr)")
    add("--format", choices=("json", "folded"),
        help="what -o writes: json, the whole capture (default); folded, the growth by call site "
             "as folded stacks, for flamegraph.pl or speedscope")
    add("--json", metavar="FILE", help="the same as -o FILE --format json")
    add("--png", metavar="FILE", help="also draw the timeline, stacked by class, to FILE")
    add("--weights", action="append", type=_pattern, metavar="GLOB",
        help="file pattern counted as model weights (repeatable; default: "
             "*.safetensors *.bin *.pt *.pth *.gguf *.ckpt *.onnx ...)")
    add("--min-change", type=_size(0), metavar="SIZE",
        help=f"smallest move of one mapping shown on the timeline (default "
             f"{fmt_bytes(CAPTURE_DEFAULTS['min_change'])})")
    add("--rss-step", type=_size(1 << 20), metavar="SIZE",
        help=f"with --exact-rss: the kernel reports a process's RSS each time it moves this much "
             f"(default {fmt_bytes(CAPTURE_DEFAULTS['rss_step'])}, at least 1 MiB)")
    add("--exact-rss", action="store_true",
        help="keep exact RSS sizes and peaks in the kernel (kmem:rss_stat as a classic tracepoint: "
             "costlier per page fault; see README 'Overhead')")
    add("--min-syscall", type=_size(0), metavar="SIZE",
        help=f"smaller mmap/munmap/madvise/mremap calls are not reported (default "
             f"{fmt_bytes(CAPTURE_DEFAULTS['min_syscall'])})")
    add("--fault-sample", type=_whole(1, 1_000_000, "one fault in N: N"), metavar="N",
        help=f"sample one page fault in N for where faults land (default {CAPTURE_DEFAULTS['fault_sample']})")
    add("--spike", type=_size(1 << 20), metavar="SIZE",
        help=f"a rise of SIZE that falls back within 100 ms is a spike (default "
             f"{fmt_bytes(CAPTURE_DEFAULTS['spike'])}, at least 1 MiB)")
    add("--no-stacks", dest="stacks", action="store_false",
        help="do not read the Python and native stacks behind each growth (call sites)")
    add("--phase", action="append", type=_regex, metavar="REGEX",
        help="lines that match mark phases (repeatable; default: every line the processes print "
             "except log noise: tracebacks, warnings, debug, progress bars)")
    add("-q", "--quiet", action="store_true",
        help="do not print the timeline, only the summary (a program started by run prints its own "
             "output as it would without ramwatchd)")
    b = p.add_argument_group("budget (exit status 3 when a process passes it)")
    action = b.add_argument("--max-rss", type=_size(1), metavar="SIZE", default=argparse.SUPPRESS,
                            help="the most RSS any traced process may reach (its exact peak)")
    flags[action.dest] = "--max-rss"
    action = b.add_argument("--max-class", type=_class_budget, action="append", metavar="CLASS=SIZE",
                            default=argparse.SUPPRESS,
                            help="the most of one class any traced process may hold at a look "
                                 "(repeatable), e.g. cuda_pinned=2GiB")
    flags[action.dest] = "--max-class"
    return flags


def build_parser():
    p = Parser(
        prog="ramwatchd", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Where did the host RAM go? Traces a process (tree) from the kernel and "
                    "prints a timeline of what grew, in which class and mapping, and why.")
    p.add_argument("--version", action="version", version=f"ramwatchd {__version__}")
    p.add_argument("-p", "--pid", type=_whole(1, PID_MAX_LIMIT, "a process id"), metavar="PID",
                   default=argparse.SUPPRESS, help="attach to a running process")
    p.add_argument("--children", action="store_true", default=argparse.SUPPRESS,
                   help="with --pid: also trace its descendants, present and future")
    p.capture_flags = {"pid": "--pid", "children": "--children", **_capture_options(p)}
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    run = sub.add_parser("run", help="start a command and capture it from its first instruction",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Start CMD under capture. Its output lines are shown in the "
                                     "timeline and become phases; children are followed.",
                         epilog="example: ramwatchd run -o load.json -- python load.py\n"
                                "exit status: see ramwatchd --help")
    _capture_options(run)
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS", help="the command to run")

    report = sub.add_parser("report", help="render a saved capture again")
    report.add_argument("file", metavar="FILE.json")
    report.add_argument("--png", dest="picture", metavar="FILE", help="draw the timeline, stacked by class")
    report.add_argument("--timeline", action="store_true", help="print the timeline too")
    report.add_argument("--flamegraph", metavar="FILE",
                        help="write the growth by call site as folded stacks, weighted by resident bytes "
                             "(for flamegraph.pl, speedscope, Grafana's flame graph)")

    diff = sub.add_parser("diff", help="what changed between two captures of the same program",
                          description="Compare two saved captures of the same program (two versions, "
                                      "two configs): by process, class, phase and call site. Processes "
                                      "are matched by name, not pid.")
    diff.add_argument("before", metavar="A.json")
    diff.add_argument("after", metavar="B.json")
    diff.add_argument("--min-change", dest="smallest", type=_size(0), default=1 << 20, metavar="SIZE",
                      help="leave out changes smaller than SIZE (default 1.0 MiB)")

    from .drivers.daemon import live
    top = sub.add_parser("top", help="a live, full-screen view of the node's host memory, like htop (q quits)",
                         description="Every process (or group) with its memory by class, PSS, CUDA pinned bytes "
                                     "requested and mapped, /dev/shm and its weights' page cache; the node's "
                                     "MemAvailable and headroom. Keys: < > sort, r reverse, g groups, q quit. "
                                     "--once (or a pipe) prints one frame as text.")
    live.add_arguments(top)

    daemon = sub.add_parser("daemon", help="watch every process on the node and serve Prometheus metrics",
                            description="Watch every process on the node, grouped as the config "
                                        "says, and serve Prometheus metrics. SIGHUP reloads the config.",
                            epilog="example config, every key documented: deploy/config.example.yaml")
    config = daemon.add_mutually_exclusive_group()
    config.add_argument("--config", metavar="FILE", help="YAML config (default: built-in defaults)")
    config.add_argument("--check-config", metavar="FILE",
                        help="check FILE as the daemon would read it, say what is wrong, and exit")
    daemon.add_argument("--listen", metavar="ADDR:PORT", help="override listen.address and listen.port")

    sub.add_parser("doctor", help="check every prerequisite and say how to fix what is missing")
    demo = sub.add_parser("demo", help="capture a built-in workload whose allocations are known")
    _capture_options(demo)
    return p


def _settle(parser, args):
    """Fill in the capture options not given; refuse those given to a command
    that takes none, and choices that contradict each other. (Other commands'
    options have dests of their own, so that one given is one of theirs.)"""
    given = [dest for dest in parser.capture_flags if dest in vars(args)]
    if args.command not in CAPTURE_COMMANDS and given:
        parser.error(f"{parser.capture_flags[given[0]]} is an option of a capture (--pid, run, demo), "
                     f"not of {args.command}")
    if args.command is not None and "pid" in given:
        parser.error(f"--pid attaches to a process; {args.command} starts one: give one of them")
    if "children" in given and "pid" not in given:
        parser.error("--children goes with --pid (run and demo follow every child already)")
    for dest, value in CAPTURE_DEFAULTS.items():
        vars(args).setdefault(dest, value)
    if args.command in CAPTURE_COMMANDS:
        if args.output and args.json:
            parser.error("give -o FILE or --json FILE, not both")
        if args.json and args.format != "json":
            parser.error(f"--json writes JSON: use -o FILE --format {args.format}")
        if args.format == "folded" and not args.stacks:
            parser.error("--format folded needs the call sites that --no-stacks leaves out")
        if args.png == "-":
            parser.error("--png needs a file: a picture does not go to a terminal")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    _settle(parser, args)
    try:
        return _dispatch(parser, args)
    except CliError as err:
        print(f"ramwatchd: {err}", file=sys.stderr)
        return err.status
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


def _dispatch(parser, args):
    if args.command == "doctor":
        from .doctor import run_doctor
        return run_doctor()
    if args.command == "report":
        return _report(args)
    if args.command == "diff":
        return _diff(args)
    if args.command == "top":
        return _live_view(args)
    if args.command == "daemon":
        return _daemon(args)
    if args.command == "run":
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not argv:
            parser.error("run needs a command: ramwatchd run -- CMD ARGS")
        return _capture(args, argv=argv)
    if args.command == "demo":
        return _capture(args, argv=[sys.executable, "-m", "ramwatchd.workloads", "--demo"])
    if args.pid is None:
        parser.error("say what to capture: --pid PID, or run -- CMD")
    return _capture(args, pid=args.pid)


# ---- top, report, diff -------------------------------------------------------------

def _live_view(args):
    from .doctor import capture_blockers
    from .drivers.daemon import live
    blockers = capture_blockers()
    if blockers:
        raise CliError(blockers[0] + " (run 'ramwatchd doctor' for every check)")
    return live.run(args)


def _load(path):
    from .views.report import ReportError, load
    try:
        return load(path)
    except ReportError as err:
        raise CliError(str(err), USAGE) from None


def _report(args):
    from .views.report import render_summary, render_timeline
    result = _load(args.file)
    if args.timeline:
        print(render_timeline(result))
    print(render_summary(result), end="")
    if args.picture:
        _draw(result, args.picture)
    if args.flamegraph:
        _flamegraph(result, args.flamegraph)
    return OK


def _diff(args):
    from .views.diff import render_diff
    before, after = _load(args.before), _load(args.after)
    print(render_diff(before, after, names=("A", "B"), min_change=args.smallest), end="")
    return OK


def _flamegraph(result, path):
    from .views.report import folded_stacks
    try:
        with open(path, "w") as f:
            f.writelines(line + "\n" for line in folded_stacks(result))
    except OSError as err:
        raise CliError(f"cannot write {path}: {err.strerror}") from None
    print(f"folded stacks written to {path}")


def _draw(result, path, dest=None):
    """Draw to path, or through dest (a SaveTo made ready for path)."""
    from .views.plot import PlotError, draw_timeline
    try:
        draw_timeline(result, dest.temp if dest else path)
    except PlotError as err:
        raise CliError(str(err)) from None
    if dest:
        dest.commit()
    print(f"timeline drawn to {path}")


# ---- the daemon --------------------------------------------------------------------

def _daemon(args):
    import logging
    from .drivers.daemon import config as configuration
    try:
        config = configuration.load(args.config or args.check_config) if (args.config or args.check_config) \
            else configuration.Config()
        if args.listen:
            config.address, config.port = _listen(args.listen)
    except configuration.ConfigError as err:
        raise CliError(str(err), USAGE) from None
    if args.check_config:
        print(f"{args.check_config}: ok: {len(config.groups)} group rule(s), metrics on "
              f"{config.address}:{config.port}" + (", TLS" if config.web.tls_cert_file else ""))
        return OK
    _check_port(config)
    _check_prerequisites()
    from .drivers.daemon.daemon import Daemon
    from .drivers.daemon.exporter import serve
    from .kernel.probes import ProbeError
    logging.basicConfig(format="ramwatchd: %(message)s", level=logging.INFO, stream=sys.stderr)
    try:
        daemon = Daemon(config)
    except ProbeError as err:
        raise CliError(str(err)) from None
    try:
        server = serve(daemon, config)
    except OSError as err:
        raise CliError(f"cannot serve on {config.address}:{config.port}: {err.strerror or err}") from None
    daemon.install_signals(args.config)
    logging.getLogger("ramwatchd").info("serving metrics on %s:%d (config: %s)",
                                        config.address, config.port, config.source)
    daemon.run()
    server.shutdown()
    return OK


def _check_port(config):
    """Refuse an address or port that cannot be served before spending seconds
    compiling: another exporter already on it, an address not on this host."""
    import socket
    try:
        family = socket.getaddrinfo(config.address, config.port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((config.address, config.port))
    except OSError as err:
        raise CliError(f"cannot serve on {config.address}:{config.port}: {err.strerror or err}") from None


def _listen(text):
    from .drivers.daemon.config import ConfigError
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--listen: expected ADDRESS:PORT such as 127.0.0.1:9725, not {text!r}")
    return host.strip("[]"), int(port)


def _check_prerequisites():
    from .doctor import capture_blockers
    blockers = capture_blockers()
    if blockers:
        raise CliError(blockers[0] + " (run 'ramwatchd doctor' for every check)")


# ---- a capture ---------------------------------------------------------------------

class _Endings:
    """SIGTERM and SIGHUP end a capture as Ctrl-C does. While it runs, the
    capture's own handlers stop it and finish what was collected; before it
    runs, they end ramwatchd with nothing to save; once it is finishing, they
    are noted and waited out, so that the summary and the saved file are whole."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.received = None
        self._previous = {sig: signal.signal(sig, self._interrupt) for sig in self.SIGNALS}

    def _interrupt(self, signum, _frame):
        self.received = signum
        raise KeyboardInterrupt

    def finishing(self):
        for sig in self.SIGNALS:
            signal.signal(sig, self._wait_out)

    def _wait_out(self, signum, _frame):
        if self.received is None:
            print("ramwatchd: finishing: the summary and the saved capture come in a moment",
                  file=sys.stderr, flush=True)
        self.received = signum

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _Stdout:
    """-o -: the capture goes to stdout, and everything else that would (the
    timeline, the summary, a quiet program's own output) to stderr."""

    path = "-"

    def __init__(self):
        sys.stdout.flush()
        self._fd = os.dup(1)
        os.dup2(2, 1)

    def write(self, text):
        with open(self._fd, "w") as f:
            f.write(text)
        self._fd = None

    def discard(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _destinations(args):
    """(the capture's file, the picture's), each made ready now: a path that
    cannot be written is refused before the capture, not after it."""
    from .drivers.capture.result import SaveTo
    made = []
    for path in (args.output or args.json, args.png):
        try:
            made.append(None if path is None else _Stdout() if path == "-" else SaveTo(path))
        except OSError as err:
            _discard(made)
            raise CliError(f"cannot write {path}: {err.strerror or err}") from None
    return made


def _capture(args, pid=None, argv=None):
    _check_prerequisites()
    from .drivers.capture.program import TargetError, check_command
    from .drivers.capture.session import check_pid
    try:   # check the target before spending a second on compiling
        check_pid(pid) if pid is not None else check_command(argv)
    except TargetError as err:
        raise CliError(str(err)) from None
    saved, picture = _destinations(args)
    endings = _Endings()
    try:
        return _traced(args, pid, argv, endings, saved, picture)
    finally:
        endings.restore()
        _discard([saved, picture])


def _discard(destinations):
    for dest in destinations:
        if dest is not None:
            dest.discard()


def _traced(args, pid, argv, endings, saved, picture):
    from .drivers.capture.program import TargetError
    from .drivers.capture.session import Capture
    from .kernel.probes import ProbeError
    from .views.report import render_summary
    from .views.timeline import format_entry, header

    show = (lambda e: None) if args.quiet else (lambda e: print(format_entry(e), flush=True))
    print("ramwatchd: compiling and attaching the BPF programs...", file=sys.stderr, flush=True)
    cap = None
    try:
        cap = Capture(_options(args, following=argv is not None or args.children), sink=show)
        if pid is not None:
            cap.attach_pid(pid)
        else:
            cap.start_command(argv)
    except (ProbeError, TargetError) as err:
        _abandon(cap)
        raise CliError(str(err)) from None
    except KeyboardInterrupt:
        _abandon(cap)
        return 128 + (endings.received or signal.SIGINT)
    what = f"pid {pid}" if pid is not None else " ".join(argv)
    print(f"ramwatchd: tracing {what}; Ctrl-C ends the capture", file=sys.stderr, flush=True)
    if not args.quiet:
        print(header())
    endings.finishing()
    try:
        cap.run()
    except Exception:
        import traceback
        traceback.print_exc()
        print(f"ramwatchd: {cap.ended_because}; what was collected is saved below", file=sys.stderr)
    result = cap.result()
    print(render_summary(result), end="")
    over = _budget(result, args)
    if saved:
        _save(result, saved, args.format)
    if picture:
        _draw(result, picture.path, picture)
    endings.restore()    # all is saved: Ctrl-C may cut the detaching short
    cap.close()
    return _status(cap, argv, over)


def _options(args, following):
    from .drivers.capture.session import CaptureOptions
    from .kernel.probes import ProbeOptions
    from .ledger.classes import DEFAULT_WEIGHT_PATTERNS, Classifier
    return CaptureOptions(
        children=following, duration=args.duration, min_change=args.min_change, spike_min_rise=args.spike,
        probe=ProbeOptions(follow_children=following, exact_rss=args.exact_rss, rss_step_bytes=args.rss_step,
                           min_syscall_bytes=args.min_syscall, fault_sample_period=args.fault_sample,
                           stacks=args.stacks),
        classifier=Classifier(args.weights or DEFAULT_WEIGHT_PATTERNS),
        phase_patterns=tuple(args.phase or ()), show_output=not args.quiet)


def _abandon(cap):
    """A capture that never ran: a program started for it does not run untraced."""
    if cap is not None:
        if cap.program is not None:
            cap.program.end()
        cap.close()


def _save(result, dest, fmt):
    if fmt == "folded":
        from .views.report import folded_stacks
        text = "".join(line + "\n" for line in folded_stacks(result))
    else:
        text = json.dumps(result, indent=1) + "\n"
    try:
        dest.write(text)
    except OSError as err:
        raise CliError(f"cannot write {dest.path}: {err.strerror or err}") from None
    if dest.path != "-":
        follow = f"ramwatchd report {dest.path}" if fmt == "json" else f"flamegraph.pl {dest.path} > growth.svg"
        print(f"capture saved to {dest.path} ({follow})")


def _budget(result, args):
    """Print the budget's verdict, if one was set; whether it was passed."""
    if args.max_rss is None and not args.max_class:
        return False
    from .views.diff import over_budget, render_budget
    breaches = over_budget(result, args.max_rss, args.max_class or ())
    print("\n".join(render_budget(result, breaches, args.max_rss, args.max_class or ())))
    for _, line in breaches[:1]:
        print(f"ramwatchd: over budget: {line}", file=sys.stderr)
    return bool(breaches)


def _status(cap, argv, over_budget):
    if cap.failure:
        return INTERNAL_ERROR
    code = cap.exit_code if argv is not None else None
    if code:
        return code if code > 0 else 128 - code
    return OVER_BUDGET if over_budget else OK


if __name__ == "__main__":
    sys.exit(main())
