from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fleetimg import inventory
from fleetimg.build.builder import BuildOptions, build_argv, build_verdict, parse_failure
from fleetimg.build.plan import (
    board_releases,
    group_releases,
    parse_build_args,
    plan_build,
    single_group,
)
from fleetimg.build.releases import images_for, load_aliases, load_table
from fleetimg.build.targets import load_target, target_names
from fleetimg.buildkit import BuildCommand, arm64_route, parse_platforms
from fleetimg.errors import ToolMissing, UsageError
from fleetimg.l4t import L4TRelease
from tests.conftest import DATA


def plan_for(target: str, l4t: str, tmp_path: Path, **kw: object):  # type: ignore[no-untyped-def]
    t = load_target(target)
    group = single_group(group_releases(board_releases((), l4t)))
    return plan_build(t, group, directory=tmp_path, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("l4t", "pytorch_base", "triton_base", "triton"),
    [
        ("R32.6.1", "nvcr.io/nvidia/l4t-pytorch:r32.6.1-pth1.9-py3",
         "nvcr.io/nvidia/l4t-base:r32.6.1", "2.17.0"),
        ("R32.7.1", "nvcr.io/nvidia/l4t-pytorch:r32.7.1-pth1.10-py3",
         "nvcr.io/nvidia/l4t-base:r32.7.1", "2.19.0"),
        ("R32.7.4", "nvcr.io/nvidia/l4t-pytorch:r32.7.1-pth1.10-py3",
         "nvcr.io/nvidia/l4t-base:r32.7.1", "2.19.0"),
        ("R35.2.1", "nvcr.io/nvidia/l4t-pytorch:r35.2.1-pth2.0-py3",
         "nvcr.io/nvidia/l4t-jetpack:r35.2.1", "2.34.0"),
        ("R35.6.0", "nvcr.io/nvidia/l4t-pytorch:r35.2.1-pth2.0-py3",
         "nvcr.io/nvidia/l4t-jetpack:r35.4.1", "2.35.0"),
    ],
)
def test_dry_run_bases(tmp_path: Path, l4t: str, pytorch_base: str, triton_base: str,
                       triton: str) -> None:
    assert plan_for("pytorch", l4t, tmp_path).base == pytorch_base
    assert plan_for("horovod", l4t, tmp_path).base == pytorch_base
    tp = plan_for("triton", l4t, tmp_path)
    assert tp.base == triton_base and tp.build_args["BASE_IMAGE"] == triton_base
    assert tp.build_args["TRITON_VERSION"] == triton
    assert tp.build_args["TRITON_TARBALL"].startswith(f"tritonserver{triton}-jetpack")
    assert tp.build_args["MIN_COMPUTE_CAPABILITY"] == "5.3"
    assert tp.platform == "linux/arm64"


def test_labels_say_what_it_was_built_for(tmp_path: Path) -> None:
    plan = plan_for("pytorch", "R32.7.4", tmp_path, tags=("lab/pytorch:dev",))
    assert plan.labels["io.fleetimg.target"] == "pytorch"
    assert plan.labels["io.fleetimg.l4t"] == "R32.7.1"  # the image's userspace release
    assert plan.labels["io.fleetimg.jetpack"] == "4.6.1"
    assert plan.labels["io.fleetimg.base"] == plan.base
    for key in ("created", "revision", "source"):
        assert plan.labels[f"org.opencontainers.image.{key}"]
    assert plan.tags == ("fleetimg/pytorch:r32.7.1", "lab/pytorch:dev")
    assert plan.boards == (L4TRelease(32, 7, 4),)


def test_family_specific_build_args(tmp_path: Path) -> None:
    r32 = plan_for("triton", "R32.7.1", tmp_path).build_args["TRITON_APT_PACKAGES"]
    r35 = plan_for("triton", "R35.4.1", tmp_path).build_args["TRITON_APT_PACKAGES"]
    standin = plan_for("triton", "R32.7.1", tmp_path, standin=True)
    assert "libre2-4" in r32 and "libre2-5" in r35
    assert "libre2-9" in standin.build_args["TRITON_APT_PACKAGES"]
    assert standin.base == "fleetimg/l4t-standin:base"


def test_no_triton_for_jetpack_4_5(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"no Triton release for JetPack 4\.5"):
        plan_for("triton", "R32.5.0", tmp_path)


