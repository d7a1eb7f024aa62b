"""`bench demo`: the whole story on the embedded digits in a few minutes on a laptop CPU.

Pretrain a tiny Image GPT on digits, probe every layer of it beside raw pixels and a randomly
initialised ResNet-18, build one table, and write a grid of completions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from backbones.base import BackboneOptions

COLUMNS = {("val", "top1"): "val top-1", ("test", "top1"): "test top-1", ("val", "l2"): "chosen L2"}


@dataclass
class DemoResult:
    table: pd.DataFrame  # backbone, layer, val top-1, test top-1, chosen L2, best
    records: list[dict]
    run_dir: Path  # the pretraining run
    completions: Path  # the PNG grid


def demo(results_dir: Path, steps: int, seed: int, device: str, quiet: bool, log) -> DemoResult:
    from backbones.base import DataSpec, create_backbone
    from backbones.igpt.train import TrainConfig, pretrain
    from bench.datasets import load_split
    from bench.generate import pick_images
    from bench.grid import save_grid
    from bench.job import Job, Settings, run_job
    from bench.report import run_table

    results_dir = Path(results_dir)
    run_dir = results_dir / "demo-igpt-tiny-digits"
    cfg = TrainConfig(backbone="igpt-tiny", dataset="digits", steps=steps, batch_size=32, lr=3e-3, warmup=50,
                      save_at=(steps // 2,), seed=seed)
    log(f"pretraining igpt-tiny on digits for {steps} steps into {run_dir}")
    pretrain(cfg, run_dir, device=device, quiet=quiet, log=log)

    settings = Settings(device=device, results_dir=results_dir, quiet=quiet, log=log)  # the seed: each Job's options
    records, tables = [], []
    for backbone, options in (("pixels", BackboneOptions(seed=seed)), ("resnet18", BackboneOptions(seed=seed)),
                              ("igpt", BackboneOptions(weights=str(run_dir), seed=seed))):
        log(f"linear probe: {backbone}")
        outcome = run_job(Job(backbone=backbone, dataset="digits", task="linear-probe", options=options), settings)
        records += outcome.records
        tables.append(run_table(outcome.records, COLUMNS).assign(backbone=backbone))
    table = pd.concat(tables, ignore_index=True)
    table = table[["backbone"] + [c for c in table.columns if c != "backbone"]]

    test = load_split("digits", "test", seed=seed)
    igpt = create_backbone("igpt", DataSpec.of(test.images), BackboneOptions(weights=str(run_dir))).to(device)
    grid = igpt.completion_grid(pick_images(test.images, 8, seed), keep_rows=4, samples=4, temperature=1.0, seed=seed)
    png = save_grid(grid.reshape(-1, *grid.shape[2:]), grid.shape[1], results_dir / "demo-completions.png")
    return DemoResult(table, records, run_dir, png)
