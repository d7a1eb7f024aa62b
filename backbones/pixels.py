"""The raw image as a feature vector: the floor every representation must beat."""

from __future__ import annotations

import numpy as np

from backbones.base import Backbone, BackboneOptions, DataSpec
from bench.errors import BenchError


class PixelsBackbone(Backbone):
    """One layer, ``pixels``: the image flattened (H·W·C values), scaled to [0, 1]."""

    name = "pixels"
    description = "the raw image flattened and scaled to [0, 1]; one layer"
    layers = ["pixels"]
    accepts_weights = False  # nothing to load: --weights and --pretrained are refused
    accepts_pretrained = False

    def __init__(self, spec: DataSpec):
        self.spec = spec

    @classmethod
    def create(cls, name: str, spec: DataSpec, options: BackboneOptions) -> PixelsBackbone:
        if options.pretrained or options.weights or options.image_size:
            raise BenchError("backbone 'pixels' takes no --pretrained, --weights or --image-size")
        return cls(spec)

    def layer_widths(self):
        return {"pixels": self.spec.channels * self.spec.height * self.spec.width}

    def preprocess(self, images: np.ndarray):
        import torch

        return torch.from_numpy(np.asarray(images, dtype=np.float32).reshape(len(images), -1) / 255.0)

    def features(self, x, layers):
        return {"pixels": x}

    def config(self):
        return {
            "backbone": "pixels",
            "version": 1,
            "input": [self.spec.height, self.spec.width, self.spec.channels],
            "preprocessing": {"scale": "x/255", "layout": "HWC flattened"},
            "pooling": "none",
        }
