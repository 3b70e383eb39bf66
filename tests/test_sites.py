"""Call sites, traced on the real kernel: programs whose allocating lines are
known (Python ones mark them with a comment, a C one by its functions) are
captured, and each resident byte they hold must be credited to its line."""
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import RAMWATCHD, MiB, assert_near, growth, run_ramwatchd

PROGRAMS = Path(__file__).resolve().parent / "programs"
KNOWN_SITES = PROGRAMS / "known_sites.py"


def marked_lines(path):
    """NAME -> the number of the line that ends with '# site: NAME'."""
    out = {}
    for number, text in enumerate(path.read_text().splitlines(), 1):
        found = re.search(r"# site: (\w+)$", text)
        if found:
            out[found.group(1)] = number
    return out


def read_lines_until(proc, done, timeout=60):
    """Lines of proc's stdout until done(lines) holds."""
    lines, buffer = [], b""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while not done(lines):
        assert time.monotonic() < deadline, f"never got there; output: {lines}"
        if not sel.select(timeout=1):
            continue
        chunk = os.read(proc.stdout.fileno(), 65536)
        assert chunk, f"ended early; output: {lines}; {proc.stderr.read().decode()}"
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        lines += [line.decode() for line in complete]
    return lines


def capture_until(tmp_path, argv, ready):
    """Capture argv under `ramwatchd run` until ready(lines of its output)
    holds, then end the capture as Ctrl-C does: the processes are looked at
    one last time while they hold what they made. Returns (result, lines)."""
    out = tmp_path / "capture.json"
    proc = subprocess.Popen(RAMWATCHD + ["run", "--quiet", "--json", str(out), "--", *argv],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lines = read_lines_until(proc, ready)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)    # stdin stays open: the program holds until the capture ends it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
    assert out.exists(), proc.stderr.read().decode()
    return json.loads(out.read_text()), lines


def held(process):
    """Site dicts of a process with the bytes they hold at its last look."""
    key = "bytes" if process["exited_at"] is None else "highest"
    return [(s, s[key]) for s in process["sites"]]


def bytes_at(process, path, line):
    """Bytes held by the sites whose innermost frame in `path` is `line`."""
    total = 0
    for site, n in held(process):
        ours = [frame for frame in site["python"] if frame[0] == str(path)]
        if ours and ours[0][2] == line:
            total += n
    return total


@pytest.fixture(scope="module")
def known_sites(tmp_path_factory):
    """One capture of programs/known_sites.py: (result, its lines, marked lines, weights size)."""
    tmp_path = tmp_path_factory.mktemp("sites")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(os.urandom(64 * MiB))
    shm = f"ramwatchd-test-{uuid.uuid4().hex[:8]}"
    try:
        result, lines = capture_until(
            tmp_path, [sys.executable, str(KNOWN_SITES), str(weights), shm],
            lambda lines: "ready" in lines and any(line.startswith("child ") for line in lines))
    finally:
        Path(f"/dev/shm/{shm}").unlink(missing_ok=True)
    return result, lines, marked_lines(KNOWN_SITES), weights.stat().st_size


@pytest.mark.parametrize("site, size", [("numpy", 48 * MiB), ("bytes", 40 * MiB), ("shm", 24 * MiB),
                                        ("thread", 32 * MiB), ("weights", None), ("fixed", 84 * MiB)])
def test_each_growth_is_credited_to_its_line(known_sites, site, size):
    result, _, lines, weights_size = known_sites
    parent = result["processes"][0]
    assert_near(bytes_at(parent, KNOWN_SITES, lines[site]), size or weights_size, what=f"site {site}")


def test_a_reservation_holds_none_of_what_is_placed_inside_it(known_sites):
    """A PROT_NONE reservation with a mapping placed in it by MAP_FIXED is two
    ranges: the pages are the inner mapping's, counted once."""
    result, _, lines, _ = known_sites
    parent = result["processes"][0]
    assert bytes_at(parent, KNOWN_SITES, lines["reserved"]) < 4 * MiB
    assert sum(n for _, n in held(parent)) <= 1.05 * parent["latest"]["vm_rss"]


def test_a_forked_child_s_growth_is_credited_to_its_line(known_sites):
    result, output, lines, _ = known_sites
    child_pid = int(next(line for line in output if line.startswith("child ")).split()[1])
    child = next(p for p in result["processes"] if p["pid"] == child_pid)
    assert_near(bytes_at(child, KNOWN_SITES, lines["child"]), 36 * MiB, what="the child's bytearray")


def test_timeline_names_the_line_that_mapped_the_weights(known_sites):
    result, _, lines, _ = known_sites
    wanted = f"known_sites.py:{lines['weights']} map_weights"
    grew = [e for e in result["timeline"] if e["kind"] == "grow" and e["cls"] == "file_weights"]
    assert grew and all(wanted in e["cause"] for e in grew), grew


