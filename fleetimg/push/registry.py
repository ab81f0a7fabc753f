"""A local CNCF Distribution registry, for fleets too big for SSH fan-out: push once, let
the nodes pull in parallel.

`up --on local` runs Debian's docker-registry twice on one storage directory. The fleet side
listens only on the workstation's address on the fleet's subnet and is read-only: nodes
pull from it over plain HTTP (insecure-registries, `configure`), and nobody, on the fleet or
any other network, can upload or delete there. The upload side listens on 127.0.0.1 only:
the workstation's engine pushes through it (Docker treats loopback as insecure-allowed).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import signal
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

import bcrypt
import requests

from fleetimg import newfile, programs, stop
from fleetimg.errors import PushError, UsageError
from fleetimg.inventory import Fleet, Node, Runtime
from fleetimg.localimage import LocalImage
from fleetimg.parallel import NodeOutcome, for_each_node
from fleetimg.paths import state_dir
from fleetimg.push.plan import NodePlan
from fleetimg.remote import ID_FORMAT, docker, sh
from fleetimg.ssh import Ssh

PORT = 5000  # the fleet side
UPLOAD_PORT = 5001  # the upload side, on 127.0.0.1
MANIFEST_TYPES = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
])


@dataclass(frozen=True)
class RegistryInfo:
    host: str  # the workstation's address on the fleet's subnet, where nodes pull
    port: int
    pid: int | None
    root: Path
    upload_port: int = UPLOAD_PORT
    upload_pid: int | None = None
    auth: bool = False  # the fleet side asks for the user and password in `credentials`

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def upload_endpoint(self) -> str:
        return f"127.0.0.1:{self.upload_port}"

    @property
    def listening(self) -> list[dict[str, str]]:
        who = f"fleet nodes with the user {AUTH_USER!r}" if self.auth else "fleet nodes"
        return [{"address": self.endpoint, "access": "read-only", "for": who},
                {"address": self.upload_endpoint, "access": "push",
                 "for": "this workstation only"}]


def _dir() -> Path:
    return state_dir() / "registry"


AUTH_USER = "fleet"


def credentials() -> tuple[str, str] | None:
    """(user, password) for the fleet side when it asks for them."""
    path = _dir() / "credentials"
    if not path.exists():
        return None
    user, _, password = path.read_text().strip().partition(":")
    return user, password


def _ensure_credentials() -> tuple[str, str]:
    """A random password for the fleet side, kept 0600; the registry checks its bcrypt hash
    (Distribution's htpasswd accepts bcrypt only)."""
    found = credentials()
    if found is None:
        found = (AUTH_USER, secrets.token_urlsafe(24))
        newfile.write_atomic(_dir() / "credentials", f"{found[0]}:{found[1]}\n".encode(),
                             private=True)
    hashed = bcrypt.hashpw(found[1].encode(), bcrypt.gensalt()).decode()
    newfile.write_atomic(_dir() / "htpasswd", f"{found[0]}:{hashed}\n".encode(), private=True)
    return found


def _auth_block(enabled: bool) -> str:
    if not enabled:
        return ""
    return (f"auth:\n  htpasswd:\n    realm: fleetimg\n    path: {_dir() / 'htpasswd'}\n")


def address_towards(node: Node) -> str:
    """The workstation's source address for traffic to a node (`ip route get`)."""
    out = programs.run(["ip", "-o", "route", "get", node.address]).stdout
    m = re.search(r"\bsrc (\S+)", out)
    if m is None:
        raise PushError(f"no route to {node.name} ({node.address})")
    return m[1]


def fleet_address(fleet: Fleet) -> str:
    """The address the fleet side binds: the workstation's own on the fleet's subnet."""
    host = address_towards(fleet.nodes[0])
    if ipaddress.IPv4Address(host) not in fleet.subnet:
        raise UsageError(
            f"this workstation has no address on the fleet's subnet {fleet.subnet} (it reaches "
            f"{fleet.nodes[0].name} from {host}); the registry listens only on the fleet's "
            "network",
            hint=f"give this machine an address in {fleet.subnet}, or push with --via ssh")
    return host


def read_info() -> RegistryInfo | None:
    path = _dir() / "registry.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return RegistryInfo(data["host"], data["port"], data.get("pid"), Path(data["root"]),
                        data.get("upload_port", UPLOAD_PORT), data.get("upload_pid"),
                        bool(data.get("auth", False)))


