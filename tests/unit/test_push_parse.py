"""Parsers of what nodes report during a push, on output captured from lab nodes."""

from __future__ import annotations

import pytest

from fleetimg.errors import PushError
from fleetimg.push.archive import chain_ids
from fleetimg.push.plan import containerd_has, parse_remote_images
from fleetimg.push.registry import k3s_registries_yaml
from tests.conftest import DATA

PYTORCH_ID = "sha256:f257b16660254a04fe340b2e17c5f7f67f2e2ee21a55cfae6495b1b323108bc8"


def test_remote_images_give_ref_id_ids_and_chains() -> None:
    ref_id, ids, chains = parse_remote_images((DATA / "remote-images.txt").read_text())
    assert ref_id == PYTORCH_ID
    assert PYTORCH_ID in ids and len(ids) >= 3
    first_line = next(ln for ln in (DATA / "remote-images.txt").read_text().splitlines()
                      if not ln.startswith("REF"))
    layers = [d for d in first_line.split()[1].split(",") if d]
    assert set(chain_ids(layers)) <= chains


def test_remote_images_on_an_empty_node() -> None:
    assert parse_remote_images("") == (None, set(), set())


def test_chain_ids_follow_moby() -> None:
    # A layer's chain ID is itself at the bottom, then sha256 of "parent-chain diff".
    a = "sha256:" + "a" * 64
    b = "sha256:" + "b" * 64
    chains = chain_ids([a, b])
    assert chains[0] == a
    assert chains[1] == "sha256:ccd722928bd92476ba1745586fed6e45a102504185ad88cd89e01ff116fd146c"
    assert chain_ids([a, b])[1] != chain_ids([b, a])[1]


def test_containerd_listing_needs_name_and_id() -> None:
    listing = (DATA / "ctr-images.txt").read_text()
    image_id = "sha256:6fbab7351b816e42a98deb3c438eaafca90d42d3527add802befa0225fda443f"
    assert containerd_has(listing, "fleetimg-test/app:3", image_id)
    assert not containerd_has(listing, "fleetimg-test/app:4", image_id)
    assert not containerd_has(listing, "fleetimg-test/app:3", PYTORCH_ID)
    assert containerd_has("docker.io/library/busybox:1\nsha256:x\n", "busybox:1", "sha256:x")


def test_k3s_registries_yaml_keeps_the_users_other_mirrors() -> None:
    import yaml

    mine = ('mirrors:\n  docker.io:\n    endpoint:\n      - "https://mirror.lab:5000"\n'
            'configs:\n  mirror.lab:5000:\n    tls:\n      insecure_skip_verify: true\n')
    merged = yaml.safe_load(k3s_registries_yaml("10.0.0.1:5000", ("fleet", "pw:\\n"), mine))
    assert merged["mirrors"]["docker.io"] == {"endpoint": ["https://mirror.lab:5000"]}
    assert merged["mirrors"]["10.0.0.1:5000"] == {"endpoint": ["http://10.0.0.1:5000"]}
    assert merged["configs"]["mirror.lab:5000"]["tls"]["insecure_skip_verify"] is True
    # A password that looks like YAML syntax stays one string.
    assert merged["configs"]["10.0.0.1:5000"]["auth"] == {"username": "fleet",
                                                           "password": "pw:\\n"}
    # Merging again changes nothing.
    again = k3s_registries_yaml("10.0.0.1:5000", ("fleet", "pw:\\n"),
                                k3s_registries_yaml("10.0.0.1:5000", ("fleet", "pw:\\n"), mine))
    assert yaml.safe_load(again) == merged
    with pytest.raises(PushError, match="not valid YAML"):
        k3s_registries_yaml("10.0.0.1:5000", None, "mirrors: [unclosed\n")
