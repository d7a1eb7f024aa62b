"""Fair baselines: a random-init ResNet is built with every residual branch on (timm's
zero_init_last=False), so its deep stages carry what a random network carries, and its fingerprint
says so (such results never mix with those of the switched-off init)."""

import hashlib
import json

from backbones.base import BackboneOptions, DataSpec, create_backbone
from bench import api


def test_random_init_resnet_has_its_branches_on_and_a_new_fingerprint():
    backbone = create_backbone("resnet18", DataSpec(1, 8, 8), BackboneOptions())
    assert backbone.branches_on and backbone.config()["init"] == "zero_init_last=False"
    last_norms = [m.bn2.weight for m in backbone.module.modules() if type(m).__name__ == "BasicBlock"]
    assert last_norms and all(float(w.detach().abs().sum()) > 0 for w in last_norms)  # timm's default starts them at 0
    old = {k: v for k, v in backbone.config().items() if k != "init"}  # the config the old init gave
    blob = json.dumps({"config": old, "weights": backbone.weights_digest()}, sort_keys=True)
    assert backbone.fingerprint != hashlib.sha256(blob.encode()).hexdigest()
    other = create_backbone("convnext_atto", DataSpec(1, 8, 8), BackboneOptions())
    assert not other.branches_on and "init" not in other.config()  # no such argument: built as timm builds it


def test_random_init_resnet18_layer4_probes_far_above_the_collapsed_baseline(tmp_path):
    """With timm's zero_init_last the pooled layer4 of a random ResNet-18 probed to 17.6-26% on
    digits; with every branch on it carries the digits."""
    df = api.run("resnet18", "linear-probe", "digits", layers="layer4", results=tmp_path / "res",
                 options={"l2_grid": "1e-4,1e-2,1"})
    test = df[(df.split == "test") & (df.metric == "top1")].value.iloc[0]
    assert test > 80, test
