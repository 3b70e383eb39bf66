"""A PNG timeline of a saved capture: host RAM by class over time, with its
phases and spikes.

What is drawn is worked out first, as plain data (`timeline_series`):

- Each process counts what its last look at smaps found, by class, and beside it
  what the kernel's RSS counters say moved since that look: looks are rationed,
  the counters are read every 20 ms of movement. So the total at every time is
  the kernel's, and the stack adds up to it by construction; what no look has
  broken down into classes yet is a band of its own.
- An object that several processes map (a /dev/shm region, shared anonymous
  memory, a file) is counted once: in the process that holds most of it.
- A process counts from its first look: until then a forked child's pages are
  its parent's.

Phases are numbered markers above the plot, with their names in a key below it,
so no label ever sits on the data or on another label.

matplotlib is an optional extra, so it is imported only when a picture is asked for.
"""
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass
from math import ceil

MIB = 1 << 20
GIB = 1 << 30
MAX_NUMBERED_PHASES = 20
KEY_NAME_CHARS = 48

# Fixed per class so that two pictures of different captures read the same way.
_COLORS = {
    "anon_heap": "#1f77b4", "anon": "#aec7e8", "stack": "#9467bd",
    "file_weights": "#ff7f0e", "file_code": "#ffbb78", "file_other": "#c7c7c7",
    "shm_posix": "#2ca02c", "shm_sysv": "#98df8a", "shm_anon": "#17becf",
    "cuda_pinned": "#d62728", "device": "#8c564b",
}
_UNKNOWN_COLOR = "#7f7f7f"
# Bottom to top: what stays (code, weights, shared memory) below what comes and
# goes (heap, anonymous), so that movement since the last look, drawn on top,
# sits next to the classes that usually moved.
_STACKING = ["file_code", "device", "file_weights", "file_other", "shm_sysv", "shm_posix",
             "shm_anon", "cuda_pinned", "stack", "anon_heap", "anon"]
GROWN, RELEASED = "grown since the last look", "released since the last look"

# Layout, in inches. The plot's width is fixed, so MAX_NUMBERED_PHASES markers
# (each under 0.25 in wide) always fit side by side above it.
DPI = 110
WIDTH, LEFT, LEGEND_W = 11.5, 0.75, 2.5
TITLE_H, MARKERS_H, PLOT_H, AXIS_H, BOTTOM = 0.4, 0.4, 4.2, 0.6, 0.15
MARKER_RISE = 0.1      # from the plot's top edge to the markers' bottom
KEY_COLUMN_GAP = 0.3


class PlotError(Exception):
    """one-line reason, shown to the user"""


@dataclass
class Series:
    """What the picture draws, as plain data. Each value holds from its time
    to the next one."""
    times: list       # seconds since the capture started
    classes: dict     # class -> bytes at each time, shared objects counted once
    moved: list       # bytes the kernel's counters moved since each process's last look (signed)
    total: list       # the classes and the movement added up: the top of the stack

    def at(self, t):
        """Index of the value that holds at time t."""
        return max(bisect_right(self.times, t) - 1, 0)


class _Holdings:
    """One process's memory at any time of the capture: the classes its last
    look found, and the kernel's movement since that look."""

    def __init__(self, p):
        self.looks = p["history"]
        self.look_times = [h["t"] for h in self.looks]
        self.readings = p.get("rss_steps") or []
        self.reading_times = [r[0] for r in self.readings]
        self.exited_at = p["exited_at"]
        self.objects = _mapped_objects(p)

    def look(self, t):
        """The last look at or before t; None before the first one and once exited."""
        if self.exited_at is not None and t >= self.exited_at:
            return None
        i = bisect_right(self.look_times, t) - 1
        return self.looks[i] if i >= 0 else None

    def moved(self, t, look):
        """The kernel's RSS at t less the look's classes: 0 until a reading
        comes at or after the look (an earlier one is older than the look)."""
        i = bisect_right(self.reading_times, t) - 1
        if i < 0 or self.reading_times[i] < look["t"]:
            return 0
        return self.readings[i][1] - sum(look["classes"].values())