def test_unsupported_release() -> None:
    with pytest.raises(UsageError, match=r"no NGC base images for L4T R32\.4\.4") as info:
        images_for(L4TRelease(32, 4, 4))
    assert info.value.hint is not None and "R32.7.1" in info.value.hint
    assert images_for(L4TRelease(32, 7, 6)).l4t == L4TRelease(32, 7, 1)
    assert images_for(L4TRelease(35, 3, 1)).l4t == L4TRelease(35, 4, 1)


def test_nodes_needing_different_bases_are_listed(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    text = inventory.starter_toml(nodes=3, subnet="192.168.10.0/24", module="nano-4gb")
    head, sep, node3 = text.partition('name = "node3"\n')
    text = head + sep + 'l4t = "R35.4.1"\n' + node3.replace('"nano-4gb"', '"xavier-nx"', 1)
    path.write_text(text)
    fleet = inventory.load(path)
    groups = group_releases(board_releases(fleet.nodes, None))
    assert [len(g.nodes) for g in groups] == [2, 1]
    with pytest.raises(UsageError) as info:
        single_group(groups)
    assert "node1,node2 on R32.7.1 need r32.7.1" in info.value.message
    assert "node3 on R35.4.1 need r35.4.1" in info.value.message
    assert info.value.hint is not None and "--all-releases" in info.value.hint


def test_nano_sets_triton_min_compute_capability(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    text = inventory.starter_toml(nodes=2, subnet="192.168.10.0/24", module="xavier-nx")
    path.write_text(text.replace('module = "xavier-nx"', 'module = "nano-2gb"', 1))
    fleet = inventory.load(path)
    group = single_group(group_releases(board_releases(fleet.nodes, None)))
    plan = plan_build(load_target("triton"), group, directory=tmp_path)
    assert plan.build_args["MIN_COMPUTE_CAPABILITY"] == "5.3"
    # Horovod's CUDA code is compiled for the selected boards' GPUs only.
    horovod = plan_build(load_target("horovod"), group, directory=tmp_path)
    assert horovod.build_args["HOROVOD_BUILD_CUDA_CC_LIST"] == "53,72"
    xavier_only = single_group(group_releases(board_releases(fleet.nodes[1:], None)))
    assert plan_build(load_target("triton"), xavier_only,
                      directory=tmp_path).build_args["MIN_COMPUTE_CAPABILITY"] == "7.2"


def test_every_target_is_complete() -> None:
    assert target_names() == ["horovod", "pytorch", "triton"]
    for name in target_names():
        t = load_target(name)
        dockerfile = (t.directory / "Dockerfile").read_text()
        assert "ARG BASE_IMAGE" in dockerfile and "FROM ${BASE_IMAGE}" in dockerfile
        assert t.smoke and t.standin_base and t.description


def test_build_argv_uses_secret_never_a_build_arg(tmp_path: Path) -> None:
    plan = plan_for("pytorch", "R32.7.1", tmp_path)
    ca = tmp_path / "ca.crt"
    argv = build_argv(plan, BuildOptions(ca_bundle=ca), tmp_path, ("docker", "build"))
    assert ["--secret", f"id=cacert,src={ca}"] == argv[argv.index("--secret"):][:2]
    assert not any(str(ca) in a for a in argv if a.startswith("BASE_IMAGE") or ("=" in a
                   and a.split("=")[0].isupper()))
    assert argv[argv.index("--platform") + 1] == "linux/arm64"


def test_failure_names_the_step() -> None:
    lines = (DATA / "buildkit-failure.txt").read_text().splitlines()
    assert parse_failure(lines) == (
        "build failed at step [3/4] RUN pip3 install --no-cache-dir horovod==0.28.1 "
        "(exit code 1)")
    assert parse_failure(["boom"]) == "build failed: boom"


@pytest.mark.parametrize(("l4t", "image_release", "base", "pytorch"), [
    ("R36.2.0", "R36.2.0", "nvcr.io/nvidia/l4t-jetpack:r36.2.0", "dustynv/l4t-pytorch:r36.2.0"),
    ("R36.3.0", "R36.3.0", "nvcr.io/nvidia/l4t-jetpack:r36.3.0", "dustynv/l4t-pytorch:r36.2.0"),
    ("R36.4.0", "R36.4.0", "nvcr.io/nvidia/l4t-jetpack:r36.4.0", "dustynv/l4t-pytorch:r36.4.0"),
    # JetPack 6.2 and 6.2.1 have no tags of their own; later point releases by rule.
    ("R36.4.3", "R36.4.0", "nvcr.io/nvidia/l4t-jetpack:r36.4.0", "dustynv/l4t-pytorch:r36.4.0"),
    ("R36.4.4", "R36.4.0", "nvcr.io/nvidia/l4t-jetpack:r36.4.0", "dustynv/l4t-pytorch:r36.4.0"),
    ("R36.4.7", "R36.4.0", "nvcr.io/nvidia/l4t-jetpack:r36.4.0", "dustynv/l4t-pytorch:r36.4.0"),
    ("R36.5.0", "R36.4.0", "nvcr.io/nvidia/l4t-jetpack:r36.4.0", "dustynv/l4t-pytorch:r36.4.0"),
    # The last releases of the older generations.
    ("R32.7.6", "R32.7.1", "nvcr.io/nvidia/l4t-base:r32.7.1",
     "nvcr.io/nvidia/l4t-pytorch:r32.7.1-pth1.10-py3"),
    ("R35.6.4", "R35.4.1", "nvcr.io/nvidia/l4t-jetpack:r35.4.1",
     "nvcr.io/nvidia/l4t-pytorch:r35.2.1-pth2.0-py3"),
])
def test_jetpack_6_and_last_point_releases_resolve(tmp_path: Path, l4t: str, image_release: str,
                                                   base: str, pytorch: str) -> None:
    images = images_for(L4TRelease.parse(l4t))
    assert str(images.l4t) == image_release and images.base == base
    assert plan_for("pytorch", l4t, tmp_path).base == pytorch
    assert plan_for("horovod", l4t, tmp_path).base == pytorch
    assert plan_for("pytorch", l4t, tmp_path).labels["io.fleetimg.l4t"] == image_release


def test_every_row_of_the_table_resolves_for_every_target_it_has(tmp_path: Path) -> None:
    for rel, images in load_table().items():
        for target in target_names():
            if target == "triton" and images.triton is None:
                continue
            assert plan_for(target, str(rel), tmp_path).base, (target, rel)
    for rel, (_jetpack, images_release) in load_aliases().items():
        assert images_for(rel).l4t == images_release
        assert L4TRelease.parse(str(rel)).jetpack == _jetpack, rel


def test_triton_on_jetpack_6_builds_on_ngcs_igpu_image(tmp_path: Path) -> None:
    plan = plan_for("triton", "R36.4.3", tmp_path)
    assert plan.base == "nvcr.io/nvidia/tritonserver:24.10-py3-igpu"
    assert plan.dockerfile == "Dockerfile.igpu"
    assert plan.labels["io.fleetimg.l4t"] == "R36.4.0"
    assert plan.build_args["MIN_COMPUTE_CAPABILITY"] == "8.7"
    old = plan_for("triton", "R32.7.6", tmp_path)
    assert old.dockerfile == "Dockerfile" and old.build_args["TRITON_TARBALL"].endswith(".tgz")
    standin = plan_for("triton", "R36.4.3", tmp_path, standin=True)
    assert standin.base == "fleetimg/l4t-standin:tritonserver-igpu"


@pytest.mark.parametrize(("l4t", "match"), [
    ("R28.2.1", r"no NGC base images for L4T R28\.2\.1"),
    ("R34.1.1", r"no NGC base images for L4T R34\.1\.1"),
    ("R38.2.0", r"R38\.2\.0 is JetPack 7\.0/7\.1 \(Thor\): not supported yet"),
    ("R39.0.0", r"R39\.0\.0 is JetPack 7\.2: not supported yet"),
    ("R36.1.0", r"no NGC base images for L4T R36\.1\.0"),
])
def test_releases_without_images_are_refused(l4t: str, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        images_for(L4TRelease.parse(l4t))


def test_standin_without_a_standin_base_is_refused(tmp_path: Path) -> None:
    # It used to fall back to the NGC base silently: a rehearsal would then try nvcr.io.
    target = dataclasses.replace(load_target("pytorch"), standin_base=None)
    group = single_group(group_releases(board_releases((), "R32.7.1")))
    with pytest.raises(UsageError, match="pytorch has no stand-in base for r32"):
        plan_build(target, group, directory=tmp_path, standin=True)
    assert plan_build(target, group, directory=tmp_path, standin=True,
                      base="local/base:1").base == "local/base:1"


def test_triton_dry_run_on_jetpack_5_1_2_names_the_update_1_tarball() -> None:
    # The first 5.1.2 asset was replaced after CVE-2023-31036; its old name 404s.
    proc = subprocess.run([sys.executable, "-m", "fleetimg", "build", "triton", "--l4t",
                           "R35.4.1", "--dry-run", "--json"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    args = json.loads(proc.stdout)[0]["build_args"]
    assert args["TRITON_TARBALL"] == "tritonserver2.35.0-jetpack5.1.2-update-1.tgz"


def test_r36_sub_ranges_get_their_own_igpu_tags(tmp_path: Path) -> None:
    # An R36.0-36.3 board takes only R36.0-36.3 images (CUDA 12.2), an R36.4+ board only
    # R36.4+ ones (CUDA 12.6): one tag for both broke the rule push checks.
    old = plan_for("triton", "R36.2.0", tmp_path)
    new = plan_for("triton", "R36.4.3", tmp_path)
    assert old.base == "nvcr.io/nvidia/tritonserver:24.02-py3-igpu"
    assert new.base == "nvcr.io/nvidia/tritonserver:24.10-py3-igpu"
    assert (old.build_args["TRITON_VERSION"], new.build_args["TRITON_VERSION"]) == ("2.43.0",
                                                                                     "2.51.0")


def test_a_dockerfiles_own_verdict_is_the_build_error() -> None:
    lines = (DATA / "buildkit-verdict.txt").read_text().splitlines()
    verdict = build_verdict(lines)
    assert verdict is not None
    message, hint = verdict
    assert message.startswith("this base's torch cannot load libcurand.so.10 at build time")
    assert hint is not None and hint.startswith("a JetPack 4 Horovod must be built where CUDA 10.2 is")
    # A failure without one keeps naming its step.
    assert build_verdict((DATA / "buildkit-failure.txt").read_text().splitlines()) is None


def test_horovod_is_built_with_cuda_unless_asked_for_a_cpu_base(tmp_path: Path) -> None:
    gpu = plan_for("horovod", "R35.4.1", tmp_path)
    assert gpu.build_args["HOROVOD_CUDA"] == "required"
    assert gpu.labels["io.fleetimg.cuda"] == "true"
    # Without nodes: the GPUs of every module that runs the release (R35: Xavier and
    # Orin; R32: Nano, TX2, Xavier; R36: Orin alone, the one CUDA 13 compiles for).
    assert gpu.build_args["HOROVOD_BUILD_CUDA_CC_LIST"] == "72,87"
    for l4t, ccs in (("R32.7.1", "53,62,72"), ("R36.4.3", "87")):
        assert plan_for("horovod", l4t, tmp_path).build_args[
            "HOROVOD_BUILD_CUDA_CC_LIST"] == ccs, l4t
    for kw in ({"standin": True}, {"cpu_only": True}):
        cpu = plan_for("horovod", "R32.7.1", tmp_path, **kw)
        assert cpu.build_args["HOROVOD_CUDA"] == "none", kw
        assert cpu.labels["io.fleetimg.cuda"] == "false", kw
    # Targets without CUDA code carry no such label.
    assert "io.fleetimg.cuda" not in plan_for("pytorch", "R32.7.1", tmp_path).labels



def test_build_args_from_the_user_come_last_and_are_checked(tmp_path: Path) -> None:
    args = parse_build_args(["CROSS_IMAGE=mirror/debian:bookworm-slim", "PIP_INDEX=x=y"])
    assert args == {"CROSS_IMAGE": "mirror/debian:bookworm-slim", "PIP_INDEX": "x=y"}
    plan = plan_build(load_target("horovod"), single_group(group_releases(
        board_releases((), "R35.4.1"))), directory=tmp_path, extra_args=args)
    assert plan.build_args["CROSS_IMAGE"] == "mirror/debian:bookworm-slim"
    for bad in ("NOEQUALS", "1X=2", "BASE_IMAGE=x"):
        with pytest.raises(UsageError):
            parse_build_args([bad])


# ---- where arm64 steps run -----------------------------------------------------------------

def test_a_builders_platforms_are_read_from_every_node() -> None:
    # docker/buildx docs/reference/buildx_inspect.md: a builder with an x86 node and an arm64
    # one reached over SSH.
    assert parse_platforms((DATA / "buildx-inspect.txt").read_text()) == (
        "linux/amd64", "linux/arm64", "linux/arm/v7", "linux/arm/v6")
    assert "linux/arm64" not in parse_platforms((DATA / "buildx-inspect-x86.txt").read_text())
    assert parse_platforms("Platforms: linux/amd64*, linux/arm64*\n") == (
        "linux/amd64", "linux/arm64")


def test_only_qemu_on_this_machine_needs_the_binfmt_handler() -> None:
    buildx = BuildCommand(("docker", "buildx", "build", "--load"), buildx="docker")
    named = BuildCommand(("docker", "buildx", "build", "--builder", "jetson", "--load"),
                         buildx="docker", builder="jetson")
    classic = BuildCommand(("/usr/bin/docker", "build"), {"DOCKER_BUILDKIT": "1"})
    arm64 = parse_platforms((DATA / "buildx-inspect.txt").read_text())
    x86 = parse_platforms((DATA / "buildx-inspect-x86.txt").read_text())
    # A builder that reports linux/arm64 runs it, whatever this machine is.
    route = arm64_route(named, arm64, "amd64")
    assert not route.needs_binfmt and route.how == "jetson runs linux/arm64"
    assert not arm64_route(buildx, arm64, "amd64").needs_binfmt
    # An arm64 engine (an Orin as build box, DOCKER_HOST=ssh://board) runs it natively.
    for command, platforms in ((classic, ()), (buildx, x86)):
        assert not arm64_route(command, platforms, "arm64").needs_binfmt
        assert arm64_route(command, platforms, "amd64").needs_binfmt
    # A named builder that cannot is refused, saying what it can.
    with pytest.raises(ToolMissing, match=r"jetson does not run linux/arm64 .*linux/386"):
        arm64_route(named, x86, "amd64")


@pytest.mark.skipif(shutil.which("docker") is None, reason="needs the docker CLI")
def test_a_named_builder_needs_buildx_and_says_so(tmp_path: Path) -> None:
    # This machine's docker CLI has no buildx plugin (Debian 12's docker.io): --builder is
    # refused in one line, before anything is built, with the way out.
    if subprocess.run(["docker", "buildx", "version"], capture_output=True,
                      check=False).returncode == 0:
        pytest.skip("this docker CLI has buildx")
    proc = subprocess.run([sys.executable, "-m", "fleetimg", "build", "pytorch", "--l4t",
                           "R32.7.1", "--standin", "--builder", "jetson", "--json"],
                          capture_output=True, text=True, timeout=60, check=False,
                          cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    error = json.loads(proc.stdout)["error"]
    assert error["message"].startswith("--builder jetson needs docker buildx")
    assert "DOCKER_HOST=ssh://USER@BOARD" in error["hint"]


@pytest.mark.skipif(shutil.which("docker") is None, reason="needs the docker CLI")
def test_a_missing_stand_in_base_names_the_command_that_makes_it(tmp_path: Path) -> None:
    # BuildKit would look for it on Docker Hub and fail at "load metadata for docker.io/...".
    root = Path(__file__).parents[2] / "dockerfiles"
    mine = tmp_path / "dockerfiles"
    shutil.copytree(root, mine)
    toml = mine / "pytorch" / "target.toml"
    toml.write_text(toml.read_text().replace('base = "fleetimg/l4t-standin:pytorch"',
                                             'base = "fleetimg-test/no-such-standin:1"'))
    proc = subprocess.run([sys.executable, "-m", "fleetimg", "build", "pytorch", "--l4t",
                           "R32.7.1", "--standin"], capture_output=True, text=True,
                          timeout=120, check=False, cwd=tmp_path,
                          env={**os.environ, "FLEETIMG_DOCKERFILES": str(mine)})
    assert proc.returncode == 2, proc.stderr
    assert "the stand-in base fleetimg-test/no-such-standin:1 is not built" in proc.stderr
    assert "hint: fleetimg lab base" in proc.stderr
