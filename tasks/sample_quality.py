"""How good a generative backbone's samples are: bits/dim on a split, and Fréchet distance, KID and
precision/recall of N seeded samples against N real images of that split.

The real images go through the model's view (its resolution and palette) before the features are
taken, so the metrics judge the model rather than its quantization. The metric math is
torch-fidelity's (``bench.fidelity``); the feature space is the ``extractor`` option: the dataset's
reference classifier by default (trained on the train split once, reused by fingerprint, its top-1
on the split recorded beside the metrics), raw pixels, or Inception from a local weights file.
Samples are drawn in batches with the KV cache; the first 64 are saved as ``samples.png`` in the
run's artifacts folder.
"""

from __future__ import annotations

import numpy as np

from bench.errors import BenchError
from tasks.base import Option, RunContext, Task, choice, float_range, positive_int

GRID = 64  # samples shown in samples.png


def _n(text: str) -> int:
    value = int(text)
    if value < 2:
        raise ValueError("must be an integer >= 2 (a covariance needs two images)")
    return value


def _extractor(text: str):
    from bench.fidelity import Extractor

    return Extractor.parse(text)


class SampleQuality(Task):
    name = "sample-quality"
    description = "bits/dim and FD, KID, precision/recall of samples (generative backbones, e.g. igpt)"
    reads = "model"
    requires_generative = True
    options = {
        "n": Option(1000, _n, "samples generated and real images compared, >= 2 (at most the split's size)"),
        "split": Option("val", choice("train", "val", "test"), "the split of the real images and of bits/dim"),
        "extractor": Option(_extractor("classifier"), _extractor,
                            "feature space: classifier (trained here on train), pixels, or inception:PATH "
                            "(torch-fidelity InceptionV3 weights file)"),
        "temperature": Option(1.0, float_range(0.01, 100.0), "sampling temperature, 0.01..100"),
        "batch_size": Option(250, positive_int, "images sampled at once (KV cache memory grows with it)"),
    }
    columns = {("val", "bits_per_dim"): "bits/dim", ("val", "fd"): "FD", ("val", "kid"): "KID",
               ("val", "precision"): "precision", ("val", "recall"): "recall",
               ("val", "extractor_top1"): "extractor top-1"}

    def splits_for(self, options: dict) -> tuple[str, ...]:
        split = options["split"]
        needs_train = options["extractor"].kind == "classifier" and split != "train"
        return (split, "train") if needs_train else (split,)

    def check(self, options: dict, data: dict) -> None:
        split, n = options["split"], options["n"]
        if n > len(data[split]):
            raise BenchError(f"sample-quality -o n={n} is larger than the {split} split ({len(data[split])} images); "
                             f"lower n to at most {len(data[split])}")
        if options["extractor"].kind == "inception":  # a bad weights file: said before any sampling
            from backbones.weights import load_state_dict

            load_state_dict(options["extractor"].path)

    def run(self, ctx: RunContext) -> list[dict]:
        from bench.fidelity import file_digest, sample_metrics
        from bench.grid import save_grid

        o, backbone = ctx.options, ctx.backbone
        split, n, extractor = o["split"], o["n"], o["extractor"]
        data = ctx.data[split]
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
        return [{"layer": "model", "split": split, "stderr": None, **r, "extractor": label} for r in rows]
