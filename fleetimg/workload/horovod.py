"""`fleetimg run horovod`: data-parallel training across boards with horovodrun over SSH.

On every selected node the horovod image's SSH server starts in a container on the host's
network (port 2222, user mpiuser). fleetimg then gives each container what horovodrun needs
and nobody writes by hand: the public key in authorized_keys, the other containers' host
keys (read from each one over the workstation's verified SSH connection) in known_hosts,
checked strictly although horovodrun asks ssh not to (STRICT_SSH), and every node's name
and fleet address (`--add-host`), so a name never resolves to 127.0.1.1. horovodrun starts
from the first node with the private key and the hostfile made from the inventory; each
rank's output comes back labelled with its node.

Gloo binds to the network interface named in HOROVOD_GLOO_IFACE, one name for every rank
(horovod's gloo_run). fleetimg reads which interface holds each node's fleet address and
passes it as `--network-interface`, which also skips horovodrun's interface probe (a task
server per host: slow on boards). Nodes that name it differently cannot share one run.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, TypeVar

from fleetimg import private, stop
from fleetimg.errors import FleetimgError, RunError, UsageError
from fleetimg.inventory import INTERNAL_KEY_NAME, Fleet, Node
from fleetimg.labels import CUDA as LABEL_CUDA
from fleetimg.parallel import for_each_node
from fleetimg.ssh import Ssh
from fleetimg.workload.nodes import (
    RUN_LABEL,
    Kind,
    Worker,
    container_name,
    prepare_workers,
    stop_runs,
)

T = TypeVar("T")

MPI_USER = "mpiuser"
MPI_HOME = f"/home/{MPI_USER}"
DEFAULT_TRAIN = ("python3", "/app/train_mnist_synthetic.py")
# What the image's own training script prints on rank 0 when the replicas match.
VERDICT_RE = re.compile(r"replicas identical on (\d+) workers")
# horovodrun's prefix on every rank's line (safe_shell_exec.prefix_connection).
_RANK_RE = re.compile(r"^(?:[A-Z][a-z]{2} .{20})?\[(\d+)\]<(stdout|stderr)>:(.*)$")
SSHD_WAIT_SECONDS = 120.0  # host keys are generated under QEMU on a workstation lab
# horovodrun runs `ssh -o StrictHostKeyChecking=no ...` through the shell
# (horovod/runner/util/remote.py, SSH_COMMAND_PREFIX), which would accept any host key for
# a board's name. ssh keeps the first value it is given for an option, so this `ssh`, ahead
# of /usr/bin in the image's PATH on the launcher, makes the known_hosts fleetimg wrote
# binding: a wrong key ends the run instead of being accepted.
STRICT_SSH = "/usr/local/bin/ssh"
_STRICT_SSH_SCRIPT = """\
#!/bin/sh
# Written by fleetimg run horovod: host keys are checked whatever horovodrun passes.
exec /usr/bin/ssh -o StrictHostKeyChecking=yes "$@"
"""


@dataclass(frozen=True)
class HorovodOptions:
    target: str = "horovod"
    exact_image: bool = False
    np: int | None = None  # ranks; default one per node
    train: tuple[str, ...] = ()  # script arguments, or a whole command
    port: int = 2222
    keep: bool = False  # leave the SSH server containers running afterwards
    # Train with an image built without CUDA on boards that have a GPU (CPU training).
    allow_cpu_only: bool = False


@dataclass(frozen=True)
class HorovodPlan:
    workers: tuple[Worker, ...]
    np: int
    slots: int  # ranks per node
    iface: str
    command: tuple[str, ...]  # what every rank runs
    checks_replicas: bool  # the image's own script: its verdict line is required
    options: HorovodOptions

    @property
    def hosts(self) -> str:
        return ",".join(f"{w.node.name}:{self.slots}" for w in self.workers)

    def node_of_rank(self, rank: int) -> str:
        # horovodrun fills each host's slots in -H order (get_host_assignments).
        return self.workers[min(rank // self.slots, len(self.workers) - 1)].node.name


@dataclass(frozen=True)
class RankLine:
    node: str
    rank: int | None  # None: horovodrun's own output on the launcher
    stream: str
    text: str


@dataclass(frozen=True)
class HorovodReport:
    plan: HorovodPlan
    exit_code: int
    verdict: str | None
    seconds: float
    tail: tuple[str, ...]  # the last lines, for the error

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and (self.verdict is not None
                                        or not self.plan.checks_replicas)


def train_command(args: Sequence[str]) -> tuple[tuple[str, ...], bool]:
    """Arguments after `--`: options for the image's script, or a command of their own."""
    if args and not args[0].startswith("-"):
        return tuple(args), False
    return (*DEFAULT_TRAIN, *args), True


