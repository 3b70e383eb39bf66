"""The Python stack reader (ramwatchd.ledger.python) against real CPython
processes: every interpreter found on this machine runs a known script whose
threads block at known lines, and the stacks read from its memory must name
those lines. Nothing is mocked: the offsets are right only if the walk finds
the frames."""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from ramwatchd.ledger import procfs
from ramwatchd.ledger.python import Site, Unsupported, find_interpreter, read_frame, walk_stack

TARGET = '''\
import os
import sys
import threading


def innermost(tag):
    os.write(1, f"{tag} {threading.get_native_id()}\\n".encode())
    os.read(0, 1)  # innermost


def middle(tag):
    list(map(innermost, [tag]))  # middle: through C, where 3.12+ pushes a shim frame


class Outer:
    def run(self, tag):
        middle(tag)  # run


os.write(1, ("version %d %d %d\\n" % sys.version_info[:3]).encode())
gone = compile("a = 1", "gone.py", "exec")
os.write(1, f"gone {id(gone)}\\n".encode())
del gone
helper = threading.Thread(target=Outer().run, args=("thread",))
helper.start()
Outer().run("main")  # module
helper.join()
'''
# Where the frames of threading.py that run a Thread's target stand, by the text of the line.
THREADING = [("Thread.run", "self._target("), ("Thread._bootstrap_inner", "self.run()"),
             ("Thread._bootstrap", "self._bootstrap_inner()")]


def _version(exe):
    out = subprocess.run([exe, "-c", "import sys; sys.stdout.write('%d.%d' % sys.version_info[:2])"],
                         capture_output=True, text=True, timeout=30)
    return tuple(int(p) for p in out.stdout.split(".")) if out.returncode == 0 else None


def _pythons():
    """{real path: (major, minor)} of the CPythons on this machine: this one,
    the others of the same pyenv (or other folder of versions), the system's."""
    paths = [sys.executable, *glob.glob(f"{Path(sys.base_prefix).parent}/*/bin/python[23]"),
             *glob.glob("/usr/bin/python[23].[0-9]*")]
    found = {}
    for path in sorted({os.path.realpath(p) for p in paths if not p.endswith("-config")}):
        version = _version(path)
        if version:
            found[path] = version
    return found


PYTHONS = _pythons()
READABLE = sorted(p for p, v in PYTHONS.items() if (3, 11) <= v <= (3, 13))
OLDER = sorted(p for p, v in PYTHONS.items() if v < (3, 11))


