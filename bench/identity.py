"""The identity rule: a computed thing (an activation file, a result) is named by everything that
changes its numbers and by nothing else, so equal identities share one file and unequal ones never
do. File names, skip-if-done, reuse of cached activations and report grouping all key on it.

One rule for both: the given fields, plus the extraction ``precision`` only where it is not fp32
(bf16 features are other numbers; fp32 files and results keep the identities they always had).
"""

from __future__ import annotations

import json


def identity(precision: str = "fp32", **fields) -> dict:
    """``fields`` as an identity: with ``precision`` first where it is not fp32."""
    return {**({"precision": precision} if precision != "fp32" else {}), **fields}


def activation_identity(backbone, data, layers: list[str], limit: int | None, seed: int,
                        precision: str = "fp32") -> dict:
    """What makes an activation file of ``backbone`` on the split ``data``: the seed counts only
    where ``limit`` draws a subset with it."""
    return identity(precision, backbone=backbone.name, fingerprint=backbone.fingerprint,
                    dataset=data.info["dataset"], split=data.info["split"], limit=limit,
                    seed=seed if limit is not None else None, layers=list(layers), data_digest=data.digest)


def result_identity(*, fingerprint: str, dataset: str, data_digests: dict, task: str, options: dict,
                    layers: list[str], seed: int, limit: int | None, tag: str | None,
                    precision: str = "fp32") -> dict:
    """What makes a result: the backbone fingerprint (it holds the weights digest), the data
    (``data_digests``: the carve-outs and limit of each split), the task and its options, the
    layers, seed and limit, plus the user's tag."""
    return identity(precision, fingerprint=fingerprint, dataset=dataset, data=dict(sorted(data_digests.items())),
                    task=task, options=json.loads(json.dumps(options, sort_keys=True, default=str)),
                    layers=list(layers), seed=seed, limit=limit, tag=tag)


def study_identity(*, study: str, dataset: str, options: dict, members: list[list[str]], seed: int,
                   tag: str | None) -> dict:
    """What makes a study (a correlation across checkpoints): its task and options on the dataset,
    and the run ids of its members (a list per point), which carry everything that made them."""
    return {"study": study, "dataset": dataset, "task": study,
            "options": json.loads(json.dumps(options, sort_keys=True, default=str)),
            "members": members, "seed": seed, "tag": tag}
