"""Build targets: dockerfiles/<target>/ with a Dockerfile (ARG BASE_IMAGE), target.toml
and the app files it copies."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

from fleetimg import tomlcompat as tomllib
from fleetimg.errors import UsageError

BASE_COLUMNS = ("base", "pytorch", "triton_image")
COMPUTED_ARGS = ("TRITON_VERSION", "TRITON_TARBALL", "MIN_COMPUTE_CAPABILITY", "L4T", "JETPACK",
                 "HOROVOD_CUDA", "HOROVOD_BUILD_CUDA_CC_LIST")


@dataclass(frozen=True)
class FamilyVariant:
    """How a target builds for one L4T family when that differs ([family.rNN] in
    target.toml): Triton is a tarball on JetPack 4/5 and NGC's igpu image on JetPack 6."""

    base_column: str  # which column of releases.toml names its base image
    dockerfile: str = "Dockerfile"
    standin_base: str | None = None


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    base_column: str  # which column of releases.toml names its base image
    needs_triton: bool
    args: tuple[str, ...]  # computed build args it takes
    smoke: tuple[str, ...]  # CPU-safe command run in the built image
    build_args: Mapping[str, str] = field(default_factory=dict)
    family_args: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    standin_base: str | None = None
    standin_args: Mapping[str, str] = field(default_factory=dict)
    families: Mapping[str, FamilyVariant] = field(default_factory=dict)

    def variant(self, family: str) -> FamilyVariant:
        return self.families.get(family) or FamilyVariant(self.base_column,
                                                          standin_base=self.standin_base)

    @property
    def directory(self) -> Traversable:
        return targets_root().joinpath(self.name)


def targets_root() -> Traversable:
    """fleetimg's dockerfiles/, or the directory in FLEETIMG_DOCKERFILES (your own targets,
    same layout)."""
    override = os.environ.get("FLEETIMG_DOCKERFILES")
    if override:
        return Path(override)
    return resources.files("fleetimg.dockerfiles")


def _strs(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise UsageError(f"{where}: expected a table of strings")
    return dict(value)


def load_target(name: str) -> Target:
    meta = targets_root().joinpath(name).joinpath("target.toml")
    if not meta.is_file():
        raise UsageError(f"unknown build target {name!r}",
                         hint=f"targets: {', '.join(target_names())}")
    data = tomllib.loads(meta.read_text())
    build_args = {k: v for k, v in data.get("build_args", {}).items() if isinstance(v, str)}
    family = {k: _strs(v, f"{name}/target.toml build_args.{k}")
              for k, v in data.get("build_args", {}).items() if isinstance(v, dict)}
    standin = data.get("standin", {})
    column = _column(data.get("base", "base"), name)
    families = {
        fam: FamilyVariant(
            _column(v.get("base", column), name),
            dockerfile=str(v.get("dockerfile", "Dockerfile")),
            standin_base=v.get("standin", standin.get("base")))
        for fam, v in data.get("family", {}).items()}
    args = tuple(data.get("args", []))
    unknown = set(args) - set(COMPUTED_ARGS)
    if unknown:
        raise UsageError(f"{name}/target.toml: unknown computed args {sorted(unknown)}")
    return Target(
        name=name,
        description=data.get("description", ""),
        base_column=column,
        needs_triton=bool(data.get("needs_triton", False)),
        args=args,
        smoke=tuple(data.get("smoke", [])),
        build_args=build_args,
        family_args=family,
        standin_base=standin.get("base"),
        standin_args=_strs(standin.get("build_args", {}), f"{name}/target.toml standin"),
        families=families,
    )


def _column(value: object, name: str) -> str:
    if value not in BASE_COLUMNS:
        raise UsageError(f"{name}/target.toml: base must be one of {', '.join(BASE_COLUMNS)}")
    return str(value)


def target_names() -> list[str]:
    return sorted(p.name for p in targets_root().iterdir()
                  if p.is_dir() and p.joinpath("target.toml").is_file())
