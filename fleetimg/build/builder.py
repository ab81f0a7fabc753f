"""Run a planned build with BuildKit for linux/arm64 (natively or under QEMU, whichever the
builder does: fleetimg.buildkit.arm64_route), and its smoke test."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fleetimg import programs
from fleetimg.build.plan import BuildPlan
from fleetimg.buildkit import (
    arm64_route,
    builder_platforms,
    engine_arch,
    find_build_command,
)
from fleetimg.doctor import check_arm64, check_qemu_binfmt
from fleetimg.errors import BuildError, UsageError

_STEP = re.compile(r"^\s*> \[(?P<step>[^\]]+)\] (?P<cmd>.*?):?\s*$")
_EXIT = re.compile(r"exit code: (\d+)")


@dataclass(frozen=True)
class BuildOptions:
    ca_bundle: Path | None = None
    no_cache: bool = False
    triton_tarball: Path | None = None
    smoke_test: bool = True
    builder: str | None = None  # a buildx builder by name; None: the current one


# A Dockerfile's own verdict, printed by its RUN step ("fleetimg: ..." and the way out as
# "fleetimg-hint: ..."), behind BuildKit's "#12 3.456 " prefix.
_VERDICT = re.compile(r"^#\d+ [\d.]+ fleetimg(?P<hint>-hint)?: (?P<text>.+)$")


def build_verdict(lines: list[str]) -> tuple[str, str | None] | None:
    """(message, hint) a failed step said about itself, when it did: better than the step."""
    message = hint = None
    for line in lines:
        m = _VERDICT.match(line.strip())
        if m:
            if m["hint"]:
                hint = m["text"].strip()
            else:
                message = m["text"].strip()
    return (message, hint) if message else None


def parse_failure(lines: list[str]) -> str:
    """One line naming the failed step, from BuildKit's plain progress output."""
    step = None
    for line in lines:
        m = _STEP.match(line)
        if m:
            step = f"[{m['step']}] {m['cmd'].strip()}"
    code = next((m[1] for line in reversed(lines) if (m := _EXIT.search(line))), None)
    if step:
        return f"build failed at step {step}" + (f" (exit code {code})" if code else "")
    last = next((ln.strip() for ln in reversed(lines) if ln.strip()), "no output")
    return f"build failed: {last}"


def _stage_context(plan: BuildPlan, options: BuildOptions, work: Path) -> Path:
    src = Path(str(plan.target.directory))
    ctx = work / "context"
    shutil.copytree(src, ctx, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # Targets that install a release tarball take it from here when given (offline labs).
    tarballs = ctx / "tarball"
    tarballs.mkdir(exist_ok=True)
    if options.triton_tarball is not None:
        expected = plan.build_args.get("TRITON_TARBALL") or options.triton_tarball.name
        shutil.copy(options.triton_tarball, tarballs / expected)
    return ctx


def build_argv(plan: BuildPlan, options: BuildOptions, context: Path,
               command: tuple[str, ...]) -> list[str]:
    argv = [*command, "--platform", plan.platform, "--progress=plain"]
    for key, value in plan.build_args.items():
        argv += ["--build-arg", f"{key}={value}"]
    for key, value in plan.labels.items():
        argv += ["--label", f"{key}={value}"]
    for tag in plan.tags:
        argv += ["-t", tag]
    if options.ca_bundle is not None:
        argv += ["--secret", f"id=cacert,src={options.ca_bundle}"]
    if options.no_cache:
        argv += ["--no-cache"]
    if plan.dockerfile != "Dockerfile":
        argv += ["-f", str(context / plan.dockerfile)]
    return [*argv, str(context)]


def require_local_base(plan: BuildPlan) -> None:
    """A stand-in base exists only where `fleetimg lab base` made it: without it BuildKit
    would look for it on Docker Hub and fail with "load metadata for docker.io/...". """
    found = programs.run(["docker", "image", "inspect", plan.base], check=False, timeout=60)
    if found.returncode != 0:
        raise UsageError(f"the stand-in base {plan.base} is not built on this machine",
                         hint="fleetimg lab base (debootstrap and PyPI: a few minutes, once)")


def run_build(plan: BuildPlan, options: BuildOptions,
              on_line: Callable[[str], None] = lambda s: None) -> None:
    command = find_build_command(options.builder)
    route = arm64_route(command, builder_platforms(command), engine_arch())
    if route.needs_binfmt:
        binfmt = check_qemu_binfmt()
        if not binfmt.ok:
            raise BuildError(f"cannot build for arm64 on this machine: {binfmt.detail}",
                             hint=f"{binfmt.fix}; or build on an arm64 machine "
                             "(--builder NAME, or DOCKER_HOST=ssh://USER@BOARD)")
    on_line(f"arm64 steps: {route.how} ({command.description})")
    if options.ca_bundle is not None and not options.ca_bundle.is_file():
        raise UsageError(f"--ca-bundle {options.ca_bundle}: no such file",
                         hint="e.g. --ca-bundle /etc/ssl/certs/ca-certificates.crt")
    if options.triton_tarball is not None and not options.triton_tarball.is_file():
        raise UsageError(f"--triton-tarball {options.triton_tarball}: no such file")
    tail: deque[str] = deque(maxlen=300)
    with tempfile.TemporaryDirectory(prefix="fleetimg-build-") as tmp:
        context = _stage_context(plan, options, Path(tmp))
        proc = programs.spawn(build_argv(plan, options, context, command.argv),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=command.env)
        assert proc.stdout is not None
        try:
            for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                tail.append(line)
                on_line(line)
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM): the docker client must not outlive us and keep
            # BuildKit compiling for nobody.
            proc.terminate()
            proc.wait()
            raise
        rc = proc.wait()
    if rc != 0:
        verdict = build_verdict(list(tail))
        if verdict is not None:
            raise BuildError(verdict[0], hint=verdict[1] or "the full log is above")
        raise BuildError(parse_failure(list(tail)),
                         hint="the full log is above; `fleetimg doctor` checks BuildKit and QEMU")


def smoke_test(plan: BuildPlan, on_line: Callable[[str], None] = lambda s: None) -> str:
    """Run the target's CPU-safe smoke test in the built image (under QEMU on x86)."""
    if not plan.target.smoke:
        return "no smoke test"
    # It runs on the engine the image was loaded into: an x86 one needs QEMU's handler,
    # which a build on another machine's builder did not.
    arm64 = check_arm64()
    if not arm64.ok:
        return f"skipped: this machine cannot run arm64 images ({arm64.detail})"
    entry, *args = plan.target.smoke
    result = programs.run(["docker", "run", "--rm", "--platform", plan.platform,
                         "--entrypoint", entry, plan.tags[0], *args], check=False, timeout=1800)
    for line in (result.stdout + result.stderr).splitlines():
        on_line(line)
    if result.returncode != 0:
        tail = " / ".join((result.stdout + result.stderr).strip().splitlines()[-3:])
        raise BuildError(f"smoke test of {plan.tags[0]} failed (exit {result.returncode}): "
                         f"{tail}")
    return (result.stdout.strip().splitlines() or ["ok"])[-1]