def _healthy(url: str) -> bool:
    try:
        # 401: up, and asking for the fleet's credentials.
        return requests.get(f"{url}/v2/", timeout=2).status_code in (200, 401)
    except requests.RequestException:
        return False


def _start(binary: str, role: str, addr: str, root: Path, *, readonly: bool,
           auth: bool = False) -> int:
    template = resources.files("fleetimg.registry_files").joinpath("config.yml.tmpl").read_text()
    config = _dir() / f"config-{role}.yml"
    config.write_text(Template(template).substitute(
        rootdirectory=root, addr=addr, role=role, readonly="true" if readonly else "false",
        auth=_auth_block(auth)))
    with (_dir() / f"registry-{role}.log").open("ab") as log:
        proc = programs.spawn([binary, "serve", str(config)], stdout=log, stderr=log,
                            detach=True)
    deadline = time.monotonic() + 20
    while not _healthy(f"http://{addr}"):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.terminate()
            raise PushError(f"the registry ({role} side, {addr}) did not start (see "
                            f"{_dir() / f'registry-{role}.log'})",
                            hint=f"is the port already in use? `ss -ltnp | grep {addr}`")
        time.sleep(0.2)
    return proc.pid


def registry_up(fleet: Fleet, *, auth: bool = False) -> RegistryInfo:
    """The registry on this workstation (a node-hosted one was once advertised as
    `--on master` and refused; it is not offered until it exists)."""
    host = fleet_address(fleet)
    current = read_info()
    if (current and current.host == host and current.auth == auth
            and programs.pid_alive(current.pid) and programs.pid_alive(current.upload_pid)
            and _healthy(current.url)
            and _healthy(f"http://{current.upload_endpoint}")):
        return current
    registry_down()  # a half-running or moved registry is restarted whole
    binary = programs.require_tool("docker-registry")
    root = _dir() / "storage"
    root.mkdir(parents=True, exist_ok=True)
    upload_pid = _start(binary, "upload", f"127.0.0.1:{UPLOAD_PORT}", root, readonly=False)
    try:
        if auth:
            _ensure_credentials()
        pid = _start(binary, "fleet", f"{host}:{PORT}", root, readonly=True, auth=auth)
    except BaseException:
        _stop(upload_pid)
        raise
    info = RegistryInfo(host, PORT, pid, root, UPLOAD_PORT, upload_pid, auth)
    (_dir() / "registry.json").write_text(json.dumps(
        {"host": host, "port": PORT, "pid": pid, "root": str(root),
         "upload_port": UPLOAD_PORT, "upload_pid": upload_pid, "auth": auth}))
    return info


def _stop(pid: int | None) -> None:
    if programs.pid_alive(pid):
        assert pid is not None
        os.kill(pid, signal.SIGTERM)


def registry_down() -> bool:
    info = read_info()
    if info is None:
        return False
    _stop(info.pid)
    _stop(info.upload_pid)
    (_dir() / "registry.json").unlink(missing_ok=True)
    return True


def require_registry() -> RegistryInfo:
    info = read_info()
    if info is None or not _healthy(info.url) or not _healthy(
            f"http://{info.upload_endpoint}"):
        raise PushError("no fleetimg registry is running", hint="fleetimg registry up")
    return info


@dataclass(frozen=True)
class RepoInfo:
    name: str
    tags: list[str]
    sizes: dict[str, int]


def registry_status(info: RegistryInfo) -> list[RepoInfo]:
    # The upload side serves the same storage without asking for credentials.
    base = f"http://{info.upload_endpoint}"
    try:
        catalog = requests.get(f"{base}/v2/_catalog", timeout=10).json().get("repositories", [])
        out = []
        for repo in catalog:
            tags = requests.get(f"{base}/v2/{repo}/tags/list", timeout=10).json().get("tags") or []
            sizes = {}
            for tag in tags:
                manifest = requests.get(f"{base}/v2/{repo}/manifests/{tag}", timeout=10,
                                        headers={"Accept": MANIFEST_TYPES}).json()
                sizes[tag] = sum(int(layer.get("size", 0)) for layer in
                                 manifest.get("layers", [])) + int(
                    manifest.get("config", {}).get("size", 0))
            out.append(RepoInfo(repo, sorted(tags), sizes))
        return out
    except (requests.RequestException, ValueError) as exc:
        raise PushError(f"registry API at {base} failed: {exc}") from exc


