"""The live view: one printed line per timeline entry, as a capture runs."""
import os
from dataclasses import dataclass

from ..units import fmt_bytes

KINDS = ("grow", "release", "mapping", "output", "mark", "fork", "exec", "rename", "exit", "spike", "pinned",
         "cuda", "oom", "drift", "lost", "shed", "short-lived", "python")


@dataclass
class Entry:
    """One line of the timeline: plain data, as saved."""
    t: float
    pid: int
    comm: str
    kind: str          # one of KINDS
    text: str = ""
    cls: str = ""
    name: str = ""
    delta: int = 0
    rss_after: int = 0
    cause: str = ""
    phase: str = ""         # the phase its process was in
    phase_t: float = None   # when that phase began


_WIDE = {"grow", "release"}


def _short(name, width=38):
    if len(name) <= width:
        return name
    return "…" + name[-(width - 1):]


def format_entry(e):
    """An Entry (or its dict from a saved capture) -> one line."""
    e = e if isinstance(e, dict) else vars(e)
    head = f"{e['t']:8.2f}s  {e['pid']:>7} {e['comm'][:15]:<15} "
    kind = e["kind"]
    if kind in _WIDE:
        line = (f"{head}{fmt_bytes(e['delta'], signed=True):>11}  {e['cls']:<12} "
                f"{_short(e['name']):<38}  rss {fmt_bytes(e['rss_after'])}")
        return line + (f"  <- {e['cause']}" if e["cause"] else "")
    if kind == "mapping":
        line = f"{head}{'MAPPING':>11}  {e['cls']:<12} {_short(e['name']):<38}  {e['text']}"
        return line + (f"  <- {e['cause']}" if e["cause"] else "")
    if kind == "output":
        return f"{head}   | {e['text']}"
    if kind == "mark":
        return f"{head}   == phase: {e['text']}"
    if kind == "spike":
        return f"{head}{'SPIKE':>11}  {e['text']} (peak rss {fmt_bytes(e['rss_after'])})"
    if kind == "pinned":
        return f"{head}{'PINNED':>11}  {e['text']}"
    if kind == "exec":
        return f"{head}{'exec':>11}  {os.path.basename(e['text'])}"
    return f"{head}{kind:>11}  {e['text']}"


def header():
    return f"{'time':>9}  {'pid':>7} {'comm':<15} {'change':>11}  {'class':<12} {'mapping':<38}  after / why"