def parse_iface(ip_addr_output: str, address: str) -> str | None:
    """The interface holding `address`, from `ip -o -4 addr show`."""
    for line in ip_addr_output.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "inet" and fields[3].split("/")[0] == address:
            return fields[1]
    return None


def plan_horovod(ssh: Ssh, nodes: Sequence[Node], options: HorovodOptions) -> HorovodPlan:
    if len(nodes) < 1:
        raise UsageError("no nodes selected", hint="--to all-nodes, a group, or node1,node2")
    np = options.np or len(nodes)
    if np < 1:
        raise UsageError(f"-np {np}: at least one rank", hint="e.g. -np 3")
    workers, refused = prepare_workers(ssh, nodes, options.target, exact=options.exact_image)
    if refused:
        lines = "; ".join(e.message for e in refused.values())
        hints = {e.hint for e in refused.values() if e.hint}
        stale = [n for n, e in refused.items() if (e.hint or "").startswith("fleetimg push")]
        if len(stale) == len(refused):  # one push fixes them all
            hints = {f"fleetimg push {options.target} --to {','.join(stale)}"}
        raise RunError(f"training needs every selected node, and {len(refused)} cannot run: "
                       f"{lines}", hint=" / ".join(sorted(hints)) or
                       "leave them out with --to")
    images = {w.image for w in workers}
    if len(images) > 1:
        raise RunError("the ranks would run different images ("
                       + ", ".join(f"{w.node.name}: {w.image}" for w in workers) + ")",
                       hint="train on boards of one L4T release: --to a group of them")
    if not options.allow_cpu_only:
        check_cuda_built(_on_every(workers, lambda w: _image_cuda(ssh, w)), workers)
    names = _on_every(workers, lambda w: _fleet_iface(ssh, w.node))
    if len(set(names.values())) > 1:
        raise RunError(
            "Gloo needs one interface name on every node, and the fleet addresses are on "
            + ", ".join(f"{n}: {i}" for n, i in names.items()),
            hint="train on boards of one kind (a Nano's eth0 is an Orin devkit's enP8p1s0)")
    command, checks = train_command(options.train)
    return HorovodPlan(tuple(workers), np, math.ceil(np / len(workers)),
                       next(iter(names.values())) or "eth0", command, checks, options)


def _on_every(workers: Sequence[Worker], operation: Callable[[Worker], T]) -> dict[str, T]:
    """`operation` on every worker at once; its value per node, or the first node's error:
    training needs them all."""
    by_name = {w.node.name: w for w in workers}
    outcomes = for_each_node([w.node for w in workers],
                             lambda node: operation(by_name[node.name]))
    failed = [o.error for o in outcomes if o.error is not None]
    if failed:
        raise failed[0]
    return {o.node.name: o.value for o in outcomes if o.value is not None}


def _image_cuda(ssh: Ssh, worker: Worker) -> str:
    fmt = "{{ index .Config.Labels " + f'"{LABEL_CUDA}"' + " }}"
    out = ssh.run(worker.node, worker.command("image", "inspect", "--format", fmt,
                                              worker.image), timeout=30, check=False)
    return out.stdout.strip()


def check_cuda_built(labels: dict[str, str], workers: Sequence[Worker]) -> None:
    """Refuse a CPU-only Horovod where a board has a GPU (its Docker has the nvidia
    runtime): the training script moves the model to the GPU, and a Horovod built without
    CUDA crashes at the first collective on a CUDA tensor ("...GPU device but not compiled
    with CUDA", horovod/common/cuda_util.cc). An image without the label (built elsewhere)
    is taken as it is."""
    cpu_only = [w for w in workers if w.nvidia and labels.get(w.node.name) == "false"]
    if cpu_only:
        names = ",".join(w.node.name for w in cpu_only)
        raise RunError(
            f"{cpu_only[0].image} is a CPU-only Horovod ({LABEL_CUDA}=false) and {names} "
            "have a GPU: GPU training would crash at its first collective",
            hint="build horovod on a CUDA base (without --cpu-only / --standin), or pass "
            "--allow-cpu-only to train on the CPU")


