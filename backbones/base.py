"""The backbone contract, and how a name on the command line becomes a backbone.

A backbone turns a uint8 image batch (N, H, W, C) into pooled features per named layer. What a
plugin class provides (subclass ``Backbone``):

- ``create(name, spec: DataSpec, options: BackboneOptions)`` (classmethod): build one;
- ``accepts_weights`` / ``accepts_pretrained`` (class attributes, False by default): whether
  ``create`` loads ``options.weights`` / the family's published weights. ``--weights`` and
  ``--pretrained`` are refused (one line, before any work) for a class that does not declare them,
  so that no result is labelled with weights the backbone never read;
- ``name``: optional; the registered name is used when the class has none;
- ``layers``: exportable layer names in depth order; ``layer_widths()``: {layer: feature size};
- ``preprocess(images) -> tensor``: uint8 (N, H, W, C) numpy -> model input;
- ``features(x, layers) -> {layer: [B, D]}``: computes nothing past the deepest requested layer and
  is differentiable (no ``inference_mode`` inside: the extraction step applies it);
- ``config()``: architecture + preprocessing facts (JSON-able) for the fingerprint;
- optional: ``weights_digest()`` (hash of the weights, for the fingerprint; when it returns "", the
  default, the harness digests the ``--weights`` file or folder itself), ``module`` (an attribute a
  plugin may set, ``self.module = net``, or a property: the torch module holding trainable
  parameters, for tasks that train; None, the default, when there is none), ``to(device)``,
  ``step`` (training step of the weights, for checkpoints), ``weights`` (a label for the weights);
- optional, a generative side (``generative = True``): ``bits_per_dim(images)``, ``sample(n,
  temperature, top_k, seed)`` -> uint8 images, and ``model_view(images)`` (real images as the model
  sees them: its resolution and quantization), read by ``bits-per-dim`` and ``sample-quality``;
  and ``weights_info(weights)`` (static): facts a study must not mix (palette, training dataset),
  read from the files without loading the weights.

From those the base class derives ``fingerprint`` (a hash of config + weights digest; not to be
overridden) and ``provenance()``. A registered object is either such a class or a *family*
(``family = True``) that answers for many names (``handles(name)``, ``list_names(pattern)``), as
timm does for every timm model.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from bench.errors import BenchError
from bench.registry import BACKBONES


@dataclass(frozen=True)
class DataSpec:
    """What a backbone must know of the data to build itself: the images' channels (1 or 3),
    height and width in pixels, as they come from the dataset (before any resize)."""

    channels: int
    height: int
    width: int

    @classmethod
    def of(cls, images: np.ndarray) -> DataSpec:
        return cls(channels=int(images.shape[3]), height=int(images.shape[1]), width=int(images.shape[2]))


@dataclass(frozen=True)
class BackboneOptions:
    """Options every command accepts the same way (``--pretrained``, ``--weights``,
    ``--image-size``, ``--seed``): whether to load the family's published weights, a weights file
    or folder, the square input size to resize to (None: the backbone's choice), and the seed of
    a random init."""

    pretrained: bool = False
    weights: str | None = None
    image_size: int | None = None
    seed: int = 0

    MAX_IMAGE_SIZE: ClassVar[int] = 1024

    def __post_init__(self):
        if self.image_size is not None and not (isinstance(self.image_size, int)
                                                and 1 <= self.image_size <= self.MAX_IMAGE_SIZE):
            raise BenchError(f"--image-size must be an integer in 1..{self.MAX_IMAGE_SIZE}, got {self.image_size!r}")
        from bench.datasets import MAX_SEED

        if not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise BenchError(f"--seed must be an integer in 0..{MAX_SEED}, got {self.seed!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.weights:
            d["weights"] = str(Path(self.weights).resolve())
        return d


class Backbone:
    name: str
    layers: list[str]
    family: ClassVar[bool] = False
    weights: str | None = None  # what the weights are: a path, "pretrained", "random-init(seed=0)"
    step: int | None = None  # the training step of a checkpoint
    module: Any = None  # the torch module whose parameters a task may train (None: nothing to train)
    accepts_weights: ClassVar[bool] = False  # create() loads options.weights (else --weights is refused)
    accepts_pretrained: ClassVar[bool] = False  # create() loads published weights (else --pretrained is refused)
    _weights_file_digest: str = ""  # set by create_backbone: the --weights digest when weights_digest() is ""

    @classmethod
    def create(cls, name: str, spec: DataSpec, options: BackboneOptions) -> Backbone:
        raise NotImplementedError

    def layer_widths(self) -> dict[str, int]:
        raise NotImplementedError

    def preprocess(self, images: np.ndarray):
        raise NotImplementedError

    def features(self, x, layers: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    def config(self) -> dict:
        """Architecture + preprocessing facts (JSON-able); weights enter via ``weights_digest``."""
        raise NotImplementedError

    def weights_digest(self) -> str:
        """A hash of the loaded weights; "" (the default) lets the harness digest the --weights path."""
        return ""

    @property
    def fingerprint(self) -> str:
        weights = self.weights_digest() or self._weights_file_digest
        blob = json.dumps({"config": self.config(), "weights": weights}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def provenance(self) -> dict:
        return {"backbone": self.name, "fingerprint": self.fingerprint, "config": self.config()}

    def to(self, device) -> Backbone:
        return self

    def save_weights(self, path: str | Path) -> Path:
        """Write the current weights of ``module`` where ``--weights`` reads them back for the same
        backbone name: ``<path>.safetensors`` (a state dict; written under a temporary name and
        renamed when complete). Returns the path written. Families with another weights format
        override it (igpt writes a checkpoint folder ``<path>/``)."""
        import os

        from safetensors.torch import save_file

        if self.module is None:
            raise BenchError(f"backbone {self.name!r} has no weights to save")
        out = Path(path).with_name(Path(path).name + ".safetensors")
        tmp = out.with_name(out.name + ".tmp")
        state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in self.module.state_dict().items()}
        save_file(state, str(tmp))
        os.replace(tmp, out)
        return out

    def check_layers(self, layers: list[str] | str | None) -> list[str]:
        """Validate requested layer names ('all' or None = all), returned in depth order."""
        if layers is None or layers == "all" or layers == ["all"]:
            return list(self.layers)
        if isinstance(layers, str):
            layers = [s.strip() for s in layers.split(",") if s.strip()]
        unknown = [layer for layer in layers if layer not in self.layers]
        if unknown or not layers:
            raise BenchError(
                f"unknown layer {', '.join(map(repr, unknown)) or '(none given)'} for backbone "
                f"{self.name!r}; valid layers: {', '.join(self.layers)} (or 'all')"
            )
        return [layer for layer in self.layers if layer in set(layers)]


def state_dict_digest(state_dict) -> str:
    """sha256 over parameter names, shapes, dtypes and bytes, in sorted name order."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(-1).view(__import__("torch").uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def resolve(name: str, *, pretrained: bool = False, weights: bool = False) -> type[Backbone]:
    """The backbone class (or family) answering for ``name``; "did you mean" when none does.
    With ``pretrained`` / ``weights`` (whether --pretrained / --weights are given), a class that
    does not declare it loads them is refused: its results would be labelled as weights it never read."""
    cls = _find(name)
    if pretrained and not getattr(cls, "accepts_pretrained", False):
        hint = "pass --weights instead" if getattr(cls, "accepts_weights", False) else "drop --pretrained"
        raise BenchError(f"backbone {name!r} takes no --pretrained (it does not declare accepts_pretrained = True); "
                         f"{hint}")
    if weights and not getattr(cls, "accepts_weights", False):
        raise BenchError(f"backbone {name!r} takes no --weights (it does not declare accepts_weights = True); drop "
                         "--weights, or make its create() load options.weights and declare accepts_weights = True")
    return cls


def _find(name: str) -> type[Backbone]:
    """The registered class, else the family that handles ``name``; "did you mean" when none does."""
    if name in BACKBONES:
        obj = BACKBONES.get(name)
        if not getattr(obj, "family", False):
            return obj
    families = []
    for reg_name in BACKBONES.names():
        obj = BACKBONES.get(reg_name)
        if getattr(obj, "family", False):
            families.append(obj)
            if obj.handles(name):
                return obj
    if name in BACKBONES:  # a bare family name such as "timm"
        raise BenchError(f"{name!r} is a family of backbones; name one model, e.g. {BACKBONES.get(name).example!r}")
    candidates = [n for n in BACKBONES.names() if not getattr(BACKBONES.get(n), "family", False)]
    for fam in families:
        candidates += fam.list_names()
    from bench.errors import did_you_mean

    raise BenchError(f"unknown backbone {name!r}{did_you_mean(name, candidates)}; see `bench backbones list`")


def create_backbone(name: str, spec: DataSpec, options: BackboneOptions | None = None) -> Backbone:
    """Build backbone ``name`` for data of ``spec``; --weights / --pretrained are checked against what
    its class declares first. When the backbone gives no ``weights_digest()``, the digest of the
    --weights path enters its fingerprint, so two weights files never share a result."""
    options = options or BackboneOptions()
    if options.image_size is not None and options.image_size < 1:
        raise BenchError(f"--image-size must be a positive integer, got {options.image_size}")
    cls = resolve(name, pretrained=options.pretrained, weights=bool(options.weights))
    backbone = cls.create(name, spec, options)
    if not getattr(backbone, "name", None):
        backbone.name = name
    if not getattr(backbone, "weights", None):
        backbone.weights = describe_weights(options)
    if options.weights and not backbone.weights_digest():
        backbone._weights_file_digest = path_digest(options.weights)
    return backbone


def path_digest(path: str | Path) -> str:
    """sha256 of a weights file; of a folder, over its files' relative paths and sha256s in sorted
    relative-path order (so a renamed or changed file changes it)."""
    path = Path(path)
    if not path.exists():
        raise BenchError(f"weights {path} do not exist; pass an existing --weights file or folder")
    try:
        if path.is_file():
            return _file_sha256(path)
        files = sorted((f.relative_to(path).as_posix(), f) for f in path.rglob("*") if f.is_file())
        if not files:
            raise BenchError(f"--weights {path} is an empty folder; pass the file or folder the weights were saved to")
        h = hashlib.sha256()
        for rel, f in files:
            h.update(f"{rel}\0{_file_sha256(f)}\n".encode())
        return h.hexdigest()
    except OSError as e:
        raise BenchError(f"cannot read --weights {path} ({e.strerror or e}); check its permissions") from None


def _file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def describe_weights(options: BackboneOptions) -> str | None:
    if options.weights:
        return str(Path(options.weights).resolve())
    return "pretrained" if options.pretrained else None


def recorded_weights(loaded: str | None, named: str | None, results_dir: str | Path | None = None) -> str | None:
    """The text a results file keeps for the weights a run ``loaded`` (an absolute path) from the
    ``--weights`` the user ``named``: a relative name as given, extended to the checkpoint or file
    loaded from it (``runs/fm/checkpoints/step-0005000``); a name that is no path (a hub id) as
    given; an absolute name relative to the results folder or the working folder when the weights
    lie under it, else from a ``bench pretrain`` run's folder on (``<run>/checkpoints/<step>``).
    Labels ("pretrained", "random-init(seed=0)") pass unchanged. Provenance text, never identity
    (the fingerprint holds the weights' digest): why, records are committed and shared, and one
    machine's absolute paths name nothing on another."""
    if not loaded or not named or not Path(loaded).is_absolute():
        return loaded
    path, given = Path(loaded), Path(named)
    if not given.exists():  # a hub id names them
        return named
    if not given.is_absolute():
        base = given.resolve()
        if path == base or path.is_relative_to(base):
            return (given / path.relative_to(base)).as_posix()
        return os.path.relpath(path)
    for root in ([Path(results_dir).resolve()] if results_dir is not None else []) + [Path.cwd().resolve()]:
        if path.is_relative_to(root) and path != root:
            return path.relative_to(root).as_posix()
    if path.parent.name == "checkpoints":
        return Path(path.parent.parent.name, "checkpoints", path.name).as_posix()
    return path.name if (path / "checkpoints").is_dir() else loaded


def weights_label(backbone: Backbone) -> str | None:
    """A short readable name for the weights, for file names: the checkpoint step, the weights
    file's stem, "pretrained"; None for a random init."""
    if backbone.step is not None:
        return f"step{backbone.step}"
    if not backbone.weights:
        return None
    if backbone.weights == "pretrained":
        return "pretrained"
    return Path(backbone.weights).name.split(".")[0] or None


def summary(backbone: Backbone, spec: DataSpec) -> dict:
    """Parameters and forward FLOPs per image up to the deepest layer (counted by
    ``torch.utils.flop_counter`` on one blank image: matrix products and attention, 2 FLOPs per
    multiply-add; attention counted whole, as the flop counter does, causal or not)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    count_cpu_attention()
    module = backbone.module
    out = {"parameters": sum(p.numel() for p in module.parameters()) if module is not None else 0}
    x = backbone.preprocess(np.zeros((1, spec.height, spec.width, spec.channels), dtype=np.uint8))
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        backbone.features(x, list(backbone.layers))
    out["flops_per_image"] = int(counter.get_total_flops())
    return out


def count_cpu_attention() -> None:
    """torch's flop counter knows the GPU attention kernels but not the CPU one that SDPA runs
    here (``_scaled_dot_product_flash_attention_for_cpu``); give it the same formula."""
    import torch
    from torch.utils import flop_counter

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None or op in flop_counter.flop_registry or op.default in flop_counter.flop_registry:
        return
    flop_counter.register_flop_formula(op, get_raw=True)(flop_counter.sdpa_flop)  # already shape-wrapped