def _mapped_objects(p):
    """{(dev, inode): (class, bytes)}: the files and shared memory p mapped, as
    much of each as it held at its latest or its largest look."""
    objects = {}
    for o in p["objects_largest"] + p["objects_latest"]:
        if o["inode"]:
            key = (tuple(o["dev"]), o["inode"])
            held = objects.get(key, (None, 0))[1]
            objects[key] = (o["class"], max(held, o["rss"]))
    return objects


def _shared(holdings):
    """[{holdings: (class, bytes)}] for each object more than one process mapped."""
    mappers = {}
    for h in holdings:
        for key, held in h.objects.items():
            mappers.setdefault(key, {})[h] = held
    return [m for m in mappers.values() if len(m) > 1]


def _counted_elsewhere(shared, looks):
    """{(holdings, class): bytes} to leave out so that each shared object counts
    once, in the process that holds most of it now. A process holds at most what
    its class held at its last look: it may not have mapped the object yet."""
    elsewhere = Counter()
    for mappers in shared:
        now = {h: min(size, looks[h]["classes"].get(cls, 0))
               for h, (cls, size) in mappers.items() if h in looks}
        if len(now) > 1:
            keeper = max(now, key=now.get)
            for h, held in now.items():
                if h is not keeper:
                    elsewhere[h, mappers[h][0]] += held
    return elsewhere


def _grid(holdings, end):
    """Every time something changes: each look, reading and exit, and the
    capture's end, so the last level is drawn up to it."""
    times = {end}
    for h in holdings:
        times.update(h.look_times, h.reading_times)
        if h.exited_at is not None:
            times.add(h.exited_at)
    return sorted(t for t in times if t <= end)


def timeline_series(result):
    """The stack and total of a capture, at every time anything changed."""
    holdings = [_Holdings(p) for p in result["processes"] if p["history"]]
    shared = _shared(holdings)
    elsewhere_by_looks = {}    # looks only change at a look or an exit: reuse the work
    classes = sorted(result["classes"], key=lambda c: _STACKING.index(c) if c in _STACKING else -1)
    series = Series(_grid(holdings, result["duration_s"]), {c: [] for c in classes}, [], [])
    for t in series.times:
        looks = {h: look for h in holdings if (look := h.look(t)) is not None}
        key = tuple(id(look) for look in looks.values())
        if key not in elsewhere_by_looks:
            elsewhere_by_looks[key] = _counted_elsewhere(shared, looks)
        elsewhere = elsewhere_by_looks[key]
        column, moved = Counter(), 0
        for h, look in looks.items():
            counted = {c: held - min(held, elsewhere[h, c]) for c, held in look["classes"].items()}
            column.update(counted)
            moved += _moved(h.moved(t, look), sum(look["classes"].values()) - sum(counted.values()))
        for c, row in series.classes.items():
            row.append(column[c])
        series.moved.append(moved)
        series.total.append(sum(row[-1] for row in series.classes.values()) + moved)
    return series


def _moved(moved, counted_elsewhere):
    """A process's movement since its look. A fall is taken first from what is
    counted in another process: dropping a mapping of an object that another
    process still holds frees nothing."""
    return min(0, moved + counted_elsewhere) if moved < 0 else moved


def _unit(peak):
    return ("GiB", GIB) if peak >= GIB else ("MiB", MIB)


def _target_name(result):
    target = result["target"]
    if "command" in target:
        name = " ".join(target["command"])
        return name if len(name) <= 60 else name[:57] + "..."
    return f"pid {target.get('pid')}"


def _visible(row):
    """Bands too thin to see stay out of the legend."""
    return max(map(abs, row), default=0) >= MIB


