#!/usr/bin/env python3
"""Cold and warm build times of the pytorch target on the offline stand-in base.

Cold: `fleetimg build pytorch --standin --no-cache`. Warm: the same after changing one line
of the app, with the cache. Goal: warm < 10% of cold.

    python benchmarks/build_cache.py

Needs the stand-in bases (`fleetimg lab base`, built here if missing). Prints the figures
and writes benchmarks/results/build_cache.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402

from fleetimg.lab.standin import ensure_standin_pytorch  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "build_cache.json"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def build(env: dict[str, str], *extra: str) -> float:
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "fleetimg", "build", "pytorch", "--l4t", "R32.7.1",
                    "--standin", "--no-smoke", "--tag", "bench/pytorch:cache", *extra],
                   check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def main() -> int:
    ensure_standin_pytorch(docker.from_env(), CA_BUNDLE if CA_BUNDLE.exists() else None)
    with tempfile.TemporaryDirectory() as tmp:
        targets = Path(tmp) / "dockerfiles"
        shutil.copytree(ROOT / "dockerfiles", targets)
        env = {**os.environ, "FLEETIMG_DOCKERFILES": str(targets)}
        cold = build(env, "--no-cache")
        app = targets / "pytorch" / "app" / "classify.py"
        app.write_text(app.read_text() + "\n# one-line change for the cache benchmark\n")
        warm = build(env)
    report = {"cold_seconds": round(cold, 2), "warm_seconds": round(warm, 2),
              "warm_over_cold": round(warm / cold, 3)}
    print(f"pytorch target on the stand-in base: cold {cold:.1f} s, warm after an app "
          f"change {warm:.1f} s ({warm / cold:.1%} of cold; goal < 10%)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
