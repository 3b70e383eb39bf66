"""Bytes and durations as a person reads them, and back."""
import argparse
import re

_UNITS = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)]
_PARSE = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
          "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40}


def fmt_bytes(n, signed=False):
    """1536 -> '1.5 KiB'; signed=True adds '+' to growth."""
    sign = "-" if n < 0 else ("+" if signed else "")
    n = abs(n)
    for name, size in _UNITS:
        if n >= size:
            return f"{sign}{n / size:.1f} {name}"
    return f"{sign}{n} B"


def parse_bytes(text):
    """'256MiB', '1.5G', '4096' -> bytes. Raises ValueError naming the text."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _PARSE:
        raise ValueError(f"not a size: {text!r} (try 256MiB, 1.5GiB or 4096)")
    return int(float(m.group(1)) * _PARSE[m.group(2).lower()])


def size_arg(text):
    """argparse type for a size: parse_bytes, with its error as a usage error."""
    try:
        return parse_bytes(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def fmt_seconds(s):
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.2f} s"
    return f"{int(s // 60)} min {s % 60:.0f} s"
