"""fleetimg run and k3s, without nodes: slicing, the results file, what a node is told to run,
horovodrun's output, and manifests checked against the real Kubernetes API schema."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest

from fleetimg.errors import RunError, UsageError
from fleetimg.inventory import Fleet, parse
from fleetimg.probe import parse_probe_output
from fleetimg.workload.batch import (
    BatchOptions,
    BatchPlan,
    SlicePlan,
    _slice_command,
    parse_slices,
    rerun_command,
    write_results,
)
from fleetimg.workload.horovod import (
    _RANK_RE,
    VERDICT_RE,
    HorovodOptions,
    HorovodPlan,
    check_cuda_built,
    parse_iface,
    train_command,
)
from fleetimg.workload.k3s import (
    ManifestError,
    ManifestOptions,
    label_command,
    load_yaml,
    manifests,
    to_yaml,
    validate,
)
from fleetimg.workload.nodes import Worker
from tests.conftest import DATA


def fleet() -> Fleet:
    nodes = [{"name": "node1", "address": "10.0.0.11", "module": "nano-4gb"},
             {"name": "node2", "address": "10.0.0.12", "module": "nano-4gb"},
             {"name": "orin1", "address": "10.0.0.21", "module": "orin-nano",
              "l4t": "R36.4.3"}]
    return parse({"fleet": {"subnet": "10.0.0.0/24", "l4t": "R32.7.1"}, "nodes": nodes},
                 base_dir=Path("/tmp"))


def worker(f: Fleet, name: str, probe_file: str, *, emulates: bool = False) -> Worker:
    node = f.node(name)
    probe = parse_probe_output(node, (DATA / "probe" / probe_file).read_text())
    # An x86 lab node with QEMU's binfmt registration (this capture predates the key).
    probe = dataclasses.replace(probe, arm64_emulation=emulates or probe.arm64_emulation)
    return Worker(node, "fleetimg/pytorch:r32.7.1",
                  "sudo -n docker" if probe.docker_sudo else "docker",
                  "nvidia" in probe.docker_runtimes, probe)


@pytest.mark.parametrize(("text", "want"), [
    ("1", (1,)), ("2,0", (0, 2)), ("0-2,5", (0, 1, 2, 5)), ("3,3", (3,)),
])
def test_slice_lists_parse(text: str, want: tuple[int, ...]) -> None:
    assert parse_slices(text) == want


@pytest.mark.parametrize("text", ["", "a", "1-", "-1", "1,,2", "2-x"])
def test_bad_slice_lists_are_one_line(text: str) -> None:
    with pytest.raises(UsageError, match="--only-slices"):
        parse_slices(text)


def lines(slice_: int, total: int, files: list[str]) -> list[str]:
    return [json.dumps({"file": f, "class": 1, "slice": slice_, "slices": total})
            for f in files]


def test_a_whole_run_replaces_the_results_file(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    out.write_text("\n".join(lines(0, 3, ["old"])) + "\n")
    assert write_results(out, 2, {0: lines(0, 2, ["a"]), 1: lines(1, 2, ["b"])},
                         keep=False) == 2
    assert [json.loads(x)["file"] for x in out.read_text().splitlines()] == ["a", "b"]
    assert not out.with_name("r.jsonl.tmp").exists()


def test_the_results_file_is_never_written_through_a_planted_link(tmp_path: Path) -> None:
    # It was staged at the fixed name r.jsonl.tmp: a link planted there was written through.
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    out = tmp_path / "r.jsonl"
    planted = out.with_name("r.jsonl.tmp")
    planted.symlink_to(victim)
    write_results(out, 1, {0: lines(0, 1, ["a"])}, keep=False)
    assert victim.read_text() == "precious\n" and planted.is_symlink()
    assert [json.loads(x)["file"] for x in out.read_text().splitlines()] == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl", "r.jsonl.tmp", "victim"]


def test_a_rerun_replaces_only_its_slices_of_the_same_job(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    # Slice 1 was cut off before: the file holds slices 0 and 2 of a 3-slice job, and one
    # line of another job (2 slices) that the re-run must drop.
    out.write_text("\n".join(lines(0, 3, ["a"]) + lines(2, 3, ["c"]) + lines(1, 2, ["x"]))
                   + "\n")
    write_results(out, 3, {1: lines(1, 3, ["b1", "b2"])}, keep=True)
    files = [json.loads(x)["file"] for x in out.read_text().splitlines()]
    assert sorted(files) == ["a", "b1", "b2", "c"]
    # The same slice again replaces its own lines: no image twice.
    write_results(out, 3, {1: lines(1, 3, ["b1", "b2"])}, keep=True)
    assert len(out.read_text().splitlines()) == 4


def test_nothing_finished_leaves_an_earlier_file_alone(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    out.write_text("earlier\n")
    assert write_results(out, 3, {}, keep=False) == 0
    assert out.read_text() == "earlier\n"


def test_the_rerun_command_carries_the_job_options() -> None:
    options = BatchOptions(images_dir="/nfs/images", weights="/nfs/resnet50.pt",
                           worker_args=("--batch-size", "4"), output=Path("out.jsonl"))
    text = rerun_command(options, 3, [1], ["node1", "node3"])
    assert text == ("fleetimg run pytorch --to node1,node3 --slices 3 --only-slices 1 "
                    "--images /nfs/images --weights /nfs/resnet50.pt -o out.jsonl -- "
                    "--batch-size 4")
    assert "--synthetic 120" in rerun_command(BatchOptions(), 2, [0, 1], ["node2"])
    exact = BatchOptions(target="demo/pytorch:latest", exact_image=True)
    assert rerun_command(exact, 2, [1], ["node1"]).startswith(
        "fleetimg run pytorch --image demo/pytorch:latest --to node1 --slices 2")


def plan_for(w: Worker, options: BatchOptions) -> BatchPlan:
    return BatchPlan(3, (SlicePlan(1, w.node, w.image),), (w,), {}, options)


def test_a_nano_slice_runs_with_the_nvidia_runtime_through_sudo() -> None:
    w = worker(fleet(), "node2", "nano-jp461.txt")
    cmd = _slice_command(w, 1, plan_for(w, BatchOptions(images_dir="/nfs/my images",
                                                        weights="/nfs/w.pt")))
    assert "sudo -n docker run -d --name fleetimg-run-pytorch-1" in cmd
    assert "--runtime nvidia" in cmd and "--platform" not in cmd
    assert "-e JOB_COMPLETION_INDEX=1 -e TOTAL_JOBS=3" in cmd
    # Paths are quoted once, for the node's shell.
    assert "-v '/nfs/my images:/data/images:ro'" in cmd
    assert "-e WEIGHTS=/models/weights" in cmd
    assert 'sudo -n docker wait "$cid"' in cmd


def test_a_lab_node_runs_arm64_by_emulation_with_random_weights() -> None:
    w = worker(fleet(), "node1", "lab-node.txt", emulates=True)
    cmd = _slice_command(w, 0, plan_for(w, BatchOptions(synthetic=30,
                                                        worker_args=("--size", "64"))))
    assert "--runtime" not in cmd and "--platform linux/arm64" in cmd
    assert "-e SYNTHETIC=30" in cmd and "-e WEIGHTS=random" in cmd
    assert cmd.split("|| exit")[0].rstrip(") ").endswith("fleetimg/pytorch:r32.7.1 --size 64")


def test_train_args_go_to_the_script_or_replace_the_command() -> None:
    assert train_command([]) == (("python3", "/app/train_mnist_synthetic.py"), True)
    assert train_command(["--steps", "5"])[0][-2:] == ("--steps", "5")
    assert train_command(["python3", "/app/mine.py"]) == (("python3", "/app/mine.py"), False)


IP_ADDR = """\
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
2: docker0    inet 172.17.0.1/16 brd 172.17.255.255 scope global docker0\\       valid_lft forever
5: enP8p1s0    inet 10.0.0.21/24 brd 10.0.0.255 scope global enP8p1s0\\       valid_lft forever
"""


def test_the_interface_holding_the_fleet_address() -> None:
    assert parse_iface(IP_ADDR, "10.0.0.21") == "enP8p1s0"
    assert parse_iface(IP_ADDR, "10.0.0.2") is None  # a prefix of another is not it


def test_rank_lines_are_labelled_with_their_node() -> None:
    f = fleet()
    ws = tuple(worker(f, n, "lab-node.txt") for n in ("node1", "node2"))
    plan = HorovodPlan(ws, np=4, slots=2, iface="eth0", command=("python3",),
                       checks_replicas=True, options=HorovodOptions())
    assert plan.hosts == "node1:2,node2:2"
    assert [plan.node_of_rank(r) for r in range(4)] == ["node1", "node1", "node2", "node2"]
    m = _RANK_RE.match("[3]<stderr>:Traceback (most recent call last):")
    assert m and m.group(1) == "3" and m.group(2) == "stderr"
    # horovodrun --prefix-output-with-timestamp puts time.asctime() first.
    m = _RANK_RE.match("Thu Nov 26 03:05:55 2026[0]<stdout>:replicas identical on 4 workers")
    assert m and m.group(1) == "0"
    v = VERDICT_RE.search(m.group(3))
    assert v and v.group(1) == "4"
    assert _RANK_RE.match("Checking whether extension=pytorch was built") is None


def test_manifests_per_release_pass_the_api_schema() -> None:
    docs = manifests(fleet().nodes, ManifestOptions("pytorch", image="fleetimg/pytorch:dev"))
    validate(docs)
    jobs = [d for d in docs if d["kind"] == "Job"]
    # One job per L4T release: the Nanos' R32.7.1 and the Orin's R36.4.3.
    assert [j["metadata"]["name"] for j in jobs] == ["fleetimg-pytorch-r32-7-1",
                                                     "fleetimg-pytorch-r36-4-3"]
    nano = jobs[0]["spec"]
    assert nano["completionMode"] == "Indexed" and nano["completions"] == 2
    pod = nano["template"]["spec"]
    # Not K3s's own `nvidia` RuntimeClass (k3s#8751): ours, with the same handler.
    assert pod["runtimeClassName"] == "fleetimg-nvidia"
    (rc,) = [d for d in docs if d["kind"] == "RuntimeClass"]
    assert (rc["metadata"]["name"], rc["handler"]) == ("fleetimg-nvidia", "nvidia")
    assert pod["nodeSelector"] == {"fleetimg/l4t": "R32.7.1"}
    assert pod["containers"][0]["image"] == "fleetimg/pytorch:dev"
    assert pod["containers"][0]["imagePullPolicy"] == "Never"
    assert {"name": "TOTAL_JOBS", "value": "2"} in pod["containers"][0]["env"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert {"key": "fleetimg/module", "operator": "In", "values": ["nano-4gb"]} in \
        terms["nodeSelectorTerms"][0]["matchExpressions"]
    # The YAML written is what was checked.
    assert load_yaml(to_yaml(docs)) == docs


def test_triton_is_a_daemonset_on_its_boards() -> None:
    docs = manifests(fleet().nodes[:2], ManifestOptions("triton", image="fleetimg/triton:dev",
                                                        models_dir="/srv/models"))
    validate(docs)
    (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
    spec = ds["spec"]["template"]["spec"]
    assert spec["volumes"] == [{"name": "models", "hostPath": {"path": "/srv/models"}}]
    assert [p["hostPort"] for p in spec["containers"][0]["ports"]] == [8000, 8001, 8002]
    assert ds["spec"]["selector"]["matchLabels"] == ds["spec"]["template"]["metadata"]["labels"]


@pytest.mark.parametrize(("path", "value", "match"), [
    (("spec", "completionMode"), 7, "completionMode"),
    (("spec", "template", "spec", "containers", 0, "imagePulPolicy"), "Never", "imagePulPolicy"),
    (("spec", "template", "spec", "restartPolicy"), ["Never"], "restartPolicy"),
])
def test_a_broken_manifest_is_caught_by_the_same_validation(
        path: tuple[object, ...], value: object, match: str) -> None:
    docs = manifests(fleet().nodes[:2], ManifestOptions("pytorch", image="x/pytorch:1"))
    broken = copy.deepcopy(docs)
    target = broken[1]
    for key in path[:-1]:
        target = target[key]  # type: ignore[index]
    target[path[-1]] = value  # type: ignore[index]
    with pytest.raises(ManifestError, match=match):
        validate(broken)


def test_an_unknown_kind_or_target_is_one_line() -> None:
    with pytest.raises(ManifestError, match="Couldn't find schema"):
        validate([{"apiVersion": "batch/v9", "kind": "Jobb", "metadata": {"name": "x"}}])
    with pytest.raises(UsageError, match="no K3s manifest for target 'horovod'") as exc:
        manifests(fleet().nodes, ManifestOptions("horovod", image="x"))
    assert exc.value.hint and "fleetimg run horovod" in exc.value.hint
    with pytest.raises(UsageError, match=r"--k8s-version 1\.2:"):
        validate(manifests(fleet().nodes[:1], ManifestOptions("triton", image="x")), "1.2")


def test_label_command_is_quoted_for_the_server() -> None:
    assert label_command(fleet().node("orin1")) == (
        "sudo -n k3s kubectl label node orin1 fleetimg/l4t=R36.4.3 "
        "fleetimg/module=orin-nano --overwrite")


def test_the_job_mounts_the_boards_data_as_run_does() -> None:
    options = ManifestOptions("pytorch", image="x/pytorch:1", images_dir="/nfs/images",
                              weights="/nfs/resnet50.pt")
    (job,) = [d for d in manifests(fleet().nodes[:2], options) if d["kind"] == "Job"]
    pod = job["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "images", "hostPath": {"path": "/nfs/images"}},
                              {"name": "weights", "hostPath": {"path": "/nfs/resnet50.pt"}}]
    container = pod["containers"][0]
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/data/images",
                                                                   "/models/weights"]
    assert {"name": "WEIGHTS", "value": "/models/weights"} in container["env"]
    with pytest.raises(UsageError, match="--images needs --weights"):
        manifests(fleet().nodes[:2], ManifestOptions("pytorch", image="x/pytorch:1",
                                                     images_dir="/nfs/images"))


def test_a_cpu_only_horovod_is_refused_where_a_board_has_a_gpu() -> None:
    # A Horovod built without CUDA crashes GPU training at its first collective.
    f = fleet()
    gpu = dataclasses.replace(worker(f, "node1", "nano-jp461.txt"), nvidia=True)
    lab = dataclasses.replace(worker(f, "node2", "nano-jp461.txt"), nvidia=False)
    with pytest.raises(RunError, match=r"CPU-only Horovod .* node1 have a GPU") as info:
        check_cuda_built({"node1": "false", "node2": "false"}, [gpu, lab])
    assert info.value.hint is not None and "--allow-cpu-only" in info.value.hint
    # Built with CUDA, built elsewhere (no label), or boards without a GPU: accepted.
    check_cuda_built({"node1": "true", "node2": "false"}, [gpu, lab])
    check_cuda_built({"node1": "", "node2": ""}, [gpu, lab])
    check_cuda_built({"node2": "false"}, [lab])
