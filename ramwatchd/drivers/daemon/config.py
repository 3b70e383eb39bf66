"""The daemon's YAML configuration: parsed with the line of every key, checked
against a schema, and filled with defaults. deploy/config.example.yaml documents
each key. Any mistake is reported as `FILE:LINE: key.path: what is wrong`."""
import os
import re
import ssl
import string
from dataclasses import dataclass, field

import yaml

from ...ledger.classes import DEFAULT_WEIGHT_PATTERNS


class ConfigError(Exception):
    """One line naming the file, line and key that are wrong."""


# ---- YAML with line numbers -------------------------------------------------

class _Mapping(dict):
    lines: dict


class _Sequence(list):
    lines: list


class _Loader(yaml.SafeLoader):
    pass


def _mapping(loader, node):
    loader.flatten_mapping(node)
    out = _Mapping()
    out.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


def _sequence(loader, node):
    out = _Sequence(loader.construct_object(n, deep=True) for n in node.value)
    out.lines = [n.start_mark.line + 1 for n in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)


# ---- the configuration ------------------------------------------------------

@dataclass
class Group:
    """Processes that match every given regex fall in group `name`, a template
    filled from {comm}, {exe} (its basename), {cgroup} and the regex captures
    {1}, {2}... (numbered across comm, exe, cmdline and cgroup, in that order)."""
    name: str
    comm: re.Pattern = None
    exe: re.Pattern = None
    cmdline: re.Pattern = None
    cgroup: re.Pattern = None


@dataclass
class Web:
    tls_cert_file: str = None
    tls_key_file: str = None
    basic_auth_users: dict = field(default_factory=dict)   # user -> bcrypt hash


@dataclass
class Collection:
    smaps_min_interval_s: float = 10.0   # a process's smaps is read no more often
    smaps_per_second: float = 50.0       # node-wide budget of smaps reads
    discovery_interval_s: float = 30.0   # full /proc scan for processes BPF has not shown
    node_interval_s: float = 15.0        # meminfo, cgroup memory.stat, /dev/shm, page cache


_COLLECTION_KEYS = {"smaps_min_interval": "smaps_min_interval_s", "smaps_per_second": "smaps_per_second",
                    "discovery_interval": "discovery_interval_s", "node_interval": "node_interval_s"}


@dataclass
class Limits:
    max_groups: int = 200
    max_mappings: int = 50
    max_files: int = 100
    max_shm_objects: int = 100
    max_cgroups: int = 200


@dataclass
class Config:
    address: str = "0.0.0.0"
    port: int = 9725
    groups: list = field(default_factory=lambda: [Group(name="{comm}")])
    weights: tuple = DEFAULT_WEIGHT_PATTERNS
    limits: Limits = field(default_factory=Limits)
    collection: Collection = field(default_factory=Collection)
    web: Web = field(default_factory=Web)
    source: str = "(defaults)"


def group_name(template, captures, **fields):
    """Fill a group template: {comm}, {exe}, {cgroup} by name, captures as {1}, {2}..."""
    return template.format("", *captures, **fields)


def load(path):
    """Read and check path; raise ConfigError naming file, line and key."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    nul = raw.find(b"\0")
    try:
        if nul >= 0:
            raise ValueError(f"a NUL byte at byte {nul}")
        text = raw.decode()
    except ValueError as err:     # UnicodeDecodeError too: it names the byte
        raise ConfigError(f"{path}: not a YAML text file: {err}") from None
    try:
        data = _parse(path, text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {getattr(err, 'problem', err)}") from None
    config = _Checker(path).config(data if data is not None else _empty())
    config.source = path
    return config


def _parse(path, text):
    """The YAML document, refused if a mapping names a key twice: YAML keeps
    the last one and silently drops the first."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        twice = _repeated_key(node)
        if twice:
            key, line, first = twice
            raise ConfigError(f"{path}:{line}: {key}: given twice (first at line {first}); "
                              "only one may stay")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _repeated_key(node, where="", seen=None):
    """(key path, line, line of the first) of the first key a mapping repeats, or None."""
    seen = set() if seen is None else seen
    if id(node) in seen:       # an alias: already walked
        return None
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first = {}
        for key_node, value_node in node.value:
            name = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            full = f"{where}.{name}" if where else name
            line = key_node.start_mark.line + 1
            if name in first and name != "<<":
                return full, line, first[name]
            first.setdefault(name, line)
            found = _repeated_key(value_node, full, seen)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found = _repeated_key(item, f"{where}[{i}]", seen)
            if found:
                return found
    return None


