"""Any timm model as a backbone: per-stage features from ``forward_intermediates``, averaged
over space.

Names: a timm model name (``resnet18``) or the same with a ``timm/`` prefix. Random init by
default (seeded), ``--pretrained`` for timm's weights (from the local Hugging Face cache when
offline), or ``--weights FILE``. Input channels follow the dataset. Images are scaled to [0, 1],
resized (bilinear, antialiased) to ``--image-size`` (default: the pretrained input size with
pretrained weights, else the one size a model takes (a ViT's), else the native size but at least
32) and normalized by the model's mean/std; all of that enters the fingerprint. A size the model
cannot take is refused at build time, naming the size to use.
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
        fixed = fixed_input_size(model)
        if options.image_size:
            size = options.image_size
        elif options.pretrained or options.weights:
            size = int((model.pretrained_cfg or {}).get("input_size", (3, 224, 224))[-1])
        else:
            size = fixed or max(spec.height, spec.width, MIN_RANDOM_INIT_SIZE)
        check_input_size(model, arch, spec.channels, size, fixed)
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


def fixed_input_size(model) -> int | None:
    """The one square input size a model takes (a ViT's patch embedding built for 224×224), or None
    where any size large enough goes."""
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "img_size", None)
    if size is None or not getattr(embed, "strict_img_size", False) or getattr(model, "dynamic_img_size", False):
        return None
    return int(size[0]) if size[0] == size[-1] else None


def check_input_size(model, arch: str, channels: int, size: int, fixed: int | None) -> None:
    """A ``BenchError`` naming the size to use when ``model`` cannot take ``size``×``size`` images
    (a convolution wider than its shrunken input, a patch grid of another size). Tried on one blank
    image through every stage, before any work, since what fits depends on every layer's
    kernel, stride and padding."""
    import torch

    if fixed is not None and size != fixed:
        raise BenchError(f"timm model {arch!r} takes {fixed}×{fixed} images only, not {size}×{size}; pass "
                         f"--image-size {fixed} (or leave it out)")

    def fits(s: int) -> bool:
        try:
            with torch.no_grad():
                model.forward_intermediates(torch.zeros(1, channels, s, s), indices=[len(model.feature_info) - 1],
                                            stop_early=True, intermediates_only=True)
            return True
        except (RuntimeError, ValueError, AssertionError, IndexError):  # how torch and timm refuse a shape
            return False

    model.eval()  # a blank forward in training mode would move the batch-norm statistics (the fingerprint)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one small image: threads would only wait on each other
    try:
        _smallest_fit(model, arch, size, fits)
    finally:
        torch.set_num_threads(threads)


def _smallest_fit(model, arch: str, size: int, fits) -> None:
    if fits(size):
        return
    top = BackboneOptions.MAX_IMAGE_SIZE
    low, high = size, min(2 * size, top)
    while not fits(high):  # double until one fits (sizes just past the smallest are the cheap ones)
        if high == top:
            usual = int((model.pretrained_cfg or {}).get("input_size", (0,))[-1])
            if usual and fits(usual):  # a model built for one size only
                raise BenchError(f"timm model {arch!r} cannot run on {size}×{size} images; pass --image-size "
                                 f"{usual}, the size it was built for")
            raise BenchError(f"timm model {arch!r} cannot run on {size}×{size} images, nor on any size up to "
                             f"{top}×{top}; choose another model")
        low, high = high, min(2 * high, top)
    while high - low > 1:  # low does not fit, high does: the smallest size that fits lies in (low, high]
        mid = (low + high) // 2
        low, high = (low, mid) if fits(mid) else (mid, high)
    raise BenchError(f"timm model {arch!r} needs images of at least {high}×{high} (its stages shrink them "
                     f"{model.feature_info[-1]['reduction']}-fold), not {size}×{size}; pass --image-size {high} or more")


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
