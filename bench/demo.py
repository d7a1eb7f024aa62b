"""`bench demo`: the whole story on the embedded digits in a few minutes on a laptop CPU.

Pretrain a tiny Image GPT on digits, probe every layer of it beside raw pixels and a randomly
initialised ResNet-18, print one table, and write a grid of completions.
"""

from __future__ import annotations

from pathlib import Path

from backbones.base import BackboneOptions


def demo(results_dir: Path, steps: int, seed: int, device: str, quiet: bool, log) -> tuple[list, Path, Path]:
    import numpy as np

    from backbones.base import DataSpec, create_backbone
    from backbones.igpt.train import TrainConfig, pretrain
    from bench.datasets import load_split
    from bench.grid import save_grid
    from bench.run import run

    results_dir = Path(results_dir)
    run_dir = results_dir / "demo-igpt-tiny-digits"
    cfg = TrainConfig(backbone="igpt-tiny", dataset="digits", steps=steps, batch_size=32, lr=3e-3, warmup=50,
                      save_at=(steps // 2,), seed=seed)
    log(f"pretraining igpt-tiny on digits for {steps} steps into {run_dir}")
    pretrain(cfg, run_dir, device=device, quiet=quiet, log=log)

    records = []
    for backbone, opts in (("pixels", BackboneOptions(seed=seed)), ("resnet18", BackboneOptions(seed=seed)),
                           ("igpt", BackboneOptions(weights=str(run_dir), seed=seed))):
        log(f"linear probe: {backbone}")
        _, recs, _ = run(backbone=backbone, task="linear-probe", dataset="digits", options=opts, seed=seed,
                         device=device, results_dir=results_dir, quiet=quiet, log=log)
        records += recs

    test = load_split("digits", "test", seed=seed)
    bb = create_backbone("igpt", DataSpec.of(test.images), BackboneOptions(weights=str(run_dir))).to(device)
    pick = np.random.default_rng(seed).choice(len(test), 8, replace=False)
    originals = test.images[np.sort(pick)]
    grid = bb.completion_grid(originals, keep_rows=4, samples=4, temperature=1.0, seed=seed)
    png = save_grid(grid.reshape(-1, *grid.shape[2:]), grid.shape[1], results_dir / "demo-completions.png")
    return records, run_dir, png
