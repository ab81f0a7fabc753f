#!/usr/bin/env python3
"""Batch image classification worker for a Kubernetes Indexed Job.

Each worker takes its slice of the images in --images (an NFS mount) by
JOB_COMPLETION_INDEX / TOTAL_JOBS, or makes synthetic images when no directory is given,
classifies them with ResNet-50 in eval mode (CUDA when present, else CPU) after a warm-up
pass, logs and skips corrupt images, prints its throughput and writes one JSON line per
image (file, top-1 class, score).

Weights come from a file (mounted with the data): a TorchScript model (torch.jit.save) or a
ResNet-50 state_dict in torchvision's layout; `--weights random` measures throughput with an
untrained ResNet-50 (the same work per image, no file). Kept compatible with Python 3.6
(JetPack 4).

Progress for `fleetimg run`: one stderr line when the slice is known ("worker I/T: N images
to classify") and one at the end ("worker I/T: N images in S s = R images/s on DEV, K
skipped"); fleetimg parses both, so their wording is an interface.
"""

import argparse
import json
import logging
import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from torch import nn

log = logging.getLogger("classify")
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm")
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class WorkerError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


# ResNet-50 in torchvision's parameter layout, so its state_dict files load here without
# torchvision (which l4t-pytorch images do not always carry).
class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._layer(64, 3)
        self.layer2 = self._layer(128, 4, 2)
        self.layer3 = self._layer(256, 6, 2)
        self.layer4 = self._layer(512, 3, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2048, num_classes)

    def _layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * 4))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def load_model(path, device):
    if path == "random":
        return ResNet50().to(device).eval()
    if not path:
        raise WorkerError("no weights given: pass --weights /models/resnet50.pt (a file "
                          "mounted with the data), set WEIGHTS, or --weights random to "
                          "measure throughput only")
    if not os.path.isfile(path):
        raise WorkerError("weights file {} not found: mount the model directory into the "
                          "pod (e.g. the NFS share at /models) and point --weights at it"
                          .format(path))
    try:
        model = torch.jit.load(path, map_location=device)
    except (RuntimeError, ValueError):
        state = torch.load(path, map_location=device)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise WorkerError("{} is neither a TorchScript model nor a state_dict".format(path))
        model = ResNet50(num_classes=state["fc.weight"].shape[0] if "fc.weight" in state
                         else 1000)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise WorkerError("{} does not hold ResNet-50 weights: {}".format(
                path, str(exc).splitlines()[0]))
    return model.to(device).eval()


def my_slice(items, index, total):
    """Contiguous share of `items` for worker `index` of `total` (Indexed Job)."""
    if total < 1 or not 0 <= index < total:
        raise WorkerError("JOB_COMPLETION_INDEX={} is outside TOTAL_JOBS={}".format(index, total))
    start = len(items) * index // total
    end = len(items) * (index + 1) // total
    return items[start:end]


def list_images(directory):
    if not os.path.isdir(directory):
        raise WorkerError("image directory {} does not exist (is the NFS share mounted?)"
                          .format(directory))
    found = []
    for root, _, files in os.walk(directory):
        for name in files:
            if name.lower().endswith(EXTENSIONS):
                found.append(os.path.join(root, name))
    return sorted(found)