def _draw_stack(ax, s, scale):
    """Stacked areas as steps: stackplot would interpolate between samples,
    which suggests memory grew gradually when it was only looked at later.
    Returns the legend's entries, the top band first, as they are stacked."""
    legend = []
    base = [0.0] * len(s.times)
    for c, row in s.classes.items():
        top = [b + v / scale for b, v in zip(base, row)]
        band = ax.fill_between(s.times, base, top, step="post", linewidth=0,
                               color=_COLORS.get(c, _UNKNOWN_COLOR), label=c)
        legend += [band] if _visible(row) else []
        base = top
    grown = [max(m, 0) for m in s.moved]
    band = ax.fill_between(s.times, base, [b + g / scale for b, g in zip(base, grown)], step="post",
                           linewidth=0, facecolor="0.9", edgecolor="0.45", hatch="////", label=GROWN)
    legend += [band] if _visible(grown) else []
    # A fall since the last look: the classes are as that look found them, and
    # what the kernel says has gone since is hatched over them, above the total.
    released = [min(m, 0) for m in s.moved]
    band = ax.fill_between(s.times, [b + r / scale for b, r in zip(base, released)], base, step="post",
                           linewidth=0, facecolor="white", edgecolor="0.6", hatch="\\\\\\\\", label=RELEASED)
    legend += [band] if _visible(released) else []
    line, = ax.step(s.times, [v / scale for v in s.total], where="post", color="black", linewidth=0.9,
                    label="total (kernel's counters)")
    return legend[::-1] + [line]


def _draw_spikes(ax, spikes, s, scale):
    """Each spike's peak, on the total line; returns the legend's entry."""
    if not spikes:
        return []
    return ax.plot([p["peak_t"] for p in spikes], [s.total[s.at(p["peak_t"])] / scale for p in spikes],
                   linestyle="none", marker="v", color="red", markersize=6, label="spike peak")


def _numbered_phases(phases):
    """The phases to number, in time order, and how many are left out. Explicit
    marks come first; a chatty program's output lines would bury the key."""
    if len(phases) <= MAX_NUMBERED_PHASES:
        chosen = list(phases)
    else:
        marks = [p for p in phases if p["source"] == "mark"][:MAX_NUMBERED_PHASES]
        others = [p for p in phases if p["source"] != "mark"][:MAX_NUMBERED_PHASES - len(marks)]
        chosen = sorted(marks + others, key=lambda p: p["t"])
    return chosen, len(phases) - len(chosen)


def _key_lines(phases, left_out):
    lines = []
    for n, p in enumerate(phases, 1):
        name = p["name"] if len(p["name"]) <= KEY_NAME_CHARS else p["name"][:KEY_NAME_CHARS - 1] + "…"
        lines.append(f"{n:>2}  {p['t']:7.2f}s  {name}")
    if left_out:
        lines.append(f"    and {left_out} more phases, not numbered")
    return lines


def _inches(artist, renderer):
    box = artist.get_window_extent(renderer)
    return box.width / DPI, box.height / DPI


