"""Bits per dimension of a generative backbone on one split.

A task that holds the model (``reads = "model"``). Dimension = sub-pixel: the NLL of a palette
token (one pixel) is divided by the image's channels. It measures the quantized images the model
sees, so it compares models that share a palette and resolution.
"""

from __future__ import annotations

from tasks.base import Option, RunContext, Task, choice


class BitsPerDim(Task):
    name = "bits-per-dim"
    description = "negative log-likelihood in bits per sub-pixel (generative backbones, e.g. igpt)"
    reads = "model"
    requires_generative = True
    options = {"split": Option("test", choice("train", "val", "test"), "the split to score: train, val or test")}
    columns = {("test", "bits_per_dim"): "bits/dim"}

    def splits_for(self, options: dict) -> tuple[str, ...]:
        return (options["split"],)

    def run(self, ctx: RunContext) -> list[dict]:
        split = ctx.options["split"]
        images = ctx.data[split].images
        bpd = ctx.backbone.bits_per_dim(images)
        return [{"layer": "model", "split": split, "metric": "bits_per_dim", "value": bpd, "stderr": None,
                 "n": len(images)}]
