"""The Image GPT backbone: our own model (``model``), palettes (``palette``) and weight loading
(``weights``), exposed to the harness as the ``igpt`` family of backbones.

Names: ``igpt`` with ``--weights`` (a transformers-format ImageGPT folder), or a shape for a
seeded random init with a fixed uniform palette: a name (``igpt-tiny``, ``igpt-mini``, ``igpt-s`` …)
or a spec ``igpt-<layers>x<width>[h<heads>]`` (``igpt-8x512``; see ``shapes.shape_config``).
``--weights`` may point such a shape at a folder too.

Features (the contract): an image becomes palette indices x1…xn in raster order (n = H·W); the
model reads [SOS, x1, …, x(n−1)]. Layer ``h0`` is the embedding output, ``h1``…``hL`` the block
outputs, ``final`` the last norm's output. The feature of ``hl`` is the mean over the n positions
of the hidden state divided by its root-mean-square (eps 1e-5, no gain); ``final`` is the mean of
the final-norm output. ``features`` is differentiable (the extraction step owns
``inference_mode``), and ``module`` is the model a fine-tuning task trains.
"""

from __future__ import annotations

import numpy as np

from backbones.base import Backbone, BackboneOptions, DataSpec, state_dict_digest
from bench.errors import BenchError
from bench.registry import match

from .model import IGPTConfig, ImageGPT, with_sos
from .palette import Palette, tokenize
from .shapes import SHAPE_SPEC, SHAPES, is_shape_spec, shape_config

FEATURE_EPS = 1e-5


def uniform_palette(channels: int) -> Palette:
    """16 gray levels, or an 8x8x8 RGB grid (512 colors), in [-1, 1]."""
    if channels == 1:
        return Palette(np.linspace(-1, 1, 16, dtype=np.float32)[:, None])
    lv = np.linspace(-1, 1, 8, dtype=np.float32)
    return Palette(np.stack(np.meshgrid(lv, lv, lv, indexing="ij"), -1).reshape(-1, 3))


MAX_SIDE = 128  # image side of a random-init iGPT (tokens = side²; attention grows with their square)
MIN_TEMPERATURE = 0.01  # below it the logits / temperature overflow float32