class Target:
    """TARGET running under one interpreter, once its two threads have said
    their native ids (and are about to block)."""

    def __init__(self, exe, script, env=None):
        self.proc = subprocess.Popen([exe, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env)
        self.said = {}
        while len(self.said) < 4:
            line = self.proc.stdout.readline().split()
            assert line, f"{exe} ended before it was ready"
            self.said[line[0].decode()] = [int(x) for x in line[1:]]
        self.handle = procfs.ProcDir(self.proc.pid)

    def end(self):
        self.proc.stdin.close()     # both threads read EOF and return
        self.proc.wait(timeout=30)
        self.handle.close()


@pytest.fixture
def target(tmp_path):
    script = tmp_path / "target.py"
    script.write_text(TARGET)
    started = []

    def start(exe, env=None):
        started.append(Target(exe, script, env))
        return started[-1]
    yield start
    for t in started:
        if t.proc.poll() is None:
            t.proc.kill()
            t.proc.wait()
        t.handle.close()


def marked(script, marker):
    """The number of the line of `script` whose comment is `# marker` (or `# marker: why`)."""
    lines = Path(script).read_text().splitlines()
    return next(n for n, text in enumerate(lines, 1) if text.split("  # ")[-1].split(":")[0] == marker)


def sites(handle, interp, tid):
    frames = walk_stack(handle, interp, tid)
    if frames is None:
        return None
    read = [read_frame(handle, interp, code, instr) for code, instr in frames]
    return [frame and frame.site() for frame in read]


def blocked_sites(handle, interp, tid, innermost_line):
    """The sites of a thread once it blocks at innermost_line: until then it
    runs, and its stack moves under the reads."""
    deadline = time.monotonic() + 10
    while True:
        found = sites(handle, interp, tid)
        if found and found[0] and found[0].line == innermost_line or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def assert_stacks(t, script):
    """The stacks of TARGET's two threads, read from its memory, name its
    calls; returns the Interpreter found."""
    interp = find_interpreter(t.handle)
    assert interp.version == tuple(t.said["version"])
    ours = [Site(script, "innermost", marked(script, "innermost")),
            Site(script, "middle", marked(script, "middle")),
            Site(script, "Outer.run", marked(script, "run"))]
    main = blocked_sites(t.handle, interp, t.said["main"][0], ours[0].line)
    assert main == ours + [Site(script, "<module>", marked(script, "module"))]

    helper = blocked_sites(t.handle, interp, t.said["thread"][0], ours[0].line)
    assert helper[:3] == ours
    assert [(s.function, Path(s.filename).name) for s in helper[3:]] == [(f, "threading.py") for f, _ in THREADING]
    for site, (_, text) in zip(helper[3:], THREADING):
        assert text in Path(site.filename).read_text().splitlines()[site.line - 1], site
    return interp


@pytest.mark.parametrize("exe", READABLE, ids=lambda p: f"{'.'.join(map(str, PYTHONS[p]))}:{p}")
def test_the_stack_of_each_thread_names_its_calls_innermost_first(target, exe, tmp_path):
    t = target(exe)
    assert_stacks(t, str(tmp_path / "target.py"))
    t.end()


@pytest.mark.parametrize("exe", READABLE[:1])
def test_what_is_not_a_live_code_object_names_no_site(target, exe):
    t = target(exe)
    interp = find_interpreter(t.handle)
    code = t.said["gone"][0]            # a code object the target freed
    adaptive = interp.offsets.code_adaptive
    assert read_frame(t.handle, interp, code, code + adaptive) is None
    assert read_frame(t.handle, interp, 8, 8 + adaptive) is None                      # unmapped
    assert read_frame(t.handle, interp, interp.runtime, interp.runtime + adaptive) is None   # not a code object
    assert walk_stack(t.handle, interp, 1) is None      # a thread id of no thread of the target
    t.end()


@pytest.mark.parametrize("exe", READABLE[:1])
def test_an_exited_process_is_gone_not_unsupported(target, exe):
    t = target(exe)
    interp = find_interpreter(t.handle)
    t.proc.kill()
    while not t.handle.stat().zombie:
        time.sleep(0.01)
    with pytest.raises(procfs.ZombieProcess):
        find_interpreter(t.handle)
    t.proc.wait()
    with pytest.raises(procfs.NoSuchProcess):
        find_interpreter(t.handle)
    with pytest.raises(procfs.NoSuchProcess):
        walk_stack(t.handle, interp, t.proc.pid)


@pytest.mark.parametrize("exe", OLDER, ids=lambda p: f"{'.'.join(map(str, PYTHONS[p]))}:{p}")
def test_a_python_before_3_11_is_refused_with_the_reason(exe):
    proc = subprocess.Popen([exe, "-c", "import sys; sys.stdout.write('ready\\n'); sys.stdout.flush(); "
                                        "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    handle = procfs.ProcDir(proc.pid)
    try:
        assert proc.stdout.readline() == b"ready\n"
        with pytest.raises(Unsupported) as refused:
            find_interpreter(handle)
    finally:
        proc.kill()
        proc.wait()
        handle.close()
    why = "Python before 3.11" if PYTHONS[exe] >= (3, 7) else "Python before 3.7"
    assert why in str(refused.value) and "\n" not in str(refused.value)


def test_a_program_that_is_not_python_is_refused_with_the_reason():
    proc = subprocess.Popen(["sleep", "30"])
    handle = procfs.ProcDir(proc.pid)
    try:
        # Popen returns at the exec's point of no return, before the program is mapped.
        deadline = time.monotonic() + 10
        while not any(path.endswith("/sleep") for _, _, path in handle.maps()) and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(Unsupported, match=r"^not a Python process: sleep has no _PyRuntime symbol"):
            find_interpreter(handle)
    finally:
        proc.kill()
        proc.wait()
        handle.close()


@pytest.fixture
def static_python(tmp_path):
    """build(strip) -> an executable named python3.X with this Python linked
    in statically and not exported: its symbols only in .symtab, or (strip)
    nowhere. The environment it runs in finds this Python's library."""
    library = Path(sysconfig.get_config_var("LIBPL") or "", sysconfig.get_config_var("LIBRARY") or "")
    if not shutil.which("gcc") or not library.is_file():
        pytest.skip("needs gcc and this Python's static library")
    source = tmp_path / "embed.c"
    source.write_text("#include <Python.h>\nint main(int argc, char **argv) { return Py_BytesMain(argc, argv); }\n")
    libs = [*(sysconfig.get_config_var("LIBS") or "").split(), *(sysconfig.get_config_var("SYSLIBS") or "").split()]

    def build(strip):
        exe = tmp_path / ("stripped" if strip else "static") / f"python{sysconfig.get_python_version()}"
        exe.parent.mkdir()
        subprocess.run(["gcc", "-no-pie", str(source), f"-I{sysconfig.get_paths()['include']}", str(library),
                        *libs, *(["-s"] if strip else []), "-o", str(exe)], check=True, capture_output=True)
        return exe
    return build


HOME = {**os.environ, "PYTHONHOME": sys.base_prefix}


def test_a_static_python_is_read_through_its_symbol_table(target, static_python, tmp_path):
    exe = static_python(strip=False)
    t = target(str(exe), env=HOME)
    assert assert_stacks(t, str(tmp_path / "target.py")).path == str(exe)
    t.end()


def test_a_stripped_python_is_refused_with_the_reason(target, static_python):
    exe = static_python(strip=True)
    t = target(str(exe), env=HOME)
    with pytest.raises(Unsupported, match=rf"^{exe.name}: no _PyRuntime symbol \(stripped"):
        find_interpreter(t.handle)
    t.end()


# Every instruction of every code object of a few modules, against co_positions():
# the compiler of each version writes its own tables.
LINE_CHECK = """
import asyncio.base_events, json.decoder, threading
from ramwatchd.ledger.python import line_of

def code_objects(code):
    yield code
    for const in code.co_consts:
        if hasattr(const, "co_linetable"):
            yield from code_objects(const)

checked = 0
for module in (asyncio.base_events, json.decoder, threading):
    with open(module.__file__) as source:
        for code in code_objects(compile(source.read(), module.__file__, "exec")):
            for index, position in enumerate(code.co_positions()):
                found = line_of(code.co_linetable, code.co_firstlineno, index)
                assert found == position[0], (code, index, found, position)
                checked += 1
print(checked)
"""


@pytest.mark.parametrize("exe", READABLE, ids=lambda p: f"{'.'.join(map(str, PYTHONS[p]))}:{p}")
def test_line_table_decodes_as_cpython_does(exe):
    repo = Path(__file__).resolve().parent.parent
    out = subprocess.run([exe, "-c", LINE_CHECK], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(repo)})
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 10000