def _fleet_iface(ssh: Ssh, node: Node) -> str:
    out = ssh.run(node, "ip -o -4 addr show", timeout=30)
    iface = parse_iface(out.stdout, node.address)
    if iface is None:
        raise RunError(f"{node.name}: no interface holds its fleet address {node.address}",
                       hint="Gloo binds the fleet address; is the inventory's address the "
                       "board's own (not a NAT or jump host)? `fleetimg nodes probe`")
    return iface


def execute_horovod(ssh: Ssh, fleet: Fleet, plan: HorovodPlan,
                    on_line: Callable[[RankLine], None] = lambda line: None,
                    on_step: Callable[[str], None] = lambda s: None) -> HorovodReport:
    start = time.monotonic()
    nodes = [w.node for w in plan.workers]
    try:
        on_step(f"starting the SSH server (port {plan.options.port}) on "
                f"{len(nodes)} node(s)")
        host_keys = _start_servers(ssh, plan)
        on_step("installing keys and known_hosts for mpiuser")
        _install_keys(ssh, fleet, plan, host_keys)
        on_step(f"horovodrun -np {plan.np} -H {plan.hosts} from {nodes[0].name}")
        return _launch(ssh, plan, on_line, start)
    finally:
        if not plan.options.keep or stop.requested():
            with stop.cleanup():
                stop_runs(ssh, nodes, Kind.HOROVOD)


def _server_command(worker: Worker, plan: HorovodPlan) -> str:
    name = container_name(Kind.HOROVOD)
    hosts = [a for w in plan.workers for a in ("--add-host", f"{w.node.name}:{w.node.address}")]
    run = worker.command(
        "run", "-d", "--name", name, "--label", f"{RUN_LABEL}={Kind.HOROVOD.value}",
        "--network", "host", *hosts, *worker.runtime_args(), worker.image,
        "sh", "-c", 'ssh-keygen -A >/dev/null && exec /usr/sbin/sshd -D -e -p "$0"',
        plan.options.port)
    return f"{worker.command('rm', '-f', name)} >/dev/null 2>&1; {run} >/dev/null"


# Inside the container: the host key once sshd listens on the port (in /proc/net/tcp*, as
# the host network shows it: no netstat in the image needed).
_READY_SCRIPT = """\
port=$(printf '%04X' "$1")
grep -qi ":$port 00000000:0000 0A\\|:$port 00000000000000000000000000000000:0000 0A" \
    /proc/net/tcp /proc/net/tcp6 2>/dev/null && cat /etc/ssh/ssh_host_ed25519_key.pub
"""


def _start_servers(ssh: Ssh, plan: HorovodPlan) -> dict[str, str]:
    name = container_name(Kind.HOROVOD)

    def one(worker: Worker) -> str:
        node = worker.node
        ssh.run(node, _server_command(worker, plan), timeout=120)
        deadline = time.monotonic() + SSHD_WAIT_SECONDS
        while True:
            out = ssh.run(node, worker.command("exec", "-i", name, "sh", "-s", "--",
                                               plan.options.port),
                          input=_READY_SCRIPT, check=False, timeout=60)
            if out.returncode == 0 and out.stdout.startswith("ssh-"):
                return " ".join(out.stdout.split()[:2])
            state = ssh.run(node, worker.command("inspect", "--format", "{{.State.Status}}",
                                                 name), check=False).stdout.strip()
            if state != "running" or time.monotonic() > deadline:
                logs = ssh.run(node, f"{worker.command('logs', '--tail', '3', name)} 2>&1",
                               check=False).stdout.strip().splitlines()
                raise RunError(
                    f"{node.name}: the training SSH server did not come up on port "
                    f"{plan.options.port} ({state or 'no container'}"
                    + (f": {logs[-1]}" if logs else "") + ")",
                    hint=f"is port {plan.options.port} taken there? --port picks another")
            time.sleep(1)

    return _on_every(plan.workers, one)


def _key_pair(fleet: Fleet) -> tuple[bytes, bytes]:
    """The fleet-internal key (beside fleet.toml) when the fleet has one, else a key made
    for this run only: it lives in the run's containers and goes with them."""
    path = fleet.base_dir / INTERNAL_KEY_NAME
    pub = path.with_name(path.name + ".pub")
    if path.exists() and pub.exists():
        return path.read_bytes(), pub.read_bytes()
    return private.keypair(f"fleetimg-{fleet.name}-horovod-run")


