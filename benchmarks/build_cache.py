#!/usr/bin/env python3
"""Cold and warm build times on the offline stand-in bases.

Cold: `fleetimg build TARGET --standin --no-cache`. Warm: the same after a one-line change
of the target's app code, with the cache. Goal: warm < 10% of cold, and every layer but the
app's reused. Measured for pytorch (whose own steps are only the app copy: both times are
BuildKit's fixed cost), triton (apt-get under QEMU before the app files) and, when asked,
horovod (cross-compiles Horovod's C++ natively; when it compiled under QEMU, a cold build
took 27 minutes on 2 cores).

    python benchmarks/build_cache.py                      # pytorch and triton
    python benchmarks/build_cache.py --targets horovod

Builds the stand-in bases first if missing. Writes benchmarks/results/build_cache.json for
the default targets, else build_cache_TARGET[_TARGET...].json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402

from benchmarks import write_results  # noqa: E402
from fleetimg.lab.standin import ensure_standin_debian, ensure_standin_pytorch  # noqa: E402

CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
APP_FILE = {"pytorch": "app/classify.py", "triton": "triton-start",
            "horovod": "app/train_mnist_synthetic.py"}


def build(target: str, env: dict[str, str], extra: list[str]) -> float:
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "fleetimg", "build", target, "--l4t", "R32.7.1",
                    "--standin", "--no-smoke", "--tag", f"bench/{target}:cache", *extra],
                   check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def fake_triton(tmp: Path) -> Path:
    server = tmp / "tritonserver" / "bin" / "tritonserver"
    server.parent.mkdir(parents=True)
    server.write_text("#!/bin/sh\necho stand-in tritonserver\n")
    server.chmod(0o755)
    out = tmp / "tritonserver2.19.0-jetpack4.6.1.tgz"
    with tarfile.open(out, "w:gz") as tar:
        tar.add(tmp / "tritonserver", arcname="tritonserver")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="pytorch,triton",
                        help="comma-separated, from: " + ", ".join(APP_FILE))
    targets_wanted = parser.parse_args().targets.split(",")
    unknown = sorted(set(targets_wanted) - set(APP_FILE))
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}")
    client = docker.from_env()
    ensure_standin_pytorch(client, CA_BUNDLE if CA_BUNDLE.exists() else None)
    if "horovod" in targets_wanted:
        ensure_standin_debian(client)  # the base of its cross-compile stage
    report = {}
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        targets = tmp / "dockerfiles"
        shutil.copytree(ROOT / "dockerfiles", targets)
        env = {**os.environ, "FLEETIMG_DOCKERFILES": str(targets)}
        extra = {"pytorch": [], "horovod": [],
                 "triton": ["--triton-tarball", str(fake_triton(tmp))]}
        ca = ["--ca-bundle", str(CA_BUNDLE)] if CA_BUNDLE.exists() else []
        for target in targets_wanted:
            cold = build(target, env, [*extra[target], *ca, "--no-cache"])
            cold_layers = client.images.get(f"bench/{target}:cache").attrs["RootFS"]["Layers"]
            app = targets / target / APP_FILE[target]
            app.write_text(app.read_text() + "\n# one-line change for the cache benchmark\n")
            warm = build(target, env, [*extra[target], *ca])
            warm_layers = client.images.get(f"bench/{target}:cache").attrs["RootFS"]["Layers"]
            reused = sum(a == b for a, b in zip(cold_layers, warm_layers, strict=False))
            report[target] = {"cold_seconds": round(cold, 2), "warm_seconds": round(warm, 2),
                              "warm_over_cold": round(warm / cold, 4),
                              "layers": len(warm_layers), "layers_reused": reused}
            print(f"{target:<8} cold {cold:6.1f} s  warm after an app change {warm:5.1f} s "
                  f"({warm / cold:6.1%} of cold)  layers reused {reused}/{len(warm_layers)}")
    write_results("build_cache" if targets_wanted == ["pytorch", "triton"]
                  else "build_cache_" + "_".join(targets_wanted), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
