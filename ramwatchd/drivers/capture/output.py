"""The lines traced processes print, rebuilt per writer from the kernel's
records of their writes to stdout and stderr.

Each record holds the start of one write (kernel.events.Output), its time and
its writer. Lines are rebuilt per (process, fd), so two processes sharing a
pipe never merge into one line, and a line takes the time of the write that
began it. Under `run` the program's output also comes through a pipe, which
has every byte; its lines are shown on the timeline with the writer and time
of the matching kernel line.
"""
from collections import deque
from dataclasses import dataclass

PARTIAL_LINE_S = 1.0      # a line with no newline yet is taken as it is after this
MATCH_WINDOW_S = 5.0      # a pipe line is matched with kernel lines this recent
MATCH_WAIT_S = 0.2        # and waits this long for its kernel line to be polled


@dataclass
class Line:
    t: float
    pid: int
    text: str


class Writers:
    """Lines per writer, from kernel.events.Output events."""

    def __init__(self):
        self._pending = {}    # (pid, fd) -> [t of the first write, bytes]

    def feed(self, ev, t):
        """An Output event at t (the capture's clock); returns the lines it completed."""
        key = (ev.pid, ev.fd)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = [t, b""]
        pending[1] += ev.data
        lines = []
        while b"\n" in pending[1]:
            text, _, rest = pending[1].partition(b"\n")
            lines.append(Line(pending[0], ev.pid, _text(text)))
            pending[0], pending[1] = t, rest
        if not ev.whole:
            # Only the write's start was sent; the next write starts after its
            # unseen rest. A line begun in this write is cut short: if it is the
            # write's only line, its start is all there is to name it by.
            if not lines:
                lines.append(Line(pending[0], ev.pid, _text(pending[1])))
            pending[1] = b""
        if not pending[1]:
            del self._pending[key]
        return [line for line in lines if line.text.strip()]

    def flush(self, now, final=False):
        """(line, fd) of the lines left without a newline for PARTIAL_LINE_S
        (all of them if final)."""
        out = []
        for key, (t, data) in list(self._pending.items()):
            if final or now - t >= PARTIAL_LINE_S:
                del self._pending[key]
                if data.strip():
                    out.append((Line(t, key[0], _text(data)), key[1]))
        return out


class PipeMatcher:
    """Times the lines read from the program's pipe: each takes the time and
    writer of the kernel line with the same text, else its read time and the
    program itself."""

    def __init__(self):
        self.kernel_lines = deque()   # Line, recent, in time order
        self._waiting = deque()       # (read time, text) from the pipe

    def kernel_line(self, line):
        self.kernel_lines.append(line)

    def pipe_line(self, read_t, text):
        self._waiting.append((read_t, text))

    def take(self, now, program_pid, final=False):
        """Pipe lines ready to show, as Lines."""
        while self.kernel_lines and self.kernel_lines[0].t < now - MATCH_WINDOW_S:
            self.kernel_lines.popleft()
        out = []
        while self._waiting:
            read_t, text = self._waiting[0]
            match = self._match(text)
            if match is None and not final and now - read_t < MATCH_WAIT_S:
                break             # its kernel line may not be polled yet
            self._waiting.popleft()
            out.append(Line(match.t, match.pid, text) if match else Line(read_t, program_pid, text))
        return out

    def _match(self, text):
        for i, line in enumerate(self.kernel_lines):
            if line.text == text or (line.text and text.startswith(line.text)):
                del self.kernel_lines[i]
                return line
        return None


def _text(data):
    """A line as a terminal shows it: after its last carriage return."""
    return data.decode(errors="replace").rstrip("\r").rpartition("\r")[2]
