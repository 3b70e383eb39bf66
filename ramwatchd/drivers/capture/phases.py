"""Phases: the stretches of its run a program names itself, by the lines it
prints and by its marks (ramwatchd.mark()). Each process has its own; a
process that names none is in its parent's.

Not every line is a phase. By default log noise is left out: tracebacks,
warnings, debug lines, progress bars. `--phase REGEX` chooses the lines
instead. A phase is named by its message, without the log prefix that vLLM,
SGLang or Python's logging put before it.
"""
import bisect
import re

# "(EngineCore_DP0 pid=2771) INFO 12-01 20:33:41 [kv_cache_utils.py:2327] msg",
# "INFO:root:msg", "[2026-12-01 20:33:41 TP0] msg", "2026-12-01 20:33:41,123 - x - INFO - msg"
_LOG_PREFIX = re.compile(
    r"^(?:\([\w:.\-]+ pid=\d+\) )?"                               # vLLM's process tag
    r"(?:\[\d{4}-\d\d-\d\d[ T][\d:.,]+(?: [^\]]*)?\]\s*)?"            # SGLang's [time TPn]
    r"(?:\d{4}-\d\d-\d\d[ T][\d:.,]+\s*(?:-\s*[\w.]+\s*-\s*)?)?"      # logging's asctime - name -
    r"(?:(?:INFO|DEBUG|WARNING|WARN|ERROR|CRITICAL)[\s:]+(?:[\w.]+:)?\s*(?:-\s*)?)?"
    r"(?:\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?\s+)?"                     # vLLM's time
    r"(?:\[[\w./\-]+:\d+\]\s+)?")                                     # [file.py:123]
_NOISE = re.compile(
    r"^\s*$|^\s+\^+\s*$|^\s+File \"|^During handling of|^The above exception"
    r"|\bDEBUG\b|\bWARN(?:ING)?\b|Warning:|warnings\.warn"
    r"|\d+%\||\[\d+:\d\d(?::\d\d)?<")                                    # progress bars (tqdm)
_LEVEL = re.compile(r"\b(INFO|DEBUG|WARNING|WARN|ERROR|CRITICAL)\b")


class PhaseLines:
    """Which lines mark a phase, and the phase's name."""

    def __init__(self, patterns=()):
        self.patterns = [re.compile(p) for p in patterns]
        self._in_traceback = set()    # writers in the middle of a traceback

    def name(self, pid, text):
        """The phase a line of pid's names, or None if it names none."""
        if self.patterns:
            return _message(text) if any(p.search(text) for p in self.patterns) else None
        if text.startswith("Traceback "):
            self._in_traceback.add(pid)
            return None
        if pid in self._in_traceback:
            if not text[:1].isspace():
                self._in_traceback.discard(pid)   # the exception itself: the traceback's end
            return None
        if _NOISE.search(text):
            return None
        body = _LOG_PREFIX.sub("", text, count=1)
        if body[:1].isspace():
            return None      # a continuation: a warning's source line, indented JSON, a wrapped message
        message = body.strip()[:120]
        return message if any(c.isalnum() for c in message) else None


def _message(text):
    return _LOG_PREFIX.sub("", text.strip(), count=1).strip()[:120] or text.strip()[:120]


class Phases:
    """Every process's phases, in time order."""

    def __init__(self, parent_of):
        self.phases = []          # {"t", "pid", "name", "source"}, in time order
        self._times = []
        self._own = {}            # owner key -> ([t], [phase])
        self._parent_of = parent_of   # owner key -> the parent's key, or None

    def add(self, t, owner, pid, name, source):
        """owner: the process's (pid, start); marks come with the kernel's events
        and lines through a pipe, so they may arrive out of order."""
        phase = {"t": t, "pid": pid, "name": name, "source": source}
        i = bisect.bisect_right(self._times, t)
        self._times.insert(i, t)
        self.phases.insert(i, phase)
        times, own = self._own.setdefault(owner, ([], []))
        j = bisect.bisect_right(times, t)
        times.insert(j, t)
        own.insert(j, phase)
        return phase

    def at(self, owner, t):
        """The phase owner was in at t: its own latest, else its parent's (and
        up), else None."""
        seen = set()
        while owner is not None and owner not in seen:
            seen.add(owner)
            times, own = self._own.get(owner, ((), ()))
            i = bisect.bisect_right(times, t) - 1
            if i >= 0:
                return own[i]
            owner = self._parent_of(owner)
        return None
