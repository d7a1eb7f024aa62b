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


class ModelViewPixels(Backbone):
    """One layer, ``pixels``: the image as an iGPT sees it (resized to its resolution, each pixel
    replaced by its palette color), flattened and scaled to [0, 1]. ``--weights`` names the iGPT
    (a checkpoint, run folder or transformers folder) whose view it takes.

    Why: an iGPT at 14x14 with 16 gray levels sees less than the raw 28x28 image, so "beats pixels"
    compares like with like only against pixels at the model's view."""

    name = "pixels-view"
    description = "the image as an iGPT's --weights see it (its resolution and palette), flattened; one layer"
    layers = ["pixels"]
    accepts_weights = True  # the iGPT whose view to take
    accepts_pretrained = False

    def __init__(self, spec: DataSpec, palette, height: int, width: int):
        self.spec, self.palette, self.height, self.width = spec, palette, height, width

    @classmethod
    def create(cls, name: str, spec: DataSpec, options: BackboneOptions) -> ModelViewPixels:
        if not options.weights:
            raise BenchError("backbone 'pixels-view' needs --weights: the iGPT (checkpoint, run folder or "
                             "transformers folder) whose resolution and palette to take")
        if options.image_size:
            raise BenchError("backbone 'pixels-view' takes the iGPT's resolution; drop --image-size")
        from backbones.igpt import IGPTBackbone

        model = IGPTBackbone.create("igpt", spec, options)
        return cls(spec, model.palette, model.height, model.width)

    @staticmethod
    def weights_info(weights) -> dict:
        from backbones.igpt.weights import weights_info

        return weights_info(weights)

    def layer_widths(self):
        return {"pixels": self.palette.channels * self.height * self.width}

    def preprocess(self, images: np.ndarray):
        import torch

        from backbones.igpt.palette import tokenize

        view = self.palette.dequantize(tokenize(images, self.palette, self.height, self.width), self.height, self.width)
        return torch.from_numpy(np.asarray(view, dtype=np.float32).reshape(len(images), -1) / 255.0)

    def features(self, x, layers):
        return {"pixels": x}

    def weights_digest(self) -> str:
        """The view, not the model: every checkpoint of one run (one palette, one size) shares it."""
        import hashlib

        return hashlib.sha256(np.ascontiguousarray(self.palette.centers).tobytes()
                              + f"{self.height}x{self.width}".encode()).hexdigest()

    def config(self):
        return {
            "backbone": "pixels-view",
            "version": 1,
            "input": [self.spec.height, self.spec.width, self.spec.channels],
            "view": [self.height, self.width, self.palette.channels, self.palette.n_colors],
            "preprocessing": {"resize": "the iGPT's tokenizer", "quantize": "nearest palette color",
                              "scale": "x/255", "layout": "HWC flattened"},
            "pooling": "none",
        }