RELOAD_DOCKER = ("if [ \"$(ps -o comm= -p 1)\" = systemd ]; then sudo -n systemctl reload docker; "
                 "else sudo -n kill -HUP $(pidof dockerd); fi")


def merge_insecure(daemon_json: str, endpoint: str) -> str:
    """Add endpoint to insecure-registries, keeping every other key (nvidia runtime)."""
    data = json.loads(daemon_json) if daemon_json.strip() else {}
    if not isinstance(data, dict):
        raise PushError("/etc/docker/daemon.json is not a JSON object")
    entries = list(data.get("insecure-registries", []))
    if endpoint not in entries:
        entries.append(endpoint)
    data["insecure-registries"] = entries
    return json.dumps(data, indent=4) + "\n"


def k3s_registries_yaml(endpoint: str, login: tuple[str, str] | None = None,
                        current: str = "") -> str:
    """K3s's registries.yaml with our mirror (and login) merged into `current`: the user's
    other mirrors and configs are kept (as daemon.json's other keys are)."""
    import yaml  # only commands that configure K3s nodes pay for it

    try:
        data = yaml.safe_load(current) if current.strip() else {}
    except yaml.YAMLError as exc:
        raise PushError(f"/etc/rancher/k3s/registries.yaml is not valid YAML: {exc}",
                        hint="fix it by hand first; fleetimg never overwrites a file it "
                        "cannot read") from exc
    if not isinstance(data, dict):
        raise PushError("/etc/rancher/k3s/registries.yaml is not a YAML mapping",
                        hint="fix it by hand first")
    mirrors = data.setdefault("mirrors", {}) or {}
    data["mirrors"] = mirrors
    mirrors[endpoint] = {"endpoint": [f"http://{endpoint}"]}
    if login is not None:
        configs = data.setdefault("configs", {}) or {}
        data["configs"] = configs
        configs[endpoint] = {"auth": {"username": login[0], "password": login[1]}}
    return str(yaml.safe_dump(data, default_flow_style=False, sort_keys=False))


def configure_node(ssh: Ssh, node: Node, info: RegistryInfo, *, dry_run: bool = False) -> str:
    """Make the node trust (and log in to) the registry; with `dry_run`, read what it has
    and say what would change, writing nothing."""
    login = credentials() if info.auth else None
    if info.auth and login is None:
        raise PushError("the registry asks for credentials but fleetimg has none",
                        hint="fleetimg registry down && fleetimg registry up --auth")
    if node.runtime is Runtime.K3S:
        current = ssh.run(node, "sudo -n cat /etc/rancher/k3s/registries.yaml 2>/dev/null "
                          "|| true", timeout=30).stdout
        body = k3s_registries_yaml(info.endpoint, login, current)
        if current.strip() and _same_yaml(current, body):
            return "already configured"
        if dry_run:
            return "would merge the mirror into registries.yaml and restart k3s"
        # 0600: it may hold the registry's password.
        ssh.run(node, "sudo -n mkdir -p /etc/rancher/k3s && sudo -n install -m 600 /dev/stdin "
                "/etc/rancher/k3s/registries.yaml && (sudo -n systemctl restart "
                "k3s-agent 2>/dev/null || sudo -n systemctl restart k3s 2>/dev/null || true)",
                input=body, timeout=120)
        return "registries.yaml merged, k3s restarted"
    if dry_run:
        return _plan_docker(ssh, node, info) + ("; would log in" if login else "")
    done = _configure_docker(ssh, node, info)
    if login is not None:
        # The password travels on stdin, never in a command line or a log.
        args = sh("login", "--username", login[0], "--password-stdin", info.endpoint)
        ssh.run(node, f"if docker version >/dev/null 2>&1; then d=docker; else d='sudo -n "
                f"docker'; fi; $d {args} >/dev/null", input=login[1] + "\n", timeout=60)
        done += "; logged in"
    return done