def _install_keys(ssh: Ssh, fleet: Fleet, plan: HorovodPlan, host_keys: dict[str, str]) -> None:
    key, pub = _key_pair(fleet)
    port = plan.options.port
    known = "".join(f"[{w.node.name}]:{port},[{w.node.address}]:{port} "
                    f"{host_keys[w.node.name]}\n" for w in plan.workers)
    name = container_name(Kind.HOROVOD)
    launcher = plan.workers[0].node.name

    def put(worker: Worker, path: str, body: bytes, mode: str) -> None:
        # The body travels on stdin: a private key is never on a command line or logged.
        script = (f"umask 077 && mkdir -p {MPI_HOME}/.ssh && cat > {path} && "
                  f"chmod {mode} {path} && chown -R {MPI_USER}: {MPI_HOME}/.ssh")
        ssh.run(worker.node, worker.command("exec", "-i", name, "sh", "-c", script),
                input=body, timeout=60)

    def one(worker: Worker) -> bool:
        put(worker, f"{MPI_HOME}/.ssh/authorized_keys", pub, "600")
        put(worker, f"{MPI_HOME}/.ssh/known_hosts", known.encode(), "644")
        if worker.node.name == launcher:
            put(worker, f"{MPI_HOME}/.ssh/id_ed25519", key, "600")
            ssh.run(worker.node, worker.command(
                "exec", "-i", name, "sh", "-c",
                f"cat > {STRICT_SSH} && chmod 755 {STRICT_SSH}"),
                input=_STRICT_SSH_SCRIPT, timeout=60)
        return True

    _on_every(plan.workers, one)


def _launch(ssh: Ssh, plan: HorovodPlan, on_line: Callable[[RankLine], None],
            start: float) -> HorovodReport:
    launcher = plan.workers[0]
    horovodrun = ["horovodrun", "-np", plan.np, "-H", plan.hosts, "-p", plan.options.port,
                  "--gloo", "--network-interface", plan.iface, *plan.command]
    command = launcher.command("exec", "-u", MPI_USER, "-w", MPI_HOME, "-e",
                               f"HOME={MPI_HOME}", container_name(Kind.HOROVOD), *horovodrun)
    proc = ssh.spawn(launcher.node, command)
    assert proc.stdout is not None and proc.stderr is not None
    tail: list[str] = []
    verdict: list[str] = []
    guard = threading.Lock()

    def pump(stream: IO[bytes], name: str) -> None:
        for raw in stream:
            text = raw.decode(errors="replace").rstrip()
            m = _RANK_RE.match(text)
            line = (RankLine(plan.node_of_rank(int(m.group(1))), int(m.group(1)), m.group(2),
                             m.group(3)) if m else RankLine(launcher.node.name, None, name, text))
            with guard:
                tail[:] = [*tail[-19:], f"{line.node}: {line.text}"]
                if line.rank == 0 and (v := VERDICT_RE.search(line.text)) \
                        and int(v.group(1)) == plan.np:
                    verdict.append(line.text.strip())
            on_line(line)

    readers = [threading.Thread(target=pump, args=(proc.stderr, "stderr"), daemon=True)]
    readers[0].start()
    try:
        pump(proc.stdout, "stdout")
        rc = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    readers[0].join(timeout=5)
    stop.child_ended(rc)
    stop.check()
    return HorovodReport(plan, rc, verdict[0] if verdict else None,
                         time.monotonic() - start, tuple(tail))


def failure(report: HorovodReport) -> FleetimgError:
    """Why a finished run did not train, for the CLI to show."""
    texts = [t.split(": ", 1)[-1].strip() for t in report.tail]
    last = next((t for t in reversed(texts) if t), "no output")
    if report.exit_code == 0:
        return RunError(f"horovodrun ended without the replicas' verdict on {report.plan.np} "
                        f"workers (last: {last})",
                        hint="the training script's rank 0 prints \"replicas identical on N "
                        "workers\" when the averaged gradients agree")
    # horovodrun names the first rank that failed: "Process name: 2", "Exit code: 3".
    rank = next((t.split(":", 1)[1].strip() for t in texts if t.startswith("Process name:")),
                None)
    code = next((t.split(":", 1)[1].strip() for t in texts if t.startswith("Exit code:")), None)
    if rank is not None and rank.isdigit():
        last = (f"rank {rank} on {report.plan.node_of_rank(int(rank))} exited first"
                + (f", with code {code}" if code else ""))
    return RunError(f"horovodrun exited with code {report.exit_code}: {last}",
                    hint="every rank must finish; the lines above name the node of each "
                    "rank. `fleetimg nodes probe` checks the boards; `--keep` leaves the "
                    "servers running to look inside")
