"""Samples, completions and bits/dim from an Image GPT checkpoint."""

import json

import numpy as np
import pytest
import torch

from backbones.base import BackboneOptions, DataSpec, create_backbone
from backbones.igpt import uniform_palette
from backbones.igpt.checkpoint import save_checkpoint
from backbones.igpt.model import IGPTConfig, ImageGPT
from tests.conftest import assert_user_error


@pytest.fixture
def ckpt(tmp_path):
    """A random 8x8 grayscale checkpoint: 16 colors, 2 blocks."""
    torch.manual_seed(0)
    model = ImageGPT(IGPTConfig(n_colors=16, n_positions=64, n_embd=32, n_layer=2, n_head=4))
    return save_checkpoint(tmp_path / "ckpt", model, uniform_palette(1), (8, 8))


def test_kv_cached_sampling_draws_the_same_images_as_full_recomputation(tmp_path):
    torch.manual_seed(1)
    model = ImageGPT(IGPTConfig(n_colors=512, n_positions=30, n_embd=48, n_layer=2, n_head=3))
    path = save_checkpoint(tmp_path / "rgb", model, uniform_palette(3), (5, 6))
    bb = create_backbone("igpt", DataSpec(3, 5, 6), BackboneOptions(weights=str(path)))
    for temperature, top_k in ((1.0, None), (0.7, 5)):
        a = bb.sample(6, temperature, top_k, seed=3, use_cache=True)
        b = bb.sample(6, temperature, top_k, seed=3, use_cache=False)
        assert a.shape == (6, 5, 6, 3)
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(bb.sample(6, 1.0, None, seed=3), bb.sample(6, 1.0, None, seed=4))


def test_completions_keep_the_given_rows(ckpt):
    bb = create_backbone("igpt", DataSpec(1, 8, 8), BackboneOptions(weights=str(ckpt)))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 8, 8, 1), dtype=np.uint8)
    out = bb.complete(images, keep_rows=3, samples=2, seed=0)
    assert out.shape == (3, 2, 8, 8, 1)
    kept = bb.palette.dequantize(bb.tokens(images), 8, 8)[:, :3]
    for s in range(2):
        np.testing.assert_array_equal(out[:, s, :3], kept)


def test_sample_complete_and_bits_per_dim_through_the_cli(bench, ckpt, tmp_path):
    r = bench("sample", "-b", "igpt", "--weights", ckpt, "--n", "8", "--top-k", "4", "--out", tmp_path / "s.png")
    assert r.code == 0, r
    from PIL import Image

    assert Image.open(tmp_path / "s.png").size[0] > 64
    r = bench("complete", "-b", "igpt", "--weights", ckpt, "-d", "digits", "--n", "3", "--keep-rows", "4",
              "--samples", "2", "--out", tmp_path / "c.png")
    assert r.code == 0, r
    w, h = Image.open(tmp_path / "c.png").size
    assert w > h  # 3 rows of (original, shown, 2 completions)
    r = bench("-q", "run", "-b", "igpt", "--weights", ckpt, "-t", "bits-per-dim", "-d", "digits", "--results", tmp_path)
    assert r.code == 0, r
    (f,) = tmp_path.glob("igpt@*__digits__bits-per-dim__*.json")
    rec = json.loads(f.read_text())["records"][0]
    assert rec["metric"] == "bits_per_dim" and rec["split"] == "test"
    # An untrained model over 16 colors is near log2(16) = 4 bits per (gray) sub-pixel.
    assert 3.0 < rec["value"] < 6.0


@pytest.mark.parametrize("args, fragments", [
    (["sample", "--n", "0"], ["--n"]),
    (["sample", "--temperature", "0"], ["--temperature"]),
    (["sample", "--top-k", "0"], ["--top-k", "1..16"]),
    (["sample", "--top-k", "17"], ["--top-k"]),
    (["complete", "-d", "digits", "--keep-rows", "0"], ["--keep-rows", "1..7"]),
    (["complete", "-d", "digits", "--keep-rows", "8"], ["--keep-rows"]),
    (["complete", "-d", "digits", "--keep-rows", "2", "--samples", "0"], ["--samples"]),
])
def test_out_of_range_generation_values(bench, ckpt, tmp_path, args, fragments):
    out = tmp_path / "grid.png"
    r = bench(*args[:1], "-b", "igpt", "--weights", ckpt, *args[1:], "--out", out)
    assert_user_error(r, *fragments)
    assert not out.exists() and not list(tmp_path.glob("*.png"))


def test_generation_needs_a_generative_backbone_and_a_png(bench, ckpt, tmp_path):
    assert_user_error(bench("sample", "-b", "igpt", "--weights", ckpt, "--out", tmp_path / "x.jpg"), ".png")
    assert_user_error(bench("sample", "-b", "igpt-tiny", "--out", tmp_path / "x.png"), "--weights")
    r = bench("run", "-b", "pixels", "-t", "bits-per-dim", "-d", "digits", "--results", tmp_path)
    assert_user_error(r, "generative")


def test_benchmark_sample_reports_same_images_and_a_speed_ratio(bench, ckpt):
    r = bench("benchmark", "sample", "-b", "igpt", "--weights", ckpt, "--n", "4", "--device", "cpu")
    assert r.code == 0, r
    assert "kv-cache" in r.out and "full recompute" in r.out and "True" in r.out
