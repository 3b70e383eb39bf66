"""The Debian package (deploy/debian): built from this checkout with the distro's
own tools, installed with apt, and run from its installed copy as an operator
would run it, with nothing of this checkout or its virtualenv in reach."""
import json
import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from conftest import MiB, growth, process

REPO = Path(__file__).resolve().parent.parent
DEBIAN = REPO / "deploy" / "debian"
PROGRAM = "/usr/bin/ramwatchd"
# The distro's own environment: its Python, its PATH, no virtualenv, run from /.
DISTRO_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
              "DEBIAN_FRONTEND": "noninteractive"}


def distro(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, env=DISTRO_ENV, cwd="/", **kw)


def apt_get(*args):
    done = distro(["apt-get", "-o", "DPkg::Lock::Timeout=300", "-y", "-q", *args])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


_built = {}


@pytest.fixture(scope="session")
def package(tmp_path_factory):
    """The .deb built from this checkout, installed. If the machine had no
    ramwatchd package before, it is purged again at the end. Built once a
    session, though each module that imports this fixture sets it up."""
    if _built:
        yield _built["deb"]
        return
    out = tmp_path_factory.mktemp("package")
    had_it = distro(["dpkg-query", "-W", "-f=${Status}", "ramwatchd"]).stdout == "install ok installed"
    built = distro(["bash", str(DEBIAN / "build.sh"), str(out)])
    assert built.returncode == 0, built.stderr[-4000:]
    deb = Path(built.stdout.split()[-1])
    apt_get("install", "--reinstall", str(deb))
    _built["deb"] = deb
    yield deb
    if not had_it:
        apt_get("purge", "ramwatchd")


def version_in_pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_pyproject_names_every_package():
    # Packages are listed by name (bpf/ is installed as ramwatchd.bpf); one
    # left out would be missing from the installed copy alone.
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "ramwatchd").rglob("__init__.py")}
    assert listed == found | {"ramwatchd.bpf"}


def test_package_installs_like_an_exporter(package):
    files = set(distro(["dpkg", "-L", "ramwatchd"]).stdout.split())
    for path in (PROGRAM, "/lib/systemd/system/ramwatchd.service", "/etc/ramwatchd/config.yaml",
                 "/usr/share/man/man1/ramwatchd.1.gz", "/usr/share/bash-completion/completions/ramwatchd",
                 "/usr/lib/python3/dist-packages/ramwatchd/bpf/ramwatchd.bpf.c"):
        assert path in files, path
    assert not [f for f in files if "/bcc/" in f or f.endswith("/bcc")], "bcc must come from python3-bpfcc"
    fields = distro(["dpkg-query", "-W", "-f=${Depends}\n${Conffiles}\n${Version}", "ramwatchd"]).stdout
    depends, conffiles, version = fields.split("\n", 2)
    assert {"python3-bpfcc", "python3-prometheus-client", "python3-yaml"} <= {
        d.split()[0] for d in depends.split(", ")}
    assert conffiles.split()[0] == "/etc/ramwatchd/config.yaml"
    assert version.strip() == version_in_pyproject()
    # The service starts the packaged program, not a link into a checkout.
    unit = Path("/lib/systemd/system/ramwatchd.service").read_text()
    (exec_start,) = re.findall(r"^ExecStart=(\S+)", unit, re.M)
    assert exec_start == PROGRAM and os.access(exec_start, os.X_OK)


def test_installed_copy_is_the_distros_python_and_the_package(package):
    where = distro([PROGRAM, "--version"])
    assert where.stdout.strip() == f"ramwatchd {version_in_pyproject()}"
    assert Path(PROGRAM).read_text().startswith("#!/usr/bin/python3\n")
    module = distro(["/usr/bin/python3", "-c", "import ramwatchd; print(ramwatchd.__file__)"]).stdout
    assert module.strip() == "/usr/lib/python3/dist-packages/ramwatchd/__init__.py"


def test_installed_doctor_passes(package):
    doctor = distro([PROGRAM, "doctor"], timeout=300)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "a capture can run" in doctor.stdout


def test_installed_copy_captures(package, tmp_path):
    short = distro([PROGRAM, "run", "--duration", "3", "--", "sleep", "2"], timeout=300)
    assert short.returncode == 0, short.stderr
    # A workload of known size, the installed copy's own, as a user would run it.
    out = tmp_path / "capture.json"
    done = distro([PROGRAM, "run", "--quiet", "-o", str(out), "--",
                   "/usr/bin/python3", "-m", "ramwatchd.workloads", "anon:64M", "sleep:1"], timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert growth(process(result), "anon") >= 60 * MiB
    assert "classes vs VmRSS" in done.stdout


def test_man_page(package):
    # help2man's page: the program's own --help, a section per command, and FILES.
    page = distro(["zcat", "/usr/share/man/man1/ramwatchd.1.gz"]).stdout
    sections = re.findall(r'^\.SH "?([^"\n]+)"?$', page, re.M)
    listed = distro([PROGRAM, "--help"]).stdout.split("COMMAND\n", 1)[1].split("\n\n", 1)[0]
    commands = re.findall(r"^    ([a-z]\w*)", listed, re.M)
    assert "daemon" in commands
    for name in ["NAME", "SYNOPSIS", "DESCRIPTION", "FILES", "SEE ALSO"] + [f"COMMAND: {c.upper()}" for c in commands]:
        assert name in sections, name
    assert "\nramwatchd \\- " in page
    if os.path.exists("/usr/bin/man"):
        rendered = distro(["man", "--warnings", "-l", "/usr/share/man/man1/ramwatchd.1.gz"])
        assert rendered.returncode == 0 and not rendered.stderr.strip(), rendered.stderr


COMPLETE = r"""
source /usr/share/bash-completion/bash_completion
source /usr/share/bash-completion/completions/ramwatchd
line=$1
COMP_LINE=$line; COMP_POINT=${#line}
read -r -a COMP_WORDS <<<"$line"
[[ $line == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
_ramwatchd ramwatchd "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
"""


@pytest.mark.parametrize("line, expected", [
    ("ramwatchd d", {"daemon", "demo", "diff", "doctor"}),
    ("ramwatchd daemon --c", {"--config", "--check-config"}),
    ("ramwatchd run --dur", {"--duration"}),
    ("ramwatchd --format ", {"json", "folded"}),
])
def test_bash_completion(package, line, expected):
    # Real bash with bash-completion, as a terminal would call it.
    done = distro(["bash", "-c", COMPLETE, "complete", line])
    offered = set(done.stdout.split())
    assert expected <= offered, f"{line!r}: offered {sorted(offered)}, {done.stderr}"


def test_setup_notices_its_own_header_work():
    # deploy/setup.sh (which the tests run after) has set up the headers: its
    # header step, run again, finds them and changes nothing.
    modules = Path(f"/lib/modules/{os.uname().release}")
    before = {p.name: (os.readlink(p) if p.is_symlink() else None, p.lstat().st_mtime_ns) for p in modules.iterdir()}
    again = distro(["bash", "-c", f"set -euo pipefail; source {REPO}/deploy/setup.sh; install_headers"])
    assert again.returncode == 0, again.stderr
    assert "kernel headers: " in again.stdout and "linked" not in again.stdout, again.stdout
    after = {p.name: (os.readlink(p) if p.is_symlink() else None, p.lstat().st_mtime_ns) for p in modules.iterdir()}
    assert after == before
