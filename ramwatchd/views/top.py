"""The live view of the node (`ramwatchd top`), as htop shows CPU: every
watched process, or every group, with its resident bytes by class, PSS, CUDA
pinned bytes requested and mapped, and the page cache of the weights files it
maps; the node's MemAvailable and headroom above them. It draws plain frames
(Frame, filled from the daemon's collection) on a curses screen, or prints one
as text. Plain curses, no colours: it works over SSH, in 80x24, and on a
narrower screen it drops the columns that hold the least memory."""
import curses
import os
import sys
import time
from dataclasses import dataclass, field

MIN_COMMAND = 16        # the last, text column keeps at least this much of a narrow screen
FOOTER = "q quit  < > sort column  r reverse  g processes/groups  up/down scroll"

# Short titles of the memory classes (a class without one shows its name).
CLASS_TITLES = {"anon_heap": "HEAP", "anon": "ANON", "stack": "STACK", "file_weights": "WEIGHTS",
                "file_code": "CODE", "file_other": "FILE", "shm_posix": "SHM", "shm_sysv": "SYSV",
                "shm_anon": "SHMANON", "cuda_pinned": "PINNED", "device": "DEV"}


class TerminalError(Exception):
    """The terminal cannot be drawn on; the message says why."""


# ---- what a frame holds -------------------------------------------------------

@dataclass
class Row:
    """One process, or one group: its memory at its last look."""
    name: str                   # a process's comm, or the group's name
    group: str
    command: str = ""           # a process's command line
    pid: int = 0                # 0 for a group
    processes: int = 1
    rss: int = 0                # resident bytes: its classes, which add up to VmRSS
    pss: int = 0
    classes: dict = field(default_factory=dict)    # class -> resident bytes
    pinned_requested: int = 0   # CUDA pinned ranges: asked of the driver
    pinned_mapped: int = 0      # and the mappings that hold them
    weights_cache: int = 0      # page cache of the weights files it maps


@dataclass
class Node:
    total: int = 0              # MemTotal
    available: int = 0          # MemAvailable
    unreclaimable: int = 0      # PSS of the pinned, shared and anonymous classes
    shm: int = 0                # resident bytes of the /dev/shm objects
    shm_orphaned: int = 0       # of which no process maps
    weights_cache: int = 0      # page cache of the mapped weights files


@dataclass
class Frame:
    classes: tuple              # the memory classes, in their order
    processes: list             # [Row], those looked at
    groups: list                # [Row]
    node: Node
    unread: int = 0             # processes not looked at yet
    smaps_reads: int = 0
    events_lost: int = 0
    taken: float = 0.0          # time.time() of the frame


def headroom(node):
    """The share of what could still grow that MemAvailable leaves, as the
    node headroom alert counts it; None before meminfo was read."""
    return node.available / (node.unreclaimable + node.available) if node.total else None


# ---- columns --------------------------------------------------------------------

def short_bytes(n):
    """Bytes in at most six characters, as htop shows them: 812K, 256M, 1.50G, 12.5G, 512G."""
    if n < 1 << 20:
        return f"{n >> 10}K" if n else "0"
    if n < 1 << 30:
        return f"{n >> 20}M"
    unit, size = ("G", 1 << 30) if n < 1 << 40 else ("T", 1 << 40)
    value = n / size
    return f"{value:.2f}{unit}" if value < 10 else f"{value:.1f}{unit}" if value < 100 else f"{value:.0f}{unit}"


@dataclass(frozen=True)
class Column:
    key: str                    # its name for --sort
    title: str
    width: int                  # 0: the text column that takes the rest of the line
    value: object               # Row -> what it shows and sorts by
    shown: object = None        # value -> its text; None for a text column
    largest_first: bool = True  # its own order (r reverses it); text goes a-z

    @property
    def text(self):
        return self.shown is None

    def cell(self, row, width=None):
        width = self.width if width is None else width
        value = self.value(row)
        if self.text:
            return value[:width].ljust(width) if width else value
        return self.shown(value).rjust(width)


def _size(key, title, value):
    return Column(key, title, max(6, len(title) + 1), value, short_bytes)   # room for the sort mark


def _text(key, title, width, value):
    return Column(key, title, width, value, largest_first=False)


def _class(cls):
    return _size(cls, CLASS_TITLES.get(cls, cls.upper()), lambda r: r.classes.get(cls, 0))


PID = Column("pid", "PID", 7, lambda r: r.pid, str, largest_first=False)
PROCESSES = Column("processes", "PROCS", 6, lambda r: r.processes, str)
GROUP = _text("group", "GROUP", 12, lambda r: r.group)
COMMAND = _text("command", "COMMAND", 0, lambda r: _program(r.command) or r.name)
LAST_GROUP = _text("group", "GROUP", 0, lambda r: r.group)
BESIDE = {   # columns shown right after a class's own
    "cuda_pinned": [_size("pinned_requested", "PINREQ", lambda r: r.pinned_requested),
                    _size("pinned_mapped", "PINMAP", lambda r: r.pinned_mapped)],
    "file_weights": [_size("weights_cache", "WCACHE", lambda r: r.weights_cache)],
}
# The same column in the other mode: g keeps the sort where it can.
COUNTERPART = {"pid": "processes", "processes": "pid", "command": "group"}
PROCESSES_ONLY, GROUPS_ONLY = {"pid", "command"}, {"processes"}


