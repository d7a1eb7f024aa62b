"""How good a generative backbone's samples are: bits/dim on a split, and Fréchet distance, KID and
precision/recall of N seeded samples against N real images of that split.

The real images go through the model's view (its resolution and palette) before the features are
taken, so the metrics judge the model rather than its quantization. The metric math is
torch-fidelity's (``bench.fidelity``); the feature space is the ``extractor`` option: the dataset's
reference classifier by default (trained on the train split once, reused by fingerprint, its top-1
on the split recorded beside the metrics), raw pixels, or Inception from a local weights file.
Samples are drawn in batches with the KV cache; the first 64 are saved as ``samples.png`` in the
run's artifacts folder. ``n`` defaults to min(1000, the split's size), so the default works on small
datasets, and its records say when that rule chose it.
"""

from __future__ import annotations

import numpy as np

from bench.errors import BenchError
from tasks.base import Option, RunContext, Task, choice, float_range, int_range

GRID = 64  # samples shown in samples.png
DEFAULT_N = 1000
MIN_N = 4  # precision/recall compare each image with its 3 nearest neighbours among the others


class AtMost(int):
    """The default ``n``: this many images, or the split's size where that is smaller.

    An int, so a result's identity reads it as the number it caps (default runs keep their run
    ids); its own type, so an ``n`` the user typed is never capped silently."""


def parse_n(text: str) -> int:
    """``auto`` (min(1000, the split's size)) or an integer >= 4."""
    if text.strip() == "auto":
        return AtMost(DEFAULT_N)
    value = int(text)
    if value < MIN_N:
        raise ValueError(f"must be auto or an integer >= {MIN_N} (precision/recall use each image's 3 nearest "
                         "neighbours)")
    return value


def show_n(value: int) -> str:
    return "auto" if isinstance(value, AtMost) else str(value)


def resolve_n(n: int, size: int, split: str) -> int:
    """The number of images a run compares: ``n`` itself, or for the default the split's size
    where smaller. Refuses an ``n`` the split cannot give."""
    if isinstance(n, AtMost):
        if size < MIN_N:
            raise BenchError(f"sample-quality needs at least {MIN_N} images of the {split} split, it has {size}; "
                             "raise --limit or choose another -o split=")
        return min(int(n), size)
    if n > size:
        raise BenchError(f"sample-quality -o n={n} is larger than the {split} split ({size} images); "
                         f"lower n to at most {size} (or leave it out: the default takes min({DEFAULT_N}, the "
                         "split's size))")
    return n


def parse_extractor(text: str):
    from bench.fidelity import Extractor

    return Extractor.parse(text)


class SampleQuality(Task):
    name = "sample-quality"
    description = "bits/dim and FD, KID, precision/recall of samples (generative backbones, e.g. igpt)"
    reads = "model"
    requires_generative = True
    options = {
        "n": Option(AtMost(DEFAULT_N), parse_n, f"samples generated and real images compared, >= {MIN_N} and at "
                    f"most the split's size; auto (the default): min({DEFAULT_N}, the split's size)", show_n),
        "split": Option("val", choice("train", "val", "test"), "the split of the real images and of bits/dim"),
        "extractor": Option(parse_extractor("classifier"), parse_extractor,
                            "feature space: classifier (trained here on train), pixels, or inception:PATH "
                            "(torch-fidelity InceptionV3 weights file)"),
        "temperature": Option(1.0, float_range(0.01, 100.0), "sampling temperature, 0.01..100"),
        "batch_size": Option(250, int_range(1, 65536), "images sampled at once, 1..65536 (KV cache memory grows "
                             "with it)"),
    }
    columns = {("val", "bits_per_dim"): "bits/dim", ("val", "fd"): "FD", ("val", "kid"): "KID",
               ("val", "precision"): "precision", ("val", "recall"): "recall",
               ("val", "extractor_top1"): "extractor top-1"}

    def splits_for(self, options: dict) -> tuple[str, ...]:
        split = options["split"]
        needs_train = options["extractor"].kind == "classifier" and split != "train"
        return (split, "train") if needs_train else (split,)

    def check(self, options: dict, data: dict) -> None:
        resolve_n(options["n"], len(data[options["split"]]), options["split"])
        if options["extractor"].kind == "inception":  # a bad weights file: said before any sampling
            from backbones.weights import load_state_dict

            load_state_dict(options["extractor"].path)

    def run(self, ctx: RunContext) -> list[dict]:
        from bench.fidelity import file_digest, sample_metrics
        from bench.grid import save_grid

        o, backbone = ctx.options, ctx.backbone
        split, extractor = o["split"], o["extractor"]
        data = ctx.data[split]
        n = resolve_n(o["n"], len(data), split)
        bpd = backbone.bits_per_dim(data.images)
        pick = np.sort(np.random.default_rng(ctx.seed).choice(len(data), n, replace=False))
        real = backbone.model_view(data.images[pick])
        fake = []
        with ctx.progress(f"sampling {n} images", n) as bar:
            for i, start in enumerate(range(0, n, o["batch_size"])):
                count = min(o["batch_size"], n - start)
                fake.append(backbone.sample(count, temperature=o["temperature"], seed=ctx.seed * 1_000_003 + i))
                bar.advance(count)
        fake = np.concatenate(fake)
        save_grid(fake[:GRID], 8, ctx.artifacts_dir() / "samples.png")

        rows = [{"metric": "bits_per_dim", "value": bpd, "n": len(data)}]
        classifier_dir, label = None, str(extractor)
        if extractor.kind == "classifier":
            from bench.classifier import reference_classifier

            clf = reference_classifier(ctx.dataset, ctx.data["train"], seed=ctx.seed, cache_dir=ctx.cache_dir,
                                       device=ctx.device, progress=ctx.progress, log=ctx.log)
            classifier_dir, label = str(clf.folder), f"classifier:{clf.fingerprint}"
            rows.append({"metric": "extractor_top1", "value": clf.top1(data), "n": len(data)})
        elif extractor.kind == "inception":
            label = f"inception:{file_digest(extractor.path)}"
        m = sample_metrics(fake, real, extractor, classifier_dir=classifier_dir, device=ctx.device, seed=ctx.seed)
        rows += [{"metric": "fd", "value": m["fd"], "n": n},
                 {"metric": "kid", "value": m["kid"], "std": m["kid_std"], "n": n},
                 {"metric": "precision", "value": m["precision"], "n": n},
                 {"metric": "recall", "value": m["recall"], "n": n}]
        rule = {"n_rule": f"default: min({DEFAULT_N}, the {split} split's {len(data)} images)"} \
            if isinstance(o["n"], AtMost) else {}
        return [{"layer": "model", "split": split, "stderr": None, **r, "extractor": label, **rule} for r in rows]
