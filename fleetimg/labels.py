"""The labels `fleetimg build` puts on an image and `push`, `run` and `k3s` read: one
spelling for every package that writes or reads them."""

TARGET = "io.fleetimg.target"
L4T = "io.fleetimg.l4t"  # the release of the base's userspace: what push checks boards against
JETPACK = "io.fleetimg.jetpack"
BASE = "io.fleetimg.base"
# A CUDA-capable target (horovod) built with CUDA ("true") or CPU-only ("false"): `run
# horovod` refuses a CPU-only image on boards with a GPU.
CUDA = "io.fleetimg.cuda"
