"""The ramwatchd command: capture (--pid, run), report, doctor and demo."""
import argparse
import json
import sys

from . import __version__
from .units import size_arg

EPILOG = """\
examples:
  ramwatchd --pid 4121 --children --duration 60 --json engine.json
  ramwatchd run -- python serve.py --model /models/llama
  ramwatchd report engine.json --png engine.png
  ramwatchd doctor
  ramwatchd demo
  ramwatchd daemon --config /etc/ramwatchd/config.yaml

Memory is split into classes that add up to the kernel's VmRSS: anon_heap, anon,
stack, file_weights, file_code, file_other, shm_posix, shm_sysv, shm_anon,
cuda_pinned, device. Sizes accept units: 16MiB, 1.5GiB, 4096.
"""


class CliError(Exception):
    """One line for the user, and exit status 1."""


class Parser(argparse.ArgumentParser):
    """Bad arguments get one line naming what is wrong, and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _positive(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above zero: {text!r}")
    return value


def _capture_options(p):
    g = p.add_argument_group("capture")
    g.add_argument("--duration", type=_positive, metavar="S",
                   help="stop after S seconds (default: when the traced processes exit, or Ctrl-C)")
    g.add_argument("--json", metavar="FILE", help="save the capture, for 'ramwatchd report FILE'")
    g.add_argument("--png", metavar="FILE", help="also draw the timeline, stacked by class, to FILE")
    g.add_argument("--weights", action="append", metavar="GLOB",
                   help="file pattern counted as model weights (repeatable; default: "
                        "*.safetensors *.bin *.pt *.pth *.gguf *.ckpt *.onnx ...)")
    g.add_argument("--min-change", type=size_arg, default="8MiB", metavar="SIZE",
                   help="smallest move of one mapping shown on the timeline (default 8MiB)")
    g.add_argument("--rss-step", type=size_arg, default="16MiB", metavar="SIZE",
                   help="with --exact-rss: the kernel reports a process's RSS each time it moves "
                        "this much (default 16MiB)")
    g.add_argument("--exact-rss", action="store_true",
                   help="keep exact RSS sizes and peaks in the kernel (kmem:rss_stat as a "
                        "classic tracepoint: costlier per page fault; see README 'Overhead')")
    g.add_argument("--min-syscall", type=size_arg, default="1MiB", metavar="SIZE",
                   help="smaller mmap/munmap/madvise/mremap calls are not reported (default 1MiB)")
    g.add_argument("--fault-sample", type=int, default=64, metavar="N",
                   help="sample one page fault in N for where faults land (default 64)")
    g.add_argument("--spike", type=size_arg, default="256MiB", metavar="SIZE",
                   help="a rise of SIZE that falls back within 100 ms is a spike (default 256MiB)")
    g.add_argument("--no-stacks", dest="stacks", action="store_false",
                   help="do not read the Python and native stacks behind each growth (call sites)")
    g.add_argument("--phase", action="append", metavar="REGEX",
                   help="lines that match mark phases (repeatable; default: every line the "
                        "processes print except log noise: tracebacks, warnings, debug, progress bars)")
    g.add_argument("-q", "--quiet", action="store_true",
                   help="do not print the timeline, only the summary (a program started by run "
                        "prints its own output as it would without ramwatchd)")


def build_parser():
    p = Parser(
        prog="ramwatchd", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Where did the host RAM go? Traces a process (tree) from the kernel and "
                    "prints a timeline of what grew, in which class and mapping, and why.")
    p.add_argument("--version", action="version", version=f"ramwatchd {__version__}")
    p.add_argument("--pid", type=int, metavar="PID", help="attach to a running process")
    p.add_argument("--children", action="store_true",
                   help="with --pid: also trace its descendants, present and future")
    _capture_options(p)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="start a command and capture it from its first instruction",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Start CMD under capture. Its output lines are shown in the "
                                     "timeline and become phases; children are followed.",
                         epilog="example: ramwatchd run --json load.json -- python load.py")
    _capture_options(run)
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS",
                     help="the command to run")

    report = sub.add_parser("report", help="render a saved capture again")
    report.add_argument("file", metavar="FILE.json")
    report.add_argument("--png", metavar="FILE", help="draw the timeline, stacked by class")
    report.add_argument("--timeline", action="store_true", help="print the timeline too")
    report.add_argument("--flamegraph", metavar="FILE",
                        help="write the growth by call site as folded stacks, weighted by resident bytes "
                             "(for flamegraph.pl, speedscope, Grafana's flame graph)")

    daemon = sub.add_parser("daemon", help="watch every process on the node and serve Prometheus metrics",
                            description="Watch every process on the node, grouped as the config "
                                        "says, and serve Prometheus metrics. SIGHUP reloads the config.",
                            epilog="example config, every key documented: deploy/config.example.yaml")
    daemon.add_argument("--config", metavar="FILE", help="YAML config (default: built-in defaults)")
    daemon.add_argument("--listen", metavar="ADDR:PORT", help="override listen.address and listen.port")

    sub.add_parser("doctor", help="check every prerequisite and say how to fix what is missing")
    demo = sub.add_parser("demo", help="capture a built-in workload whose allocations are known")
    _capture_options(demo)
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _dispatch(parser, args)
    except CliError as err:
        print(f"ramwatchd: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(parser, args):
    if args.command == "doctor":
        from .doctor import run_doctor
        return run_doctor()
    if args.command == "report":
        return _report(args)
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
        parser.error("say what to capture: --pid PID, or run -- CMD (see --help)")
    if args.pid <= 0:
        parser.error(f"--pid must be a process id above 0, not {args.pid}")
    return _capture(args, pid=args.pid)


def _daemon(args):
    import logging
    from .doctor import capture_blockers
    from .drivers.daemon import config as configuration
    from .drivers.daemon.daemon import Daemon
    from .drivers.daemon.exporter import serve
    from .kernel.probes import ProbeError
    try:
        config = configuration.load(args.config) if args.config else configuration.Config()
        if args.listen:
            config.address, config.port = _listen(args.listen)
    except configuration.ConfigError as err:
        print(f"ramwatchd: {err}", file=sys.stderr)
        return 2
    blockers = capture_blockers()
    if blockers:
        raise CliError(blockers[0] + " (run 'ramwatchd doctor' for every check)")
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
    return 0


def _listen(text):
    from .drivers.daemon.config import ConfigError
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--listen: expected ADDRESS:PORT such as 127.0.0.1:9725, not {text!r}")
    return host.strip("[]"), int(port)


def _report(args):
    from .views.report import ReportError, load, render_summary, render_timeline
    try:
        result = load(args.file)
    except ReportError as err:
        raise CliError(str(err)) from None
    if args.timeline:
        print(render_timeline(result))
    print(render_summary(result), end="")
    if args.png:
        _draw(result, args.png)
    if args.flamegraph:
        _flamegraph(result, args.flamegraph)
    return 0


def _flamegraph(result, path):
    from .views.report import folded_stacks
    try:
        with open(path, "w") as f:
            f.writelines(line + "\n" for line in folded_stacks(result))
    except OSError as err:
        raise CliError(f"cannot write {path}: {err.strerror}") from None
    print(f"folded stacks written to {path}")


def _draw(result, path):
    from .views.plot import PlotError, draw_timeline
    try:
        draw_timeline(result, path)
    except PlotError as err:
        raise CliError(str(err)) from None
    print(f"timeline drawn to {path}")


def _capture(args, pid=None, argv=None):
    from .doctor import capture_blockers
    blockers = capture_blockers()
    if blockers:
        raise CliError(blockers[0] + " (run 'ramwatchd doctor' for every check)")
    from .drivers.capture.program import TargetError, check_command
    from .drivers.capture.session import Capture, CaptureOptions, check_pid
    from .kernel.probes import ProbeError, ProbeOptions
    from .ledger.classes import DEFAULT_WEIGHT_PATTERNS, Classifier
    from .views.report import render_summary
    from .views.timeline import format_entry, header

    options = CaptureOptions(
        children=getattr(args, "children", False) or argv is not None,
        duration=args.duration, min_change=args.min_change,
        spike_min_rise=args.spike,
        probe=ProbeOptions(follow_children=getattr(args, "children", False) or argv is not None,
                           exact_rss=args.exact_rss, rss_step_bytes=args.rss_step,
                           min_syscall_bytes=args.min_syscall,
                           fault_sample_period=max(1, args.fault_sample), stacks=args.stacks),
        classifier=Classifier(args.weights or DEFAULT_WEIGHT_PATTERNS),
        phase_patterns=tuple(args.phase or ()), show_output=not args.quiet)
    show = (lambda e: None) if args.quiet else (lambda e: print(format_entry(e), flush=True))
    try:   # check the target before spending a second on compiling
        check_pid(pid) if pid is not None else check_command(argv)
    except TargetError as err:
        raise CliError(str(err)) from None
    print("ramwatchd: compiling and attaching the BPF programs...", file=sys.stderr, flush=True)
    try:
        cap = Capture(options, sink=show)
        if pid is not None:
            cap.attach_pid(pid)
        else:
            cap.start_command(argv)
    except (ProbeError, TargetError) as err:
        raise CliError(str(err)) from None
    what = f"pid {pid}" if pid is not None else " ".join(argv)
    print(f"ramwatchd: tracing {what}; Ctrl-C ends the capture", file=sys.stderr, flush=True)
    if not args.quiet:
        print(header())
    try:
        cap.run()
    except KeyboardInterrupt:   # a second Ctrl-C while finishing: save what there is
        pass
    except Exception:
        import traceback
        traceback.print_exc()
        print(f"ramwatchd: {cap.ended_because}; what was collected is saved below", file=sys.stderr)
    result = cap.result()
    print(render_summary(result), end="")
    if args.json:
        _save(result, args.json)
    if args.png:
        _draw(result, args.png)
    cap.close()
    if cap.failure:
        return 3
    if argv is not None and cap.exit_code is not None:
        return cap.exit_code if cap.exit_code >= 0 else 128 - cap.exit_code
    return 0


def _save(result, path):
    try:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
    except OSError as err:
        raise CliError(f"cannot write {path}: {err.strerror}") from None
    print(f"capture saved to {path} (ramwatchd report {path})")


if __name__ == "__main__":
    sys.exit(main())
