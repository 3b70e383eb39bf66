"""The daemon's config, checked as `ramwatchd daemon --check-config FILE` and a
start would check it: every mistake is one line naming the file, the line and
the key, and exit status 2."""
import socket
import subprocess

import pytest

from conftest import RAMWATCHD


def check(path):
    return subprocess.run(RAMWATCHD + ["daemon", "--check-config", str(path)], capture_output=True, text=True,
                          timeout=60)


def refused(path, where, *words):
    done = check(path)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"ramwatchd: {path}{where}"), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """Two certificates with their keys, and a key under a passphrase: made by openssl."""
    folder = tmp_path_factory.mktemp("tls")
    for name in ("a", "b"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", f"/CN={name}", "-keyout", str(folder / f"{name}.key"),
                        "-out", str(folder / f"{name}.crt")], check=True, capture_output=True)
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-aes-128-cbc", "-pass", "pass:secret",
                    "-out", str(folder / "locked.key")], check=True, capture_output=True)
    return folder


def tls_config(folder, cert, key):
    path = folder / f"web-{cert.replace('/', '_')}-{key.replace('/', '_')}.yaml"
    path.write_text(f"web:\n  tls_server_config:\n    cert_file: {cert}\n    key_file: {key}\n")
    return path


def test_a_good_config_is_checked_and_summed_up(tls):
    path = tls_config(tls, "a.crt", "a.key")      # relative: taken from the config's own folder
    path.write_text("listen: {address: 127.0.0.1, port: 9999}\ngroups:\n  - name: 'vllm-{1}'\n"
                    "    match: {cmdline: 'VLLM::(\\w+)'}\n  - name: '{comm}'\n" + path.read_text())
    done = subprocess.run(RAMWATCHD + ["daemon", "--check-config", str(path)], capture_output=True, text=True,
                          cwd="/", timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{path}: ok: 2 group rule(s), metrics on 127.0.0.1:9999, TLS"


@pytest.mark.parametrize("text, where, what", [
    ("listen:\n  port: 9725\n  address: 0.0.0.0\n  port: 9726\n", ":4:", "listen.port: given twice (first at line 2)"),
    ("groups:\n  - name: x\n    match: {comm: a, exe: b, comm: c}\n", ":3:", "groups[0].match.comm: given twice"),
    ("limits: {max_groups: 5}\nlimits: {max_files: 5}\n", ":2:", "limits: given twice (first at line 1)"),
], ids=["nested", "in-a-list", "top-level"])
def test_a_key_given_twice_is_refused(tmp_path, text, where, what):
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    refused(path, where, what)


def test_a_binary_file_is_refused(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes(b"listen:\n  port: 9725\n\x00\x01\x02\xff")
    refused(path, ":", "not a YAML text file", "NUL byte at byte 21")
    path.write_bytes(b"groups: [\xff\xfe]\n")
    refused(path, ":", "not a YAML text file", "can't decode byte 0xff")


def test_a_directory_is_refused(tmp_path):
    refused(tmp_path, ":", "cannot read: Is a directory")


@pytest.mark.parametrize("cert, key, line, key_path, what", [
    ("missing.crt", "a.key", 3, "cert_file", "missing.crt: No such file or directory"),
    (".", "a.key", 3, "cert_file", "is a directory, not a PEM file"),
    ("a.key", "a.key", 3, "cert_file", "is not PEM holding a certificate"),
    ("a.crt", "a.crt", 4, "key_file", "is not PEM holding a private key"),
    ("a.crt", "locked.key", 4, "key_file", "is encrypted"),
    ("a.crt", "b.key", 4, "", "cert_file and key_file do not make a TLS server: KEY_VALUES_MISMATCH"),
], ids=["missing", "directory", "not-a-certificate", "not-a-key", "encrypted", "not-a-pair"])
def test_a_tls_file_that_cannot_serve_is_refused(tls, cert, key, line, key_path, what):
    path = tls_config(tls, cert, key)
    full = "web.tls_server_config" + (f".{key_path}" if key_path else "")
    refused(path, f":{line}: {full}: ", what)


@pytest.mark.parametrize("template", ["{comm.__class__}", "{comm[0]}", "{comm!r}", "{comm:>99999}", "{}", "{0}",
                                      "{2}", "{comm"])
def test_a_group_name_may_use_only_plain_fields(tmp_path, template):
    path = tmp_path / "groups.yaml"
    path.write_text(f"groups:\n  - name: '{template}'\n    match: {{comm: '(py)thon'}}\n")
    refused(path, ":2: groups[0].name: ", f"bad template '{template}'", "use {comm}, {exe}, {cgroup} or a capture {1}")


def test_a_port_in_use_is_refused_before_the_probes_are_compiled(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(RAMWATCHD + ["daemon", "--listen", f"127.0.0.1:{port}"], capture_output=True,
                              text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == f"ramwatchd: cannot serve on 127.0.0.1:{port}: Address already in use"