def _empty():
    m = _Mapping()
    m.lines = {}
    return m


_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)?$")
_SECONDS = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}


class _Checker:
    def __init__(self, path):
        self.path = path

    def fail(self, line, key, message):
        raise ConfigError(f"{self.path}:{line}: {key}: {message}")

    def mapping(self, value, line, key, known):
        if not isinstance(value, dict):
            self.fail(line, key, f"must be a mapping, not {_kind(value)}")
        for k in value:
            if k not in known:
                hint = f" (known: {', '.join(sorted(known))})"
                self.fail(value.lines[k], f"{key}.{k}" if key else k, "unknown key" + hint)
        return value

    def get(self, m, key, path, kind, default):
        if key not in m:
            return default
        value, at = m[key], m.lines[key]
        full = f"{path}.{key}" if path else key
        if kind is float:
            return self.duration(value, at, full)
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                self.fail(at, full, f"must be a whole number above 0, not {value!r}")
            return value
        if not isinstance(value, kind) or isinstance(value, bool):
            self.fail(at, full, f"must be {kind.__name__ if kind is not str else 'a string'}, "
                                f"not {_kind(value)}")
        return value

    def duration(self, value, line, key):
        m = _DURATION.match(str(value).strip()) if not isinstance(value, bool) else None
        if not m or float(m.group(1)) <= 0:
            self.fail(line, key, f"must be a duration above 0 like 10s, 500ms or 2m, not {value!r}")
        return float(m.group(1)) * _SECONDS[m.group(2)]

    def regex(self, value, line, key):
        if not isinstance(value, str):
            self.fail(line, key, f"must be a regular expression string, not {_kind(value)}")
        try:
            return re.compile(value)
        except re.error as err:
            self.fail(line, key, f"bad regex {value!r}: {err}")

    def config(self, data):
        top = self.mapping(data, 1, "", {"listen", "groups", "weights", "limits", "collection", "web"})
        c = Config()
        if "listen" in top:
            listen = self.mapping(top["listen"], top.lines["listen"], "listen", {"address", "port"})
            c.address = self.get(listen, "address", "listen", str, c.address)
            c.port = self.get(listen, "port", "listen", int, c.port)
            if c.port > 65535:
                self.fail(listen.lines["port"], "listen.port", f"must be 1-65535, not {c.port}")
        if "groups" in top:
            c.groups = self.groups(top["groups"], top.lines["groups"])
        if "weights" in top:
            c.weights = self.weights(top["weights"], top.lines["weights"])
        if "limits" in top:
            lim = self.mapping(top["limits"], top.lines["limits"], "limits", set(vars(Limits())))
            c.limits = Limits(**{k: self.get(lim, k, "limits", int, v) for k, v in vars(Limits()).items()})
        if "collection" in top:
            col = self.mapping(top["collection"], top.lines["collection"], "collection",
                               set(_COLLECTION_KEYS))
            c.collection = self.collection(col)
        if "web" in top:
            c.web = self.web(top["web"], top.lines["web"])
        return c

    def groups(self, value, line):
        if not isinstance(value, list) or not value:
            self.fail(line, "groups", f"must be a non-empty list, not {_kind(value)}")
        out = []
        for i, (g, at) in enumerate(zip(value, value.lines)):
            key = f"groups[{i}]"
            g = self.mapping(g, at, key, {"name", "match"})
            if "name" not in g:
                self.fail(at, key, "needs a name (a template such as '{comm}' or 'vllm')")
            group = Group(name=self.get(g, "name", key, str, None))
            if not group.name.strip():
                self.fail(g.lines["name"], f"{key}.name", "must not be empty")
            if "match" in g:
                match = self.mapping(g["match"], g.lines["match"], f"{key}.match",
                                     {"comm", "exe", "cmdline", "cgroup"})
                for k in match:
                    setattr(group, k, self.regex(match[k], match.lines[k], f"{key}.match.{k}"))
            self.template(group, g.lines["name"], f"{key}.name")
            out.append(group)
        return out

    def template(self, group, line, key):
        """Only plain fields: a template that reached into attributes or
        indexes ({comm.__class__}, {comm[0]}) would read whatever they lead to."""
        captures = sum(p.groups for p in (group.comm, group.exe, group.cmdline, group.cgroup) if p)
        allowed = {"comm", "exe", "cgroup"} | {str(i) for i in range(1, captures + 1)}
        use = "use {comm}, {exe}, {cgroup}" + (f" or a capture {{1}}..{{{captures}}}" if captures else "")
        try:
            fields = [(name, conversion, spec) for _, name, spec, conversion in string.Formatter().parse(group.name)
                      if name is not None]
        except ValueError as err:
            self.fail(line, key, f"bad template {group.name!r}: {err}; {use}")
        for name, conversion, spec in fields:
            if name not in allowed or conversion or spec:
                written = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
                self.fail(line, key, f"bad template {group.name!r}: {written} is not a field; {use}, nothing more")

    def weights(self, value, line):
        if not isinstance(value, list) or not all(isinstance(p, str) for p in value) or not value:
            self.fail(line, "weights", "must be a non-empty list of file patterns such as '*.safetensors'")
        return tuple(value)

    def collection(self, col):
        c = Collection()
        for key, attr in _COLLECTION_KEYS.items():
            if key not in col:
                continue
            at, full = col.lines[key], f"collection.{key}"
            if attr.endswith("_s"):
                setattr(c, attr, self.duration(col[key], at, full))
            elif isinstance(col[key], bool) or not isinstance(col[key], (int, float)) or col[key] <= 0:
                self.fail(at, full, f"must be a number above 0, not {col[key]!r}")
            else:
                setattr(c, attr, float(col[key]))
        return c

    def web(self, value, line):
        web = self.mapping(value, line, "web", {"tls_server_config", "basic_auth_users"})
        out = Web()
        if "tls_server_config" in web:
            tls = self.mapping(web["tls_server_config"], web.lines["tls_server_config"],
                               "web.tls_server_config", {"cert_file", "key_file"})
            for k in ("cert_file", "key_file"):
                if k not in tls:
                    self.fail(web.lines["tls_server_config"], f"web.tls_server_config.{k}", "is required")
            out.tls_cert_file = self.pem(tls, "cert_file", "CERTIFICATE")
            out.tls_key_file = self.pem(tls, "key_file", "PRIVATE KEY")
            self.tls_pair(out, tls.lines["key_file"])
        if "basic_auth_users" in web:
            users = web["basic_auth_users"]
            at = web.lines["basic_auth_users"]
            if not isinstance(users, dict):
                self.fail(at, "web.basic_auth_users", f"must map user names to bcrypt hashes, not {_kind(users)}")
            for user, hashed in users.items():
                if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
                    self.fail(users.lines[user], f"web.basic_auth_users.{user}",
                              "must be a bcrypt hash ($2b$...), e.g. from 'htpasswd -nbBC 10 USER PASS'")
            out.basic_auth_users = dict(users)
        return out

    def pem(self, tls, key, label):
        """The path of a readable PEM file holding `label`; a relative path is
        taken from the config file's folder, as Prometheus exporters take it."""
        full = f"web.tls_server_config.{key}"
        line = tls.lines[key]
        value = self.get(tls, key, "web.tls_server_config", str, None)
        path = os.path.join(os.path.dirname(os.path.abspath(self.path)), value)
        try:
            with open(path, "rb") as f:
                head = f.read(1 << 20)
        except IsADirectoryError:
            self.fail(line, full, f"{path} is a directory, not a PEM file")
        except OSError as err:
            self.fail(line, full, f"cannot read {path}: {err.strerror}")
        if not re.search(rb"-----BEGIN [A-Z ]*" + label.encode() + rb"-----", head):
            self.fail(line, full, f"{path} is not PEM holding a {label.lower()} (-----BEGIN ...{label}-----)")
        if re.search(rb"-----BEGIN ENCRYPTED |Proc-Type: 4,ENCRYPTED", head):
            self.fail(line, full, f"{path} is encrypted: the daemon needs the key without a passphrase")
        return path

    def tls_pair(self, web, line):
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(web.tls_cert_file, web.tls_key_file,
                                                                    password=b"")
        except ssl.SSLError as err:
            self.fail(line, "web.tls_server_config", f"cert_file and key_file do not make a TLS server: "
                                                     f"{err.reason or err}")


def _kind(value):
    for kind, name in ((dict, "a mapping"), (list, "a list"), (bool, "true/false"),
                       (str, "a string"), (int, "a number"), (float, "a number")):
        if isinstance(value, kind):
            return name
    return "empty" if value is None else type(value).__name__