def _same_yaml(a: str, b: str) -> bool:
    import yaml

    return bool(yaml.safe_load(a) == yaml.safe_load(b))


def _docker_config(ssh: Ssh, node: Node, info: RegistryInfo) -> tuple[str, str]:
    """(daemon.json now, daemon.json with the registry)."""
    current = ssh.run(node, "sudo -n cat /etc/docker/daemon.json 2>/dev/null || true",
                      timeout=30).stdout
    try:
        return current, merge_insecure(current, info.endpoint)
    except json.JSONDecodeError as exc:
        raise PushError(f"{node.name}: /etc/docker/daemon.json is not valid JSON: {exc}",
                        hint="fix it by hand first; fleetimg never overwrites a file it "
                        "cannot read") from exc


def _plan_docker(ssh: Ssh, node: Node, info: RegistryInfo) -> str:
    current, merged = _docker_config(ssh, node, info)
    if merged.strip() == current.strip():
        return "already configured"
    return f"would add {info.endpoint} to insecure-registries and reload Docker"


def _configure_docker(ssh: Ssh, node: Node, info: RegistryInfo) -> str:
    current, merged = _docker_config(ssh, node, info)
    if merged.strip() == current.strip():
        return "already configured"
    ssh.run(node, "sudo -n mkdir -p /etc/docker && sudo -n tee /etc/docker/daemon.json.fleetimg "
            ">/dev/null && sudo -n mv /etc/docker/daemon.json.fleetimg /etc/docker/daemon.json "
            f"&& {RELOAD_DOCKER}", input=merged, timeout=60)
    # Wait until the engine has re-read its configuration.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out = ssh.run(node, "docker info --format '{{json .RegistryConfig.IndexConfigs}}' "
                      "2>/dev/null || sudo -n docker info --format "
                      "'{{json .RegistryConfig.IndexConfigs}}'", check=False).stdout
        if info.endpoint in out:
            return "insecure-registries updated, Docker reloaded"
        time.sleep(0.5)
    raise PushError(f"{node.name}: Docker did not pick up the registry configuration",
                    hint="restart Docker on the node")


def configure_nodes(ssh: Ssh, nodes: list[Node], info: RegistryInfo,
                    parallel: int = 8, *, dry_run: bool = False) -> list[NodeOutcome[str]]:
    return for_each_node(nodes, lambda n: configure_node(ssh, n, info, dry_run=dry_run),
                         parallel=parallel)


def registry_ref(image: LocalImage, host: str) -> str:
    name = image.ref.split("@")[0]
    return f"{host}/{name}"


def push_to_registry(image: LocalImage, info: RegistryInfo) -> str:
    local_ref = registry_ref(image, info.upload_endpoint)
    programs.run(["docker", "tag", image.id, local_ref])
    try:
        programs.run(["docker", "push", local_ref], timeout=3600)
    finally:
        with stop.cleanup():  # the extra local name goes even after Ctrl-C
            programs.run(["docker", "rmi", local_ref], check=False, timeout=30)
    return registry_ref(image, info.endpoint)


def pull_on_node(ssh: Ssh, plan: NodePlan, image: LocalImage, remote_ref: str) -> str:
    node = plan.node
    if node.runtime is Runtime.K3S:
        raise PushError(f"{node.name}: --via registry for k3s nodes is not available yet",
                        hint="use --via ssh for k3s nodes")
    d = plan.docker  # pre-flight already found whether Docker needs sudo there
    ssh.run(node, f"{docker(d, 'pull', '-q', remote_ref)} >/dev/null", timeout=3600)
    got = ssh.run(node, docker(d, "image", "inspect", "--format", ID_FORMAT, remote_ref),
                  timeout=60).stdout
    if got.strip() != image.id:
        ssh.run(node, docker(d, "rmi", remote_ref), check=False)
        raise PushError(f"{node.name}: pulled image ID {got.strip()} differs from {image.id}")
    ssh.run(node, f"{docker(d, 'tag', remote_ref, image.ref)} && "
            f"{docker(d, 'rmi', remote_ref)} >/dev/null", timeout=60)
    return "pulled"