def _program(command):
    """A command line with its program's folder left out: on a narrow screen
    the arguments say more than /usr/local/bin/."""
    program, _, args = command.partition(" ")
    return f"{os.path.basename(program)} {args}".rstrip()


def columns(classes, groups):
    """Every column of a mode, left to right."""
    out = [PROCESSES if groups else PID, _size("rss", "RSS", lambda r: r.rss),
           _size("pss", "PSS", lambda r: r.pss)]
    for cls in classes:
        out += [_class(cls)] + BESIDE.get(cls, [])
    return out + ([LAST_GROUP] if groups else [GROUP, COMMAND])


def sort_keys(classes):
    """What --sort takes, lower case: each column's title or key (a class
    name, say), naming the column's key."""
    both = columns(classes, groups=False) + columns(classes, groups=True)
    return {**{c.title.lower(): c.key for c in both}, **{c.key: c.key for c in both}}


def titles(classes):
    """Every column's title, lower case, in the order the screen shows them."""
    both = columns(classes, groups=False) + columns(classes, groups=True)
    return list(dict.fromkeys(c.title.lower() for c in both))


def fit(cols, rows, sort, width):
    """The columns that fit in width: the row's identity, RSS, PSS, the sort
    column and the text column always; then those that hold the most bytes.
    A column that holds nothing is left out."""
    must = {cols[0].key, "rss", "pss", cols[-1].key, sort}
    used = sum(c.width + 1 for c in cols if c.key in must) + MIN_COMMAND
    keep = set(must)
    others = [c for c in cols if c.key not in must]
    totals = {c.key: 0 if c.text else sum(c.value(r) for r in rows) for c in others}
    for c in sorted(others, key=lambda c: (c.text, -totals[c.key])):
        if (c.text or totals[c.key]) and used + c.width + 1 <= width:
            keep.add(c.key)
            used += c.width + 1
    return [c for c in cols if c.key in keep]


# ---- what is shown --------------------------------------------------------------

@dataclass
class View:
    """What the person chose: processes or groups, the sort, the scroll."""
    groups: bool = False
    sort: str = "pss"
    reverse: bool = False       # against the column's own order (largest first, or a-z)
    first: int = 0              # the first row on screen
    page: int = 1               # rows the screen held at its last draw

    def __post_init__(self):
        if self.sort in (PROCESSES_ONLY if self.groups else GROUPS_ONLY):
            self.sort = COUNTERPART[self.sort]

    def column(self, cols):
        return next(c for c in cols if c.key == self.sort)

    def toggle_groups(self):
        self.groups = not self.groups
        self.sort = COUNTERPART.get(self.sort, self.sort)
        self.first = 0

    def step_sort(self, shown, step):
        keys = [c.key for c in shown]
        at = keys.index(self.sort) if self.sort in keys else 0
        self.sort = keys[(at + step) % len(keys)]

    def scroll(self, rows, step):
        self.first = max(0, min(self.first + step, rows - self.page))


def ordered(rows, column, reverse):
    """Rows in the column's own order (reversed if asked), ties by name and pid."""
    by_name = sorted(rows, key=lambda r: (r.name, r.pid))
    value = (lambda r: column.value(r).lower()) if column.text else column.value
    return sorted(by_name, key=value, reverse=column.largest_first != reverse)


def header(frame, view, width=None, interval=None):
    """The lines above the table: the node, then ramwatchd's own figures."""
    sort = view.column(columns(frame.classes, view.groups))
    if sort.text:
        direction = "z-a" if view.reverse else "a-z"
    else:
        direction = "largest first" if sort.largest_first != view.reverse else "smallest first"
    unread = f" ({frame.unread} not read yet)" if frame.unread else ""
    lines = [
        [f"ramwatchd top  {time.strftime('%H:%M:%S', time.localtime(frame.taken))}",
         f"processes {len(frame.processes) + frame.unread}{unread}", f"groups {len(frame.groups)}"]
        + ([f"refresh {interval:g}s"] if interval else []),
        *_node_lines(frame.node),
        [f"sorted by {sort.title}, {direction}", f"smaps reads {frame.smaps_reads}",
         f"events lost {frame.events_lost}"],
    ]
    return [text for segments in lines for text in _wrap(segments, width)]


def _node_lines(node):
    share = headroom(node)
    if share is None:
        return [["node memory: not read yet"]]
    return [[f"memory {short_bytes(node.total)}", f"available {short_bytes(node.available)}",
             f"unreclaimable {short_bytes(node.unreclaimable)}", f"headroom {share:.0%}"],
            [f"/dev/shm {short_bytes(node.shm)} ({short_bytes(node.shm_orphaned)} orphaned)",
             f"weights in page cache {short_bytes(node.weights_cache)}"]]


