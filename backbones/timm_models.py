"""Any timm model as a backbone: per-stage features from ``forward_intermediates``, averaged
over space.

Names: a timm model name (``resnet18``) or the same with a ``timm/`` prefix. Random init by
default (seeded), ``--pretrained`` for timm's weights (from the local Hugging Face cache when
offline), or ``--weights FILE``. Input channels follow the dataset. Images are scaled to [0, 1],
resized (bilinear, antialiased) to ``--image-size`` (default: the pretrained input size with
pretrained weights, else the native size but at least 32) and normalized by the model's
mean/std; all of that enters the fingerprint.
"""

from __future__ import annotations

import os

import numpy as np

from backbones.base import Backbone, BackboneOptions, DataSpec, state_dict_digest
from bench.errors import BenchError
from bench.registry import match

MIN_RANDOM_INIT_SIZE = 32


def _model_name(name: str) -> str:
    return name.removeprefix("timm/")


class TimmBackbone(Backbone):
    family = True
    example = "resnet18"
    description = "any timm model (random init, --pretrained, or --weights FILE)"
    accepts_weights = True  # a state-dict file
    accepts_pretrained = True  # timm's published weights
    branches_on = False  # a random init built with zero_init_last=False (see _random_init)

    # -- family ------------------------------------------------------------------------------
    @staticmethod
    def handles(name: str) -> bool:
        import timm

        return timm.is_model(_model_name(name))

    @staticmethod
    def list_names(pattern: str | None = None) -> list[str]:
        import timm

        return match(timm.list_models(), pattern and pattern.removeprefix("timm/"))

    # -- one model ---------------------------------------------------------------------------
    def __init__(self, name, model, spec: DataSpec, options: BackboneOptions, image_size: int):
        self.name = name
        self.model = model.eval()
        self.spec = spec
        self.options = options
        self.image_size = image_size
        info = model.feature_info
        self.layers = [f["module"] for f in info]
        self._widths = {f["module"]: int(f["num_chs"]) for f in info}
        self._reduction = {f["module"]: int(f["reduction"]) for f in info}
        cfg = model.pretrained_cfg or {}
        mean, std = cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))
        if spec.channels != len(mean):
            mean, std = (float(np.mean(mean)),) * spec.channels, (float(np.mean(std)),) * spec.channels
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        self._digest = None
        self.device = "cpu"

    @classmethod
    def create(cls, name: str, spec: DataSpec, options: BackboneOptions) -> TimmBackbone:
        import timm
        import torch

        arch = _model_name(name)
        if options.pretrained and options.weights:
            raise BenchError("pass either --pretrained or --weights, not both")
        torch.manual_seed(options.seed)
        kwargs = {"in_chans": spec.channels}
        try:
            branches_on = False
            if options.pretrained:
                model = _create_pretrained(arch, kwargs)
            elif options.weights:
                model = timm.create_model(arch, pretrained=False, **kwargs)
            else:
                model, branches_on = _random_init(arch, kwargs)
        except BenchError:
            raise
        except (TypeError, ValueError, RuntimeError) as e:
            raise BenchError(f"timm cannot build {arch!r} for {spec.channels}-channel input ({e})") from None
        if not hasattr(model, "forward_intermediates"):
            raise BenchError(f"timm model {arch!r} has no forward_intermediates; choose another model")
        if options.weights:
            from backbones.weights import apply_state_dict, load_state_dict

            apply_state_dict(model, load_state_dict(options.weights), name, options.weights)
        if options.image_size:
            size = options.image_size
        elif options.pretrained or options.weights:
            size = int((model.pretrained_cfg or {}).get("input_size", (3, 224, 224))[-1])
        else:
            size = max(spec.height, spec.width, MIN_RANDOM_INIT_SIZE)
        backbone = cls(name, model, spec, options, size)
        backbone.branches_on = branches_on  # recorded in config(): such results never mix with others
        return backbone

    @property
    def module(self):
        return self.model

    def to(self, device):
        self.model.to(device)
        self.device = device
        return self

    def layer_widths(self):
        return dict(self._widths)

    def layer_info(self) -> dict[str, dict]:
        return {layer: {"width": self._widths[layer], "reduction": self._reduction[layer]} for layer in self.layers}

    def preprocess(self, images: np.ndarray):
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (x - mean) / std

    def features(self, x, layers):
        indices = [self.layers.index(layer) for layer in layers]
        outs = self.model.forward_intermediates(x.to(self.device), indices=indices, stop_early=True,
                                                intermediates_only=True)
        return {layer: out.float().mean(dim=(2, 3)) for layer, out in zip(layers, outs)}

    def config(self):
        return {
            "backbone": "timm",
            "architecture": _model_name(self.name),
            "in_chans": self.spec.channels,
            "weights_source": "pretrained" if self.options.pretrained
            else ("file" if self.options.weights else f"random-init(seed={self.options.seed})"),
            **({"init": "zero_init_last=False"} if getattr(self, "branches_on", False) else {}),
            "preprocessing": {
                "scale": "x/255",
                "resize": [self.image_size, self.image_size],
                "interpolation": "bilinear-antialias",
                "mean": self.mean,
                "std": self.std,
            },
            "pooling": "global-average over H, W of each stage output",
            "timm_version": __import__("timm").__version__,
        }

    def weights_digest(self):
        if self._digest is None:
            self._digest = state_dict_digest(self.model.state_dict())
        return self._digest


def _create_pretrained(arch: str, kwargs: dict):
    """timm's pretrained weights: the local Hugging Face cache first; the network only when the
    cache lacks them and ``HF_HUB_OFFLINE`` is not set."""
    import timm
    from huggingface_hub import constants

    from backbones.weights import hub_cache_first

    def fetch(offline: bool):
        saved = constants.HF_HUB_OFFLINE
        constants.HF_HUB_OFFLINE = offline
        try:
            return timm.create_model(arch, pretrained=True, **kwargs)
        except RuntimeError as e:
            if "No pretrained weights" in str(e):
                raise BenchError(f"timm has no pretrained weights for {arch!r}; drop --pretrained or pass --weights FILE") from None
            raise
        finally:
            constants.HF_HUB_OFFLINE = saved

    try:
        return hub_cache_first(fetch)
    except BenchError:
        raise
    except Exception as e:  # noqa: BLE001 - hub/network errors come in many types
        raise _not_cached(arch, e) from None


def _not_cached(arch: str, e: Exception) -> BenchError:
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub"
    )
    from backbones.weights import first_line

    return BenchError(
        f"pretrained weights for {arch!r} are not in the Hugging Face cache ({cache}) and could not "
        f"be downloaded ({first_line(e)}); fetch them where there is network, or pass --weights FILE"
    )


def _random_init(arch: str, kwargs: dict):
    """A random-init model with every residual branch on, and whether that needed asking.

    timm starts the last norm of each residual branch at gain zero (``zero_init_last=True``, a
    training trick): untrained, such a ResNet is a chain of strided shortcuts and its deep stages
    carry almost nothing, so a random-init baseline would say nothing about depth. Models without
    the argument are built as timm builds them."""
    import timm

    try:
        return timm.create_model(arch, pretrained=False, zero_init_last=False, **kwargs), True
    except TypeError as e:
        if "zero_init_last" not in str(e):
            raise
    return timm.create_model(arch, pretrained=False, **kwargs), False
