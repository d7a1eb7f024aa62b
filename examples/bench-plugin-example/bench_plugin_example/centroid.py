"""A complete third-party task for igpt-bench: nearest class centroid on stored features."""

import numpy as np

from tasks.base import Option, RunContext, Task, choice


def unit_rows(X):
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


class NearestCentroid(Task):
    name = "nearest-centroid"
    description = "nearest class mean of the train features, per layer (example plugin)"
    reads = "activations"  # the runner extracts (or reuses) the features of these splits
    splits = ("train", "val", "test")
    options = {"metric": Option("cosine", choice("cosine", "euclidean"), "distance: cosine or euclidean")}
    columns = {("val", "top1"): "val top-1", ("test", "top1"): "test top-1"}

    def run(self, ctx: RunContext) -> list[dict]:
        cosine = ctx.options["metric"] == "cosine"
        train = ctx.acts["train"]
        classes = np.unique(train.labels)
        records = []
        with ctx.progress("nearest centroid", len(ctx.layers)) as bar:
            for layer in ctx.layers:
                X = train.read(layer)
                X = unit_rows(X) if cosine else X
                centroids = np.stack([X[train.labels == c].mean(0) for c in classes])
                for split in ("val", "test"):
                    Q = ctx.acts[split].read(layer)
                    if cosine:
                        nearest = (unit_rows(Q) @ unit_rows(centroids).T).argmax(1)
                    else:
                        nearest = ((Q[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
                    correct = classes[nearest] == ctx.acts[split].labels
                    records.append({"layer": layer, "split": split, "metric": "top1",
                                    "value": 100.0 * correct.mean(), "n": len(correct)})
                bar.advance(1)
        return records
