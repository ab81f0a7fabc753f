"""fleetimg run on the lab fleet: real images pushed to real Docker engines on three nodes,
batch inference slices and Horovod training across them, a node killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import docker
import pytest

from fleetimg.inventory import Fleet
from fleetimg.lab.manager import LabConfig
from fleetimg.ssh import Ssh
from tests.integration.conftest import CA_BUNDLE, fleetimg, fleetimg_json
from tests.integration.test_push_relay import wait_back
from tests.terminal import from_terminal

pytestmark = pytest.mark.integration

# ResNet-50 at 64 px: the same network, a twelfth of the work per image of 224 px, so a
# slice takes seconds under QEMU rather than minutes.
SMALL = ("--", "--size", "64", "--batch-size", "4")


def build_and_push(fleet: Fleet, target: str, *extra: str) -> None:
    build = fleetimg("build", target, "--l4t", "R32.7.1", "--standin", "--no-smoke", *extra,
                     timeout=90 * 60)
    assert build.returncode == 0, build.stderr[-3000:]
    push = fleetimg("-i", str(fleet.path), "push", target, timeout=900)
    assert push.returncode == 0, push.stdout + push.stderr


@pytest.fixture(scope="module")
def pytorch_on_lab(lab_fleet: Fleet, standin_pytorch: str) -> Fleet:
    build_and_push(lab_fleet, "pytorch")
    return lab_fleet


def run_json(*args: str, timeout: float = 600) -> tuple[int, object]:
    """fleetimg ... --json, the flag placed before any `--` (after it, it is the worker's)."""
    cut = args.index("--") if "--" in args else len(args)
    proc = fleetimg(*args[:cut], "--json", *args[cut:], timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def results(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_batch_run_gives_per_node_throughput_and_every_image_once(
        pytorch_on_lab: Fleet, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    code, data = run_json("-i", str(pytorch_on_lab.path), "run", "pytorch",
                          "--synthetic", "24", "-o", str(out), *SMALL)
    assert code == 0, data
    assert isinstance(data, dict)
    slices = data["slices"]
    assert [(s["slice"], s["node"], s["ok"]) for s in slices] == [
        (0, "node1", True), (1, "node2", True), (2, "node3", True)]
    assert all(s["images"] == 8 and s["images_per_second"] > 0 and s["device"] == "cpu"
               for s in slices)
    assert data["images"] == 24 and data["lines"] == 24
    assert data["images_per_second"] == pytest.approx(
        sum(s["images_per_second"] for s in slices), abs=0.01)
    lines = results(out)
    assert sorted(r["file"] for r in lines) == [f"synthetic-{i:05d}" for i in range(24)]
    # Each image came from the slice the Indexed Job contract gives it.
    assert all(r["slice"] == int(str(r["file"])[-5:]) // 8 for r in lines)
    assert {r["node"] for r in lines} == {"node1", "node2", "node3"}
    # The worker containers are gone from every node.
    stop = fleetimg_json("-i", str(pytorch_on_lab.path), "run", "--stop")
    assert stop == (0, [{"node": f"node{i}", "ok": True, "removed": [], "error": None,
                         "hint": None} for i in (1, 2, 3)])


def test_a_node_killed_mid_run_leaves_the_others_finishing_and_its_slice_named(
        pytorch_on_lab: Fleet, ssh: Ssh, docker_client: docker.DockerClient,
        lab_config: LabConfig, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    argv = [sys.executable, "-m", "fleetimg", "-i", str(pytorch_on_lab.path), "run",
            "pytorch", "--synthetic", "36", "-o", str(out), "--json", *SMALL]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ))
    victim = docker_client.containers.get(lab_config.container(2))
    stderr: list[str] = []

    def watch() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            stderr.append(line)
            # node2's worker has its slice and the model: it is classifying. Power off.
            if line.startswith("node2: slice 1: 12 images to classify"):
                victim.kill()

    reader = threading.Thread(target=watch)
    reader.start()
    try:
        assert proc.stdout is not None
        stdout = proc.stdout.read()
        proc.wait(timeout=600)
    finally:
        reader.join(timeout=10)
        victim.reload()
        if victim.status != "running":
            victim.start()
    assert proc.returncode == 1, "".join(stderr)
    data = json.loads(stdout)
    by_slice = {s["slice"]: s for s in data["slices"]}
    assert by_slice[0]["ok"] and by_slice[2]["ok"], data
    assert not by_slice[1]["ok"] and by_slice[1]["node"] == "node2"
    assert "node2: lost the connection during slice 1" in by_slice[1]["error"]
    # The finished slices' images are there exactly once; none of the cut-off slice's.
    lines = results(out)
    assert sorted(r["file"] for r in lines) == [f"synthetic-{i:05d}" for i in
                                                [*range(12), *range(24, 36)]]
    rerun = data["rerun"]
    assert rerun == (f"fleetimg run pytorch --to node1,node3 --slices 3 --only-slices 1 "
                     f"--synthetic 36 -o {out} -- --size 64 --batch-size 4")

    # The command the report gave completes the same results file.
    code, again = run_json("-i", str(pytorch_on_lab.path),
                           *rerun.removeprefix("fleetimg ").split())
    assert code == 0, again
    assert isinstance(again, dict)
    assert [(s["slice"], s["node"], s["ok"]) for s in again["slices"]] == [(1, "node1", True)]
    lines = results(out)
    assert sorted(r["file"] for r in lines) == [f"synthetic-{i:05d}" for i in range(36)]

    # node2 is back with the killed worker's container left behind: --stop removes it.
    wait_back(ssh, pytorch_on_lab, "node2")
    code, stopped = fleetimg_json("-i", str(pytorch_on_lab.path), "run", "--stop",
                                  "--to", "node2")
    assert code == 0, stopped
    assert stopped == [{"node": "node2", "ok": True, "removed": ["fleetimg-run-pytorch-1"],
                        "error": None, "hint": None}]


def test_a_node_without_the_image_is_refused_with_the_push_that_fixes_it(
        lab_fleet: Fleet) -> None:
    code, data = fleetimg_json("-i", str(lab_fleet.path), "run", "pytorch", "--image",
                               "fleetimg-test/never-pushed:1", "--to", "node3", "--synthetic",
                               "3")
    assert code == 1
    assert isinstance(data, dict)
    (s,) = data["slices"]
    assert s["error"] == "node3: has no image fleetimg-test/never-pushed:1"
    assert s["hint"] == "fleetimg push fleetimg-test/never-pushed:1 --to node3"


@pytest.fixture(scope="module")
def horovod_on_lab(lab_fleet: Fleet, standin_horovod: str) -> Fleet:
    # Builds the Horovod image (a cross-compile, ~2 min) unless test_build's slow test left it
    # in the cache.
    build_and_push(lab_fleet, "horovod", "--ca-bundle", str(CA_BUNDLE))
    return lab_fleet


@pytest.mark.slow
def test_horovod_trains_across_three_nodes_with_identical_replicas(
        horovod_on_lab: Fleet, ssh: Ssh) -> None:
    proc = fleetimg("-i", str(horovod_on_lab.path), "run", "horovod", "-np", "3", "--json",
                    "--", "--steps", "4", timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert data["ok"] and data["np"] == 3 and data["hosts"] == "node1:1,node2:1,node3:1"
    assert data["verdict"] == "replicas identical on 3 workers"
    assert data["interface"] == "eth0"
    assert "node1[0]: step 3 loss" in proc.stderr  # rank output, labelled with its node
    # The SSH server containers went with the run.
    for node in horovod_on_lab.nodes:
        names = ssh.run(node, "docker ps -a --format '{{.Names}}'").stdout.split()
        assert not [n for n in names if n.startswith("fleetimg-run-")], (node.name, names)


@pytest.mark.slow
def test_a_rank_that_fails_fails_the_run(horovod_on_lab: Fleet) -> None:
    # Rank 2 (node3) exits 3 after joining: horovodrun must not report success.
    script = ("import sys, horovod.torch as hvd; hvd.init(); "
              "print('rank', hvd.rank(), 'on', hvd.size()); sys.exit(3 if hvd.rank() == 2 else 0)")
    proc = fleetimg("-i", str(horovod_on_lab.path), "run", "horovod", "--json", "--",
                    "python3", "-c", script, timeout=900)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert not data["ok"] and data["exit_code"] != 0
    assert data["error"].endswith("rank 2 on node3 exited first, with code 3"), data
    assert "node3[2]: rank 2 on 3" in proc.stderr


@pytest.mark.slow
def test_the_launcher_checks_host_keys_although_horovodrun_says_not_to(
        horovod_on_lab: Fleet, ssh: Ssh) -> None:
    # horovodrun's ssh carries -o StrictHostKeyChecking=no; the launcher's known_hosts
    # must still decide. --keep leaves the SSH servers to look at.
    inv = str(horovod_on_lab.path)
    proc = fleetimg("-i", inv, "run", "horovod", "--keep", "--json", "--", "true", timeout=900)
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        node1 = horovod_on_lab.node("node1")
        as_mpiuser = "docker exec -u mpiuser -e HOME=/home/mpiuser fleetimg-run-horovod"
        ok = ssh.run(node1, f"{as_mpiuser} ssh -o StrictHostKeyChecking=no -p 2222 node2 "
                     "hostname", check=False)
        assert ok.returncode == 0 and ok.stdout.strip() == "node2", ok.stdout + ok.stderr
        # Without the known_hosts fleetimg wrote, node2's key is unknown: refused.
        # (Its exit status is echoed: fleetimg's own ssh would take 255 for its own hop.)
        refused = ssh.run(node1, f"{as_mpiuser} ssh -o StrictHostKeyChecking=no "
                          "-o UserKnownHostsFile=/dev/null -p 2222 node2 hostname 2>&1; "
                          "echo exit $?").stdout
        assert "Host key verification failed" in refused and refused.endswith("exit 255\n")
    finally:
        assert fleetimg("-i", inv, "run", "--stop").returncode == 0


def test_ctrl_c_stops_the_run_and_removes_every_worker(
        pytorch_on_lab: Fleet, ssh: Ssh, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    out.write_text("an earlier run's file\n")
    argv = [sys.executable, "-m", "fleetimg", "-i", str(pytorch_on_lab.path), "run",
            "pytorch", "--synthetic", "60", "-o", str(out), *SMALL]
    proc = subprocess.Popen(from_terminal(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stderr is not None
    seen: list[str] = []
    for line in proc.stderr:
        seen.append(line)
        if "images to classify" in line:
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, "".join(seen) + rest
    assert "interrupted" in rest and "unfinished: slices 0,1,2 of the batch run" in rest
    # No slice finished: the earlier file is left as it was, not half-written.
    assert out.read_text() == "an earlier run's file\n"
    for node in pytorch_on_lab.nodes:
        names = ssh.run(node, "docker ps -a --format '{{.Names}}'").stdout.split()
        assert not [n for n in names if n.startswith("fleetimg-run-")], (node.name, names)


def test_k3s_manifests_name_the_images_as_pushed_and_pass_the_schema(
        pytorch_on_lab: Fleet, tmp_path: Path) -> None:
    out = tmp_path / "job.yaml"
    proc = fleetimg("-i", str(pytorch_on_lab.path), "k3s", "manifests", "pytorch", "-o",
                    str(out))
    assert proc.returncode == 0, proc.stderr
    assert "Job fleetimg-pytorch-r32-7-1 (valid for Kubernetes 1.31)" in proc.stderr
    text = out.read_text()
    assert "image: fleetimg/pytorch:r32.7.1\n" in text and "completions: 3\n" in text
    checked = fleetimg("k3s", "validate", str(out))
    assert checked.returncode == 0 and "2 object(s) valid" in checked.stdout
    # The same check catches a hand edit that Kubernetes would refuse.
    out.write_text(text.replace("completions: 3", "completions: three"))
    broken = fleetimg("k3s", "validate", str(out))
    assert broken.returncode == 1
    assert "spec.completions: 'three' is not of type 'integer'" in broken.stderr


def test_k3s_label_needs_a_k3s_server(lab_fleet: Fleet) -> None:
    dry = fleetimg("-i", str(lab_fleet.path), "k3s", "label", "--to", "node2", "--dry-run")
    assert dry.stdout == ("node1: sudo -n k3s kubectl label node node2 fleetimg/l4t=R32.7.1 "
                          "fleetimg/module=nano-4gb --overwrite\n")
    # The lab's nodes run Docker, not K3s: one line, and the way to name the server.
    proc = fleetimg("-i", str(lab_fleet.path), "k3s", "label")
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[0] == "error: node1: no k3s command: not a K3s server"
    assert "--server" in proc.stderr
