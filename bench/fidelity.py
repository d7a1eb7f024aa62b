"""Sample metrics between generated and real images: Fréchet distance, KID and precision/recall,
computed by torch-fidelity in the feature space of a named extractor.

torch-fidelity rather than torchmetrics: it implements all three metrics (torchmetrics has FID and
KID with a custom feature module but no precision/recall), with one registry for feature
extractors and in-memory datasets as inputs; we only register extractors and pass images.

Extractors (the ``extractor`` option of ``sample-quality``):

- ``classifier`` (default, offline): the dataset's reference classifier (``bench.classifier``),
  128-d pooled conv features; named by its fingerprint in the records.
- ``pixels``: the raw pixel values scaled to [0, 1], flattened. A sanity check, and what the closed-form test of the
  Fréchet distance runs through.
- ``inception:PATH``: torch-fidelity's InceptionV3 (the network FID is defined with), 2048-d, from a
  local weights file: a state dict in ``.pth`` (read with ``weights_only=True``) or ``.safetensors``.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.errors import BenchError

CLASSIFIER, PIXELS, INCEPTION = "bench-classifier", "bench-pixels", "bench-inception"


@dataclass(frozen=True)
class Extractor:
    """A parsed ``extractor`` option: its kind and, for Inception, the weights file."""

    kind: str  # "classifier", "pixels" or "inception"
    path: str | None = None

    @classmethod
    def parse(cls, text: str) -> Extractor:
        kind, sep, path = str(text).partition(":")
        if kind in ("classifier", "pixels") and not sep:
            return cls(kind)
        if kind == "inception":
            if not path:
                raise ValueError("inception needs its weights file: inception:PATH (a .pth state dict or "
                                 ".safetensors of torch-fidelity's InceptionV3); nothing is downloaded")
            return cls(kind, str(inception_file(Path(path).expanduser()).resolve()))
        raise ValueError("choose classifier, pixels or inception:PATH")

    def __str__(self) -> str:
        return self.kind if self.path is None else f"{self.kind}:{self.path}"


INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # the name torch-fidelity downloads it under
WEIGHTS_SUFFIXES = (".pth", ".pt", ".safetensors")


def inception_file(path: Path) -> Path:
    """The Inception weights file ``inception:PATH`` names: the file itself, or in a folder the one
    weights file it holds (torch-fidelity's own name first, so its cache folder works as it is).
    ValueError saying what is missing otherwise."""
    if path.is_file():
        return path
    if not path.exists():
        raise ValueError(f"Inception weights {path} do not exist; pass the weights file (e.g. {INCEPTION_FILE}) or "
                         "the folder that holds it")
    if not path.is_dir():
        raise ValueError(f"Inception weights {path} are neither a file nor a folder")
    if (path / INCEPTION_FILE).is_file():
        return path / INCEPTION_FILE
    try:
        found = sorted(f for f in path.iterdir() if f.suffix in WEIGHTS_SUFFIXES and f.is_file())
    except OSError as e:
        raise ValueError(f"cannot list the folder {path} ({e.strerror or e})") from None
    if len(found) == 1:
        return found[0]
    if not found:
        raise ValueError(f"the folder {path} holds no weights file ({', '.join(WEIGHTS_SUFFIXES)}); put "
                         f"torch-fidelity's {INCEPTION_FILE} there or pass the file itself")
    names = ", ".join(f.name for f in found[:3]) + (", ..." if len(found) > 3 else "")
    raise ValueError(f"the folder {path} holds {len(found)} weights files ({names}); pass the one to use: "
                     f"inception:{found[0]}")


def _register() -> None:
    """Register our extractors with torch-fidelity (once per process)."""
    import torch
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if CLASSIFIER in FEATURE_EXTRACTORS_REGISTRY:
        return

    class OneFeature(FeatureExtractorBase):
        @staticmethod
        def get_provided_features_list():
            return ("features",)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "features"

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return None

    class ClassifierFeatures(OneFeature):
        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            from bench.classifier import Classifier

            self.net = Classifier.load(feature_extractor_weights_path).net

        def forward(self, x):
            from bench.classifier import to_input

            return (self.net["body"](to_input(x)),)

    class PixelFeatures(OneFeature):
        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)

        def forward(self, x):
            return (x.flatten(1).to(torch.float32) / 255.0,)

    register_feature_extractor(CLASSIFIER, ClassifierFeatures)
    register_feature_extractor(PIXELS, PixelFeatures)
    register_feature_extractor(INCEPTION, FeatureExtractorInceptionV3)


def _images(images: np.ndarray, rgb: bool):
    """uint8 (N, H, W, C) -> a torch Dataset of uint8 (C, H, W) tensors, as torch-fidelity takes them."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    if rgb and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return x[i]

    return Images()


def _clean_inception_weights(path: str, folder: str) -> str:
    """The user's Inception weights re-saved as a plain state dict that we wrote (torch-fidelity
    unpickles its weights file in full; ours must never run a stranger's pickle)."""
    import torch

    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise BenchError(f"cannot read Inception weights {path} ({str(e).splitlines()[0][:100]}); pass a state "
                         "dict (.pth saved with torch.save, or .safetensors)") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BenchError(f"Inception weights {path} are not a state dict of tensors; pass torch-fidelity's "
                         "InceptionV3 weights (pt_inception-2015-12-05)")
    missing = [k for k in ("Conv2d_1a_3x3.conv.weight", "Mixed_7c.branch_pool.conv.weight", "fc.weight")
               if k not in state]
    if missing:
        raise BenchError(f"{path} holds no {missing[0]}: not InceptionV3 weights; pass torch-fidelity's "
                         "InceptionV3 state dict (pt_inception-2015-12-05)")
    out = str(Path(folder) / "inception.pth")
    torch.save(state, out)
    return out


def sample_metrics(fake: np.ndarray, real: np.ndarray, extractor: Extractor, *, classifier_dir: str | None = None,
                   device: str = "cpu", seed: int = 0, batch_size: int = 256) -> dict:
    """Fréchet distance, KID (mean and std over 100 subsets of min(1000, N/2) images), precision
    and recall (k = 3 neighbours) of the generated ``fake`` against the ``real`` images, both uint8
    (N, H, W, C)."""
    import torch_fidelity

    _register()
    n = min(len(fake), len(real))
    if n < 2:
        raise BenchError("sample metrics need at least 2 generated and 2 real images; raise -o n=")
    kwargs = dict(input1=_images(fake, extractor.kind == "inception"), input2=_images(real, extractor.kind == "inception"),
                  fid=True, kid=True, prc=True, cuda=str(device).startswith("cuda"), batch_size=batch_size,
                  cache=False, verbose=False, save_cpu_ram=True, rng_seed=seed,
                  kid_subset_size=min(1000, max(2, n // 2)))  # subsets smaller than n, so they differ
    with tempfile.TemporaryDirectory() as tmp:
        if extractor.kind == "classifier":
            kwargs.update(feature_extractor=CLASSIFIER, feature_extractor_weights_path=classifier_dir)
        elif extractor.kind == "pixels":
            kwargs.update(feature_extractor=PIXELS)
        else:
            kwargs.update(feature_extractor=INCEPTION,
                          feature_extractor_weights_path=_clean_inception_weights(extractor.path, tmp))
        try:
            out = torch_fidelity.calculate_metrics(**kwargs)
        except ValueError as e:  # torch-fidelity's own checks (vassert)
            raise BenchError(f"sample metrics failed: {e}") from None
    return {"fd": out["frechet_inception_distance"], "kid": out["kernel_inception_distance_mean"],
            "kid_std": out["kernel_inception_distance_std"], "precision": out["precision"], "recall": out["recall"]}


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]