def _wrap(segments, width):
    """Segments joined by two spaces, on as few lines of width as they fit."""
    out = [segments[0]]
    for s in segments[1:]:
        if width is None or len(out[-1]) + 2 + len(s) <= width:
            out[-1] += "  " + s
        else:
            out.append(s)
    return out


def table(frame, view, width=None):
    """The table's title line and rows; width None: every column, nothing cut."""
    rows = _rows(frame, view)
    cols = columns(frame.classes, view.groups)
    by = view.column(cols)
    if width is not None:
        cols = fit(cols, rows, view.sort, width)
    fixed = sum(c.width + 1 for c in cols[:-1])
    rest = None if width is None else max(MIN_COMMAND, width - fixed)
    titles = [(c.title + "*" if c is by and width is not None else c.title) for c in cols]
    title_line = " ".join(t.rjust(c.width) if not c.text else t.ljust(c.width or 0)
                          for t, c in zip(titles, cols))
    lines = [" ".join(c.cell(r, rest if c is cols[-1] else None) for c in cols).rstrip()
             for r in ordered(rows, by, view.reverse)]
    return title_line.rstrip(), lines


def _rows(frame, view):
    return frame.groups if view.groups else frame.processes


def plain(frame, view):
    """One frame as text, for scripts: every column, every row."""
    title, rows = table(frame, view)
    return "\n".join(header(frame, view) + ["", title] + rows) + "\n"


# ---- the screen -------------------------------------------------------------------

def check_terminal():
    """Raise TerminalError if curses does not know this terminal (TERM)."""
    try:
        curses.setupterm()
    except curses.error as err:
        raise TerminalError(f"cannot draw on terminal {os.environ.get('TERM', '')!r} ({err}); "
                            "--once prints one frame as text") from None


def show(next_frame, view, interval):
    """Draw the newest frame every interval seconds, and at each key, until q.
    next_frame() gives a Frame, or None once the collection has stopped (which
    ends the view too)."""
    curses.wrapper(_loop, next_frame, view, interval)


def _loop(screen, next_frame, view, interval):
    try:
        curses.curs_set(0)
    except curses.error:
        pass    # a terminal that cannot hide its cursor still shows the table
    frame = next_frame()
    due = time.monotonic() + interval
    while frame is not None:
        _follow_resize()
        _draw(screen, frame, view, interval)
        screen.timeout(max(0, int((due - time.monotonic()) * 1000)))
        key = screen.getch()
        if key in (ord("q"), ord("Q")):
            return
        if key == -1:
            frame = next_frame()
            due = time.monotonic() + interval
        else:
            _on_key(key, view, frame, screen.getmaxyx()[1])


def _follow_resize():
    """Take the terminal's size as it is now. curses learns of a resize from
    SIGWINCH, and with the collection running in another thread it does not
    always see it (tmux's resize-window was missed): the terminal's own size is
    the authority, checked at every refresh and key."""
    size = os.get_terminal_size(sys.__stdout__.fileno())
    if curses.is_term_resized(size.lines, size.columns):
        curses.resizeterm(size.lines, size.columns)


def _on_key(key, view, frame, width):
    """Keys as in htop where it has them: < > to pick the sort column among
    those shown, arrows and pages to scroll."""
    rows = _rows(frame, view)
    scroll = {curses.KEY_UP: -1, curses.KEY_DOWN: 1, curses.KEY_PPAGE: -view.page,
              curses.KEY_NPAGE: view.page, curses.KEY_HOME: -len(rows), curses.KEY_END: len(rows)}
    if key in (ord("<"), ord(","), curses.KEY_LEFT, ord(">"), ord("."), curses.KEY_RIGHT):
        shown = fit(columns(frame.classes, view.groups), rows, view.sort, width)
        view.step_sort(shown, -1 if key in (ord("<"), ord(","), curses.KEY_LEFT) else 1)
    elif key == ord("r"):
        view.reverse = not view.reverse
    elif key in (ord("g"), ord("\t")):
        view.toggle_groups()
    elif key in scroll:
        view.scroll(len(rows), scroll[key])


def _draw(screen, frame, view, interval):
    height, width = screen.getmaxyx()
    lines = header(frame, view, width, interval)[:max(0, height - 2)]
    title, rows = table(frame, view, width)
    screen.erase()
    for y, line in enumerate(lines):
        _put(screen, y, line, width)
    y = len(lines)
    _put(screen, y, title, width, curses.A_REVERSE)
    view.page = max(1, height - y - 2)
    view.scroll(len(rows), 0)
    for i, line in enumerate(rows[view.first:view.first + view.page]):
        _put(screen, y + 1 + i, line, width)
    _put(screen, height - 1, FOOTER, width, curses.A_REVERSE)
    screen.refresh()


def _put(screen, y, text, width, attr=curses.A_NORMAL):
    try:
        screen.addnstr(y, 0, text.ljust(width), width, attr)
    except curses.error:
        pass    # curses reports writing the screen's last cell as an error, after writing it
