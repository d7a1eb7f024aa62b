"""Bits per dimension of a generative backbone on one split.

This task holds a model rather than reading activation files (``reads = "model"``). Dimension =
sub-pixel: the NLL of a palette token (one pixel) is divided by the image's channels. It measures
the quantized images the model sees, so it compares models that share a palette and resolution.
"""

from __future__ import annotations

from tasks.base import Option, Task


def _split(text: str) -> str:
    if text not in ("train", "val", "test"):
        raise ValueError("choose train, val or test")
    return text


class BitsPerDim(Task):
    name = "bits-per-dim"
    description = "negative log-likelihood in bits per sub-pixel (generative backbones, e.g. igpt)"
    reads = "model"
    splits = ("test",)
    options = {"split": Option("test", _split, "the split to score: train, val or test")}
    columns = {("test", "bits_per_dim"): "bits/dim"}

    def splits_for(self, options: dict) -> tuple[str, ...]:
        return (options["split"],)

    def run_model(self, backbone, data: dict, *, options: dict, seed: int, quiet: bool = False) -> list[dict]:
        split = options["split"]
        images = data[split].images
        bpd = backbone.bits_per_dim(images)
        return [{"layer": "model", "split": split, "metric": "bits_per_dim", "value": bpd, "stderr": None,
                 "n": len(images)}]
