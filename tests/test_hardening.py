"""How the daemon is confined: the systemd unit (deploy/systemd) and the
Kubernetes manifests (deploy/kubernetes). The unit's privileges are checked
against the daemon itself: it is run with exactly what the unit grants, and
must still load its programs, read a root-owned process and serve."""
import ctypes
import fnmatch
import re
import subprocess
from pathlib import Path

import yaml

from conftest import MiB
from test_daemon import TAGGED_GROUPS, fetch, free_port, metric, wait_until
from test_package import DISTRO_ENV, PROGRAM, package  # noqa: F401 (package: the installed .deb)

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "deploy" / "systemd" / "ramwatchd.service"
MANIFEST = REPO / "deploy" / "kubernetes" / "ramwatchd.yaml"
PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1
NOBODY = 65534     # stands for the unit's DynamicUser: a user that owns nothing


def unit_settings():
    """Each setting of the unit, with every value it is given, in order."""
    settings = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def capability_numbers():
    header = Path("/usr/include/linux/capability.h").read_text()
    return {f"CAP_{name}": int(n) for name, n in re.findall(r"^#define CAP_(\w+)\s+(\d+)$", header, re.M)}


def test_unit_exposure_is_low_and_every_finding_explained():
    done = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNIT)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    exposure = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout).group(1))
    assert exposure <= 2.5, done.stdout
    # A finding is a line with the exposure it adds; its setting must be named
    # in the unit, where a comment says why it stays.
    findings = re.findall(r"^\S+ (\w+)=.*\s(\d\.\d)$", done.stdout, re.M)
    assert findings, done.stdout
    text = UNIT.read_text()
    assert [name for name, _ in findings if name not in text] == []


def test_daemon_runs_with_only_what_the_unit_grants(package, tmp_path):
    settings = unit_settings()
    caps = settings["AmbientCapabilities"][-1].split()
    assert settings["CapabilityBoundingSet"] == settings["AmbientCapabilities"]
    assert settings["DynamicUser"] == ["yes"] and settings["NoNewPrivileges"] == ["yes"]
    program, command = settings["ExecStart"][-1].split()[:2]
    assert (program, command) == (PROGRAM, "daemon")
    libc = ctypes.CDLL(None, use_errno=True)
    mdwe = settings["MemoryDenyWriteExecute"] == ["yes"]
    assert not mdwe or libc.prctl(PR_GET_MDWE, 0, 0, 0, 0) >= 0, \
        "this kernel cannot refuse writable+executable memory (PR_SET_MDWE, Linux 6.3+)"

    def as_the_unit_sets_up():
        # In the child, before it becomes the daemon. LimitMEMLOCK= is left at
        # this process's own limit, which is stricter: only kernels before 5.11
        # count BPF maps against it.
        if mdwe and libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_MDWE")

    port = free_port()
    config = tmp_path / "ramwatchd.yaml"
    config.write_text(f"listen: {{address: 127.0.0.1, port: {port}}}\n" + TAGGED_GROUPS)
    granted = ",".join("+" + c.removeprefix("CAP_").lower() for c in caps)
    log = open(tmp_path / "daemon.log", "w+")
    daemon = subprocess.Popen(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--no-new-privs",
         f"--inh-caps=-all,{granted}", f"--ambient-caps=-all,{granted}", f"--bounding-set=-all,{granted}",
         program, command, "--config", str(config)],
        preexec_fn=as_the_unit_sets_up, stdout=log, stderr=subprocess.STDOUT, env=DISTRO_ENV, cwd="/")
    workload = None
    url = f"http://127.0.0.1:{port}"

    def serving():
        log.seek(0)
        assert daemon.poll() is None, "the daemon exited:\n" + log.read()[-3000:]
        try:
            return fetch(url + "/metrics")[1]
        except OSError:
            return None
    try:
        body = wait_until("the confined daemon to serve", serving, timeout=120)
        assert metric(body, "ramwatchd_programs_attached") > 0
        status = Path(f"/proc/{daemon.pid}/status").read_text()
        assert re.search(rf"^Uid:\s+{NOBODY}\s", status, re.M)
        numbers = capability_numbers()
        assert int(re.search(r"^CapEff:\s+(\w+)", status, re.M).group(1), 16) == sum(1 << numbers[c] for c in caps)
        assert re.search(r"^NoNewPrivs:\s+1$", status, re.M)
        # Another user's process (root's): its smaps must be readable.
        workload = subprocess.Popen(["/usr/bin/python3", "-m", "ramwatchd.workloads", "tag:confined",
                                     "anon:64M", "sleep:120"], env=DISTRO_ENV, cwd="/", stdout=subprocess.DEVNULL)
        series = 'ramwatchd_resident_bytes{class="anon",group="test-confined"}'
        wait_until("the root-owned workload's memory", lambda: (metric(serving() or "", series) or 0) >= 60 * MiB)
        assert metric(serving(), "ramwatchd_processes_unreadable") == 0
        # The Kubernetes liveness probe's path answers from a real daemon.
        pod = {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text())}["DaemonSet"]
        (container,) = pod["spec"]["template"]["spec"]["containers"]
        assert fetch(url + container["livenessProbe"]["httpGet"]["path"])[0] == 200
    finally:
        if workload:
            workload.kill()
            workload.wait()
        daemon.terminate()
        daemon.wait(timeout=30)
        log.close()


def test_pod_is_confined():
    docs = {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text())}
    labels = docs["Namespace"]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] in {"privileged", "baseline", "restricted"}
    spec = docs["DaemonSet"]["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    assert container["securityContext"]["seccompProfile"]["type"] in {"RuntimeDefault", "Localhost"}
    ports = {p["name"] for p in container["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in ports, probe


def docker_context():
    """The top-level entries of the repository that `docker build .` sends, by
    .dockerignore's rules: the last pattern that matches decides, ! lets in."""
    rules = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]

    def sent(name):
        verdict = True
        for rule in rules:
            if fnmatch.fnmatch(name, rule.lstrip("!")):
                verdict = rule.startswith("!")
        return verdict
    return {p.name for p in REPO.iterdir() if sent(p.name)}


def test_docker_context_holds_the_package_sources_and_nothing_else():
    context = docker_context()
    assert not {".git", ".venv", "results", "tests", "bench"} & context, context
    # What deploy/debian/build.sh stages, which the image's first stage runs.
    staged = re.search(r"-c \\\n\s+([^|]+)\|", (REPO / "deploy" / "debian" / "build.sh").read_text()).group(1)
    assert set(staged.split()) == context
    assert "COPY . /src" in (REPO / "deploy" / "kubernetes" / "Dockerfile").read_text()