def _make_key(fig, lines, renderer):
    """The phases' key as texts, with its layout: as many columns as fit the
    width, filled down, then across. Returns (texts, rows, column width, line
    height), in inches; the texts are put in place by _pin_key."""
    texts = [fig.text(0, 0, line, family="monospace", fontsize=7.5, color="0.2",
                      va="top", gid="phase-key") for line in lines]
    if not texts:
        return texts, 0, 0, 0
    sizes = [_inches(t, renderer) for t in texts]
    column_w = max(w for w, _ in sizes) + KEY_COLUMN_GAP
    columns = max(1, int((WIDTH - LEFT) // column_w))
    return texts, ceil(len(texts) / columns), column_w, max(h for _, h in sizes) * 1.35


def _pin_key(fig, texts, rows, column_w, line_h, top):
    """Put the key's texts in place, `top` inches from the figure's bottom."""
    w, h = fig.get_size_inches()
    for i, text in enumerate(texts):
        column, row = divmod(i, rows)
        text.set_position(((LEFT + column * column_w) / w, (top - row * line_h) / h))


def _lay_out(fig, key_lines, renderer):
    """Size the figure to hold the key below the plot; returns the plot's axes."""
    key, rows, column_w, line_h = _make_key(fig, key_lines, renderer)
    key_h = rows * line_h + (0.15 if key else 0)
    height = TITLE_H + MARKERS_H + PLOT_H + AXIS_H + key_h + BOTTOM
    fig.set_size_inches(WIDTH, height)
    _pin_key(fig, key, rows, column_w, line_h, top=BOTTOM + key_h)
    return fig.add_axes([LEFT / WIDTH, (BOTTOM + key_h + AXIS_H) / height,
                         (WIDTH - LEFT - LEGEND_W) / WIDTH, PLOT_H / height])


def _spread(wanted, widths, lo, hi, gap):
    """Centres as near to `wanted` (in order) as they can be without overlapping
    within [lo, hi]: pushed right past their left neighbour, then back left
    from the right edge."""
    x = list(wanted)
    for i in range(len(x)):
        floor = lo + widths[i] / 2 if i == 0 else x[i - 1] + (widths[i - 1] + widths[i]) / 2 + gap
        x[i] = max(x[i], floor)
    for i in reversed(range(len(x))):
        ceiling = hi - widths[i] / 2 if i == len(x) - 1 else x[i + 1] - (widths[i + 1] + widths[i]) / 2 - gap
        x[i] = min(x[i], ceiling)
    return x


def _draw_phases(fig, ax, phases, renderer):
    """A dotted line at each phase, and its number in a circle above the plot,
    tied to the line's top; numbers too close in time are moved apart."""
    top = ax.get_position().y1
    rise = MARKER_RISE / fig.get_size_inches()[1]
    markers = []
    for n, p in enumerate(phases, 1):
        ax.axvline(p["t"], color="0.35", linestyle=":", linewidth=0.8)
        markers.append(ax.annotate(
            str(n), xy=(p["t"], 1), xycoords=ax.get_xaxis_transform(), xytext=(0, top + rise),
            textcoords="figure fraction", ha="center", va="bottom", fontsize=7, color="0.15",
            bbox=dict(boxstyle="circle,pad=0.2", facecolor="white", edgecolor="0.35", linewidth=0.7),
            arrowprops=dict(arrowstyle="-", color="0.35", linewidth=0.6, shrinkA=0, shrinkB=0),
            annotation_clip=False, gid="phase-marker"))
    if not markers:
        return
    fig.draw_without_rendering()     # the circles' sizes are known once drawn
    box = ax.get_window_extent(renderer)
    widths = [m.get_bbox_patch().get_window_extent(renderer).width for m in markers]
    wanted = [ax.transData.transform((p["t"], 0))[0] for p in phases]
    for marker, x in zip(markers, _spread(wanted, widths, box.x0, box.x1, gap=2)):
        marker.xyann = (x / fig.bbox.width, top + rise)


def _draw_data(ax, result, s):
    stacked = [sum(col) for col in zip(*s.classes.values())]
    peak = max(s.total + stacked + [0])
    unit, scale = _unit(peak)
    legend = _draw_stack(ax, s, scale) + _draw_spikes(ax, result["spikes"], s, scale)
    ax.set_xlim(0, s.times[-1])
    ax.set_ylim(0, peak / scale * 1.05 or 1)
    ax.set_xlabel("seconds since capture start")
    ax.set_ylabel(unit)
    ax.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)


def timeline_figure(result):
    """The picture of a capture, as a matplotlib Figure; raises PlotError."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError("drawing a PNG needs matplotlib: pip install 'ramwatchd[report]'") from None
    if not any(p["history"] for p in result["processes"]):
        raise PlotError("the capture has no samples to draw")
    fig = Figure(figsize=(WIDTH, 1), dpi=DPI)
    renderer = FigureCanvasAgg(fig).get_renderer()
    phases, left_out = _numbered_phases(result["phases"])
    ax = _lay_out(fig, _key_lines(phases, left_out), renderer)
    _draw_data(ax, result, timeline_series(result))
    fig.text(LEFT / WIDTH, 1 - 0.12 / fig.get_size_inches()[1], f"ramwatchd: {_target_name(result)} — "
             "host RAM by class (shared objects counted once)", va="top", fontsize=10.5, gid="title")
    _draw_phases(fig, ax, phases, renderer)
    return fig


def draw_timeline(result, path):
    """Render the capture `result` as a PNG at `path`; raises PlotError on failure."""
    fig = timeline_figure(result)
    try:
        # format is fixed so a path without a .png suffix still gets a PNG
        fig.savefig(path, dpi=DPI, format="png")
    except OSError as err:
        raise PlotError(f"cannot write {path}: {err.strerror or err}") from None