class IGPTBackbone(Backbone):
    family = True
    example = "igpt-tiny"
    description = "Image GPT: ours, loads transformers-format ImageGPT folders (--weights DIR)"
    accepts_weights = True  # an ImageGPT folder, one of our checkpoints or run folders, or a hub id
    accepts_pretrained = False  # published weights come through --weights (e.g. openai/imagegpt-small)

    @staticmethod
    def handles(name: str) -> bool:
        # A malformed spec (igpt-8x) is ours too, so that create() says what to write.
        return name == "igpt" or name in SHAPES or is_shape_spec(name)

    @staticmethod
    def list_names(pattern: str | None = None) -> list[str]:
        return match(["igpt", *SHAPES, SHAPE_SPEC], pattern)

    def __init__(self, name: str, model: ImageGPT, palette: Palette, height: int, width: int,
                 source: dict):
        self.name = name
        self.model = model.eval()
        self.palette = palette
        self.height, self.width = height, width
        self.source = source
        self.step = source.get("step")  # a checkpoint's training step (None for other weights)
        self.weights = source["weights"] if "format" in source else None  # the checkpoint, not its run folder
        self.layers = model.layer_names
        self.device = "cpu"
        self._digest = None

    @classmethod
    def create(cls, name: str, spec: DataSpec, options: BackboneOptions) -> IGPTBackbone:
        import torch

        from .weights import load_pretrained

        shape = None if name == "igpt" else shape_config(name)  # a bad spec fails before any loading
        if options.pretrained:
            raise BenchError("igpt has no --pretrained; pass --weights DIR (a transformers ImageGPT folder)")
        if options.weights:
            model, palette, (h, w), source = load_pretrained(options.weights)
            if options.image_size and options.image_size * options.image_size != h * w:
                raise BenchError(f"--image-size {options.image_size} does not fit the model's {h}x{w} positions; "
                                 "drop --image-size")
        else:
            if shape is None:
                raise BenchError("backbone 'igpt' needs --weights DIR; or name a shape such as 'igpt-tiny' "
                                 "for a random init")
            h = w = options.image_size or max(spec.height, spec.width)
            if h > MAX_SIDE:
                raise BenchError(f"a random-init iGPT models at most {MAX_SIDE}x{MAX_SIDE} pixels ({MAX_SIDE ** 2} "
                                 f"tokens), not {h}x{w}; pass a smaller --image-size")
            torch.manual_seed(options.seed)
            palette = uniform_palette(spec.channels)
            cfg = IGPTConfig(n_colors=palette.n_colors, n_positions=h * w, **shape)
            model = ImageGPT(cfg)
            source = {"weights": f"random-init(seed={options.seed})", "palette": "uniform"}
        if spec.channels == 3 and palette.channels == 1:
            raise BenchError("RGB data under a grayscale palette; use RGB weights or grayscale data")
        return cls(name, model, palette, h, w, source)

    @staticmethod
    def weights_info(weights) -> dict:
        """Palette and training dataset of ``--weights`` (read without loading them), for studies."""
        from .weights import weights_info

        return weights_info(weights)

    def to(self, device):
        self.model.to(device)
        self.device = device
        return self

    def save_weights(self, path):
        """The current weights as one of our checkpoint folders ``<path>/`` (what ``-b igpt
        --weights`` loads), with this backbone's palette and image size; returns the folder."""
        from pathlib import Path

        from .checkpoint import save_checkpoint

        return save_checkpoint(Path(path), self.model, self.palette, (self.height, self.width),
                               extra={"derived_from": self.recorded_source()})

    def recorded_source(self) -> dict:
        """Where the weights came from as records keep it: the source with its path as this
        backbone's ``weights`` text (a job sets it as the user named it); ``config()``, hence the
        fingerprint, keeps the loaded path, so result identities do not move."""
        return dict(self.source, weights=self.weights) if "format" in self.source and self.weights else dict(self.source)

    def provenance(self) -> dict:
        out = super().provenance()
        return dict(out, config=dict(out["config"], source=self.recorded_source()))

    def layer_widths(self):
        return {layer: self.model.cfg.n_embd for layer in self.layers}

    def tokens(self, images: np.ndarray) -> np.ndarray:
        """uint8 images -> palette indices (N, H*W), after resizing to the model's resolution."""
        return tokenize(images, self.palette, self.height, self.width)

    def preprocess(self, images: np.ndarray):
        import torch

        return torch.from_numpy(self.tokens(images))

    def model_input(self, tokens):
        """[SOS, x1, …, x(n−1)]."""
        return with_sos(tokens, self.model.cfg.sos)

    @property
    def module(self):
        """The trainable torch module: the ImageGPT itself."""
        return self.model

    def features(self, x, layers):
        """{layer: pooled [B, C]}; differentiable, runs no block past the deepest layer."""
        states = self.model.forward_intermediates(self.model_input(x.to(self.device)), layers, stop_early=True)
        return self._pool(states, layers)

    def features_and_loss(self, x, layers):
        """``(features(x, layers), next-token cross-entropy in nats)`` from one forward pass:
        the pooled features of ``layers`` and the generative loss of the same palette tokens
        ``x`` [B, n] (the model reads [SOS, x1…x(n−1)], predicts x1…xn). Fine-tuning's joint
        objective (classification + generative, as in the paper) trains on both; differentiable."""
        tokens = x.to(self.device)
        states = self.model.forward_intermediates(self.model_input(tokens), [*layers, "final"])
        return self._pool(states, layers), self.model.head_loss(states["final"], tokens)

    @staticmethod
    def _pool(states, layers):
        """Mean over positions of h/rms(h) per layer; of the final-norm output for ``final``."""
        import torch

        pooled = {}
        for layer in layers:
            state = states[layer].float()
            if layer != "final":
                state = state * torch.rsqrt(state.pow(2).mean(-1, keepdim=True) + FEATURE_EPS)
            pooled[layer] = state.mean(1)
        return pooled

    # -- generative side -------------------------------------------------------------------------
    generative = True

    def bits_per_dim(self, images: np.ndarray, batch_size: int = 64) -> float:
        """Mean NLL of the palette tokens, in bits per sub-pixel (a token is one pixel of C
        sub-pixels): a property of the quantized image, not of the raw 8-bit one."""
        from .train import bits_per_dim

        return bits_per_dim(self.model, self.tokens(images), images.shape[-1], batch_size, self.device)

    def model_view(self, images: np.ndarray) -> np.ndarray:
        """uint8 images as the model sees them: resized to its resolution and quantized to its
        palette (the real side of a sample metric, so that it judges the model, not the palette)."""
        return self.palette.dequantize(self.tokens(images), self.height, self.width)

    def _check_sampling(self, temperature: float, top_k: int | None) -> None:
        if not (MIN_TEMPERATURE <= temperature and np.isfinite(temperature)):
            raise BenchError(f"--temperature must be a number >= {MIN_TEMPERATURE} (for the likeliest color "
                             f"only, use --top-k 1), got {temperature}")
        if top_k is not None and not 1 <= top_k <= self.palette.n_colors:
            raise BenchError(f"--top-k must lie in 1..{self.palette.n_colors} (the palette size), got {top_k}")

    def _to_images(self, tokens) -> np.ndarray:
        return self.palette.dequantize(tokens.cpu().numpy(), self.height, self.width)

    def sample(self, n: int, temperature: float = 1.0, top_k: int | None = None, seed: int = 0,
               use_cache: bool = True) -> np.ndarray:
        """n unconditional samples as uint8 images (n, H, W, C)."""
        import torch

        from .sample import generate

        self._check_sampling(temperature, top_k)
        prefix = torch.zeros((n, 0), dtype=torch.long)
        return self._to_images(generate(self.model, prefix, self.height * self.width, temperature=temperature,
                                        top_k=top_k, seed=seed, use_cache=use_cache))

    def complete(self, images: np.ndarray, keep_rows: int, samples: int, temperature: float = 1.0,
                 top_k: int | None = None, seed: int = 0) -> np.ndarray:
        """For each image, ``samples`` completions of its top ``keep_rows`` rows: (N, samples, H, W, C)."""
        import torch

        from .sample import generate

        self._check_sampling(temperature, top_k)
        if not 1 <= keep_rows < self.height:
            raise BenchError(f"--keep-rows must lie in 1..{self.height - 1} (the model sees {self.height} rows), "
                             f"got {keep_rows}")
        tok = torch.from_numpy(self.tokens(images))
        prefix = tok[:, : keep_rows * self.width].repeat_interleave(samples, dim=0)
        out = generate(self.model, prefix, self.height * self.width, temperature=temperature, top_k=top_k, seed=seed)
        return self._to_images(out).reshape(len(images), samples, self.height, self.width, -1)

    def completion_grid(self, images: np.ndarray, keep_rows: int, samples: int, temperature: float = 1.0,
                        top_k: int | None = None, seed: int = 0) -> np.ndarray:
        """Rows of (original, what the model saw, completions…) as (N, 2 + samples, H, W, C):
        the original and the shown image are quantized like the model's input, the hidden rows grey."""
        comps = self.complete(images, keep_rows, samples, temperature, top_k, seed)
        truth = self.model_view(images)
        shown = truth.copy()
        shown[:, keep_rows:] = 127
        return np.concatenate([truth[:, None], shown[:, None], comps], axis=1)

    def config(self):
        return {
            "backbone": "igpt",
            "model": self.model.cfg.to_dict(),
            "image": [self.height, self.width],
            "preprocessing": {"resize": [self.height, self.width], "interpolation": "bilinear-antialias",
                              "palette_sha256": __import__("hashlib").sha256(self.palette.centers.tobytes()).hexdigest(),
                              "input": "[SOS, x1..x(n-1)], raster order"},
            "pooling": "mean over positions of h/rms(h) (eps 1e-5); final: mean of ln_f output",
            "source": self.source,
        }

    def weights_digest(self):
        if self._digest is None:
            self._digest = state_dict_digest(self.model.state_dict())
        return self._digest
