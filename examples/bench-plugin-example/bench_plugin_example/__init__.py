"""A complete third-party backbone for igpt-bench: colour statistics of the image.

Two layers: ``mean`` (per-channel mean) and ``moments`` (per-channel mean, std and a 4x4 grid
of local means), enough to beat chance on most datasets and to show the whole contract.
"""

import numpy as np
import torch
import torch.nn.functional as F

from backbones.base import Backbone


class ColorStats(Backbone):
    name = "color-stats"
    description = "per-channel colour statistics (example plugin)"
    layers = ["mean", "moments"]
    accepts_weights = False  # nothing to load: --weights and --pretrained are refused (the default)
    accepts_pretrained = False

    def __init__(self, spec):
        self.spec = spec

    @classmethod
    def create(cls, name, spec, options):
        return cls(spec)

    def layer_widths(self):
        c = self.spec.channels
        return {"mean": c, "moments": c * (2 + 16)}

    def preprocess(self, images):
        return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0

    def features(self, x, layers):
        out = {"mean": x.mean(dim=(2, 3))}
        if "moments" in layers:  # computed only when asked for
            grid = F.adaptive_avg_pool2d(x, 4).flatten(1)
            out["moments"] = torch.cat([out["mean"], x.std(dim=(2, 3)), grid], dim=1)
        return {layer: out[layer] for layer in layers}

    def config(self):
        return {"backbone": "color-stats", "version": 1, "channels": self.spec.channels}