def test_summary_and_flamegraph_show_growth_by_site(known_sites, tmp_path):
    result, _, lines, _ = known_sites
    saved = tmp_path / "capture.json"
    saved.write_text(json.dumps(result))
    folded = tmp_path / "folded.txt"
    proc = run_ramwatchd(["report", str(saved), "--flamegraph", str(folded)])
    assert proc.returncode == 0, proc.stderr
    section = proc.stdout.split("growth by call site")[1].split("\n== ")[0]
    row = next(line for line in section.splitlines() if f"known_sites.py:{lines['bytes']} main" in line)
    assert "40.0 MiB" in row or "40.1 MiB" in row, row
    stacks = {}
    for line in folded.read_text().splitlines():
        stack, weight = line.rsplit(" ", 1)
        stacks[stack] = stacks.get(stack, 0) + int(weight)
    numpy = [n for stack, n in stacks.items() if f"known_sites.py:{lines['numpy']} main;" in stack]
    assert_near(sum(numpy), 48 * MiB, what="numpy's folded stacks")
    assert all(stack.split(";")[0].startswith("python (") for stack in stacks)


def test_a_c_program_gets_native_frames(tmp_path):
    binary = tmp_path / "native_sites"
    subprocess.run(["gcc", "-O1", "-fno-omit-frame-pointer", "-o", str(binary),
                    str(PROGRAMS / "native_sites.c")], check=True)
    result, _ = capture_until(tmp_path, [str(binary), "48"], lambda lines: any(line.startswith("ready")
                                                                              for line in lines))
    process = result["processes"][0]
    found = [n for site, n in held(process) if any(name.startswith("load_model ") for name in site["native"])]
    assert_near(sum(found), 48 * MiB, what="bytes under load_model")
    assert not [e for e in result["timeline"] if e["kind"] == "python"], "a C program is no Python to report"


def _python_of_another_version(tmp_path):
    """argv running this interpreter from a copy of the file that holds it
    (libpython, preloaded in the shared library's place, or the executable)
    whose Py_Version says 3.10: a version the reader does not support. Only
    external readers look at Py_Version; the interpreter runs as before."""
    probe = subprocess.run([sys.executable, "-c", "print(open('/proc/self/maps').read())"],
                           capture_output=True, text=True, check=True).stdout
    libs = {line.split()[-1] for line in probe.splitlines() if re.search(r"/libpython3[^/]*\.so", line)}
    original = Path(libs.pop() if libs else os.path.realpath(sys._base_executable))
    image = bytearray(original.read_bytes())
    at = _file_offset(original, _symbol_value(original, "Py_Version"))
    assert int.from_bytes(image[at:at + 8], "little") == sys.hexversion
    image[at:at + 8] = (0x030A00F0).to_bytes(8, "little")
    patched = tmp_path / original.name
    patched.write_bytes(image)
    patched.chmod(0o755)
    env = ["env", f"PYTHONHOME={sys.base_prefix}"]
    if patched.name.startswith("libpython"):
        return env + [f"LD_PRELOAD={patched}", sys._base_executable]
    return env + [str(patched)]


def _symbol_value(path, name):
    table = subprocess.run(["readelf", "-Ws", str(path)], capture_output=True, text=True, check=True).stdout
    return next(int(fields[1], 16) for fields in map(str.split, table.splitlines())
                if len(fields) >= 8 and fields[7] == name)


def _file_offset(path, vaddr):
    """Where the loadable segment holding vaddr keeps it in the file."""
    headers = subprocess.run(["readelf", "-lW", str(path)], capture_output=True, text=True, check=True).stdout
    for fields in map(str.split, headers.splitlines()):
        if fields[:1] == ["LOAD"]:
            offset, start, size = int(fields[1], 16), int(fields[2], 16), int(fields[4], 16)
            if start <= vaddr < start + size:
                return offset + vaddr - start
    raise AssertionError(f"{path}: no segment holds {vaddr:#x}")


def test_an_unreadable_interpreter_says_so_once_and_is_still_captured(tmp_path):
    argv = _python_of_another_version(tmp_path)
    program = "import sys; held = bytearray(64 << 20); print('ready', flush=True); sys.stdin.read()"
    result, _ = capture_until(tmp_path, argv + ["-c", program], lambda lines: "ready" in lines)
    said = [e for e in result["timeline"] if e["kind"] == "python"]
    assert len(said) == 1 and "Python 3.10.0: not supported" in said[0]["text"], said
    process = result["processes"][0]
    sites = held(process)
    assert sites and not any(site["python"] for site, _ in sites), "no Python frame can have been read"
    largest, n = max(sites, key=lambda sn: sn[1])
    assert largest["native"] and n >= 64 * MiB, largest    # the buffer, with whatever shares its native stack
    assert 64 * MiB <= growth(process, "anon") <= 72 * MiB, "the buffer, and what Python made as it started"