def preprocess(path, size=224):
    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        scale = size * 256.0 / 224 / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                         Image.BILINEAR)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
        arr = (np.asarray(img, dtype=np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def synthetic(numbers, size=224):
    return [("synthetic-{:05d}".format(i),
             torch.randn(3, size, size, generator=torch.Generator().manual_seed(i)))
            for i in numbers]


def classify(model, items, device, batch_size, out, size=224):
    """items: (name, tensor or path). Returns (images done, skipped, seconds)."""
    done = skipped = 0
    start = time.time()
    batch_names, batch = [], []

    def flush():
        nonlocal done
        if not batch:
            return
        with torch.no_grad():
            probs = torch.softmax(model(torch.stack(batch).to(device)), dim=1)
            scores, classes = probs.max(dim=1)
        for name, cls, score in zip(batch_names, classes.tolist(), scores.tolist()):
            out.write(json.dumps({"file": name, "class": int(cls),
                                  "score": round(float(score), 5)}) + "\n")
        done += len(batch)
        del batch_names[:], batch[:]

    for name, item in items:
        if isinstance(item, str):
            try:
                tensor = preprocess(item, size)
            except Exception as exc:  # one corrupt image must never stop the worker
                log.warning("skipping %s: %s", name, exc)
                skipped += 1
                continue
        else:
            tensor = item
        batch_names.append(name)
        batch.append(tensor)
        if len(batch) >= batch_size:
            flush()
    flush()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return done, skipped, time.time() - start


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", default=os.environ.get("IMAGE_DIR"),
                   help="directory of images (default $IMAGE_DIR); synthetic images if unset")
    p.add_argument("--weights", default=os.environ.get("WEIGHTS"),
                   help="TorchScript model or ResNet-50 state_dict (default $WEIGHTS)")
    p.add_argument("--output", default=os.environ.get("OUTPUT"),
                   help="JSON lines file (default: stdout); a directory gets worker-N.jsonl")
    p.add_argument("--synthetic", type=int, default=int(os.environ.get("SYNTHETIC", "64")))
    p.add_argument("--batch-size", type=int, default=int(os.environ.get("BATCH_SIZE", "8")))
    p.add_argument("--size", type=int, default=int(os.environ.get("IMAGE_SIZE", "224")),
                   help="input resolution in pixels (default 224, ResNet-50's own)")
    p.add_argument("--device", default=os.environ.get("DEVICE", "auto"),
                   choices=["auto", "cpu", "cuda"])
    p.add_argument("--self-test", action="store_true",
                   help="run on a tiny model and a few synthetic/corrupt images, then exit")
    return p.parse_args(argv)


def run(args, index, total):
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    model = load_model(args.weights, device)
    if args.images:
        paths = my_slice(list_images(args.images), index, total)
        items = [(os.path.relpath(p, args.images), p) for p in paths]
    else:
        # Only this slice's images are made; the seed per image keeps every image the same
        # whichever worker makes it.
        names = my_slice(list(range(args.synthetic)), index, total)
        items = synthetic(names, args.size)
    with torch.no_grad():  # warm-up: first-call allocations and kernel selection
        model(torch.zeros(1, 3, args.size, args.size, device=device))
    print("worker {}/{}: {} images to classify".format(index, total, len(items)),
          file=sys.stderr)
    if args.output and os.path.isdir(args.output):
        out_path = os.path.join(args.output, "worker-{}.jsonl".format(index))
    else:
        out_path = args.output
    out = open(out_path, "w") if out_path else sys.stdout
    try:
        done, skipped, seconds = classify(model, items, device, args.batch_size, out,
                                          args.size)
    finally:
        if out is not sys.stdout:
            out.close()
    rate = done / seconds if seconds > 0 else 0.0
    print("worker {}/{}: {} images in {:.2f} s = {:.2f} images/s on {}, {} skipped".format(
        index, total, done, seconds, rate, device.type, skipped), file=sys.stderr)
    return {"worker": index, "images": done, "skipped": skipped, "seconds": seconds,
            "images_per_second": rate, "device": device.type}


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d((1, 1)))
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


def self_test():
    """What the image's smoke test runs: a tiny model, real and corrupt files, CPU only."""
    tmp = tempfile.mkdtemp(prefix="classify-selftest-")
    weights = os.path.join(tmp, "tiny.pt")
    torch.jit.save(torch.jit.script(TinyNet().eval()), weights)
    images = os.path.join(tmp, "images")
    os.makedirs(images)
    for i in range(3):
        Image.fromarray((np.random.rand(64, 80, 3) * 255).astype("uint8")).save(
            os.path.join(images, "img{}.png".format(i)))
    with open(os.path.join(images, "broken.jpg"), "wb") as fh:
        fh.write(b"not a jpeg")
    out = os.path.join(tmp, "out.jsonl")
    args = parse_args(["--images", images, "--weights", weights, "--output", out,
                       "--device", "cpu"])
    stats = run(args, 0, 1)
    lines = [json.loads(line) for line in open(out)]
    assert stats["images"] == 3 and stats["skipped"] == 1, stats
    assert len(lines) == 3 and all(0 <= r["class"] < 10 for r in lines), lines
    print("self-test ok: torch {}, {} images, 1 corrupt skipped".format(
        torch.__version__, stats["images"]))


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = parse_args(argv if argv is not None else sys.argv[1:])
    try:
        if args.self_test:
            self_test()
            return 0
        index = int(os.environ.get("JOB_COMPLETION_INDEX", "0"))
        total = int(os.environ.get("TOTAL_JOBS", "1"))
        run(args, index, total)
    except WorkerError as exc:
        print("error: {}".format(exc), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
