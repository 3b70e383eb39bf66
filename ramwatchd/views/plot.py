"""A PNG timeline of a saved capture: host RAM by class over time, with the
kernel's finer RSS total, phases and spikes drawn over it.

matplotlib is an optional extra, so it is imported only when a picture is asked for.
"""
from bisect import bisect_right

MIB = 1 << 20
GIB = 1 << 30
MAX_LABELLED_PHASES = 15
PHASE_LABEL_CHARS = 30

# Fixed per class so that two pictures of different captures read the same way.
_COLORS = {
    "anon_heap": "#1f77b4", "anon": "#aec7e8", "stack": "#9467bd",
    "file_weights": "#ff7f0e", "file_code": "#ffbb78", "file_other": "#c7c7c7",
    "shm_posix": "#2ca02c", "shm_sysv": "#98df8a", "shm_anon": "#17becf",
    "cuda_pinned": "#d62728", "device": "#8c564b",
}
_UNKNOWN_COLOR = "#7f7f7f"


class PlotError(Exception):
    """one-line reason, shown to the user"""


def _holding(times, grid, exited_at):
    """For each grid time, the index of the sample whose value holds then: the
    last one at or before it. None before the first sample or once exited."""
    out = []
    for t in grid:
        i = bisect_right(times, t) - 1
        out.append(None if i < 0 or (exited_at is not None and t >= exited_at) else i)
    return out


def _grid(series_times, procs, end):
    """Union of all sample times, exits and the capture's end, so every step and
    every exit shows up as an edge and the last level is drawn up to the end."""
    grid = {t for times in series_times for t in times}
    grid |= {p["exited_at"] for p in procs if p["exited_at"] is not None}
    grid.add(end)
    return sorted(grid)


def _add_steps(total, values, holding):
    for k, i in enumerate(holding):
        if i is not None:
            total[k] += values[i]


def _class_totals(result, classes):
    """The grid and {class: bytes summed over processes at each grid time}."""
    procs = [p for p in result["processes"] if p["history"]]
    times = [[s["t"] for s in p["history"]] for p in procs]
    grid = _grid(times, procs, result["duration_s"])
    totals = {c: [0] * len(grid) for c in classes}
    for p, ts in zip(procs, times):
        holding = _holding(ts, grid, p["exited_at"])  # shared by all classes
        for c in classes:
            _add_steps(totals[c], [s["classes"].get(c, 0) for s in p["history"]], holding)
    return grid, totals


def _rss_total(result):
    """Kernel RSS summed over processes on its own, finer grid; None if never recorded.
    Kept off the class grid so short spikes between smaps looks stay visible."""
    procs = [p for p in result["processes"] if p.get("rss_steps")]
    if not procs:
        return None
    times = [[t for t, _ in p["rss_steps"]] for p in procs]
    grid = _grid(times, procs, result["duration_s"])
    total = [0] * len(grid)
    for p, ts in zip(procs, times):
        _add_steps(total, [v for _, v in p["rss_steps"]], _holding(ts, grid, p["exited_at"]))
    return grid, total


def _unit(peak):
    return ("GiB", GIB) if peak >= GIB else ("MiB", MIB)


def _target_name(result):
    target = result["target"]
    if "command" in target:
        name = " ".join(target["command"])
        return name if len(name) <= 60 else name[:57] + "..."
    return f"pid {target.get('pid')}"


def _draw_classes(ax, grid, totals, scale):
    """Stacked areas as steps: stackplot would interpolate between samples,
    which suggests memory grew gradually when it was only looked at later."""
    base = [0.0] * len(grid)
    for c, row in totals.items():
        top = [b + v / scale for b, v in zip(base, row)]
        ax.fill_between(grid, base, top, step="post", linewidth=0,
                        color=_COLORS.get(c, _UNKNOWN_COLOR), label=c)
        base = top


def _labelled_phases(phases):
    """ids of the phases to label. Explicit marks always get one; program output
    only up to a limit, since a chatty program would otherwise bury the chart in text."""
    if len(phases) <= MAX_LABELLED_PHASES:
        return {id(p) for p in phases}
    others = [p for p in phases if p["source"] != "mark"][:MAX_LABELLED_PHASES]
    return {id(p) for p in phases if p["source"] == "mark"} | {id(p) for p in others}


def _draw_phases(ax, phases):
    labelled = _labelled_phases(phases)
    for p in phases:
        ax.axvline(p["t"], color="0.35", linestyle=":", linewidth=0.8)
        if id(p) in labelled:
            name = p["name"]
            if len(name) > PHASE_LABEL_CHARS:
                name = name[:PHASE_LABEL_CHARS - 1] + "…"
            # x in data, y in axes coordinates: labels sit at the top whatever the scale
            ax.text(p["t"], 0.98, name, transform=ax.get_xaxis_transform(), rotation=90,
                    va="top", ha="right", fontsize=7, color="0.25")


def _draw_spikes(ax, spikes, scale):
    if spikes:
        ax.plot([s["peak_t"] for s in spikes], [s["peak"] / scale for s in spikes],
                linestyle="none", marker="v", color="red", markersize=6, label="spike peak")


def draw_timeline(result, path):
    """Render the capture `result` as a PNG at `path`; raises PlotError on failure."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # no display needed; must precede the pyplot import
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError("drawing a PNG needs matplotlib: pip install 'ramwatchd[report]'") from None
    if not any(p["history"] for p in result["processes"]):
        raise PlotError("the capture has no samples to draw")

    grid, totals = _class_totals(result, result["classes"])
    totals = {c: row for c, row in totals.items() if max(row) > MIB}
    rss = _rss_total(result)
    peak = max([sum(col) for col in zip(*totals.values())] + (rss[1] if rss else []) + [0])
    unit, scale = _unit(peak)

    fig, ax = plt.subplots(figsize=(11, 5.5))
    try:
        _draw_classes(ax, grid, totals, scale)
        if rss:
            ax.step(rss[0], [v / scale for v in rss[1]], where="post", color="black",
                    linewidth=0.9, label="RSS (kernel)")
        _draw_phases(ax, result["phases"])
        _draw_spikes(ax, result["spikes"], scale)
        ax.set_xlim(0, max(grid[-1], rss[0][-1] if rss else 0))
        ax.margins(y=0.12)  # headroom so phase labels at the top don't sit on the data
        ax.set_ylim(bottom=0)
        ax.set_xlabel("seconds since capture start")
        ax.set_ylabel(unit)
        ax.set_title(f"ramwatchd: {_target_name(result)} — host RAM by class")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
        fig.tight_layout()
        # format is fixed so a path without a .png suffix still gets a PNG
        fig.savefig(path, dpi=110, format="png")
    except OSError as err:
        raise PlotError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        plt.close(fig)
