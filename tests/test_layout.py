"""The package's stages, and the one direction data flows through them:
kernel -> ledger -> drivers -> views. Checked on the import graph, so that a
shortcut back up the chain fails here rather than in a reader's head."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ramwatchd"
SHARED = {"ramwatchd", "ramwatchd.units"}
# Which stages each stage may import, besides itself and SHARED.
ALLOWED = {
    "kernel": set(),
    "ledger": {"kernel"},
    "drivers": {"kernel", "ledger", "views"},
    "views": set(),
}


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path):
    """The ramwatchd modules a file imports, as absolute names."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("ramwatchd"):
                out.add(target)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("ramwatchd")}
    return out


def stage(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else None


def test_data_flows_one_way_through_the_stages():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = stage(module_name(path))
        if here is None:
            continue      # the commands (cli, doctor) and shared helpers wire stages together
        for target in imports(path):
            there = stage(target)
            if target in SHARED or there == here or there in ALLOWED[here]:
                continue
            wrong.append(f"{module_name(path)} imports {target}")
    assert not wrong, "imports against the flow kernel -> ledger -> drivers -> views:\n" + "\n".join(wrong)


def test_only_the_ledger_reads_proc():
    # The tracker and procfs own every read of another process's /proc.
    readers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if stage(module_name(path)) in ("ledger", None):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("/proc"):
                readers.append(f"{module_name(path)}: {node.value!r}")
    assert not readers, readers


def test_the_check_sees_every_stage():
    # A check that finds no module of a stage would pass for the wrong reason.
    found = {stage(module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert set(ALLOWED) <= found
