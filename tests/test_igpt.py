"""Our Image GPT against transformers' ImageGPT: same tokens, hidden states and logits."""

import json

import numpy as np
import pytest
import torch

from backbones.base import BackboneOptions, DataSpec, create_backbone
from backbones.igpt.decode import decode_block, step
from backbones.igpt.model import IGPTConfig, ImageGPT
from backbones.igpt.palette import Palette
from bench.errors import BenchError
from tests.conftest import assert_user_error, write_code_carrying_pickle

transformers = pytest.importorskip("transformers")

# (colors, height, width, n_embd, n_layer, n_head): an odd head count, a non-square image.
SHAPES = [(16, 4, 4, 24, 2, 3), (32, 3, 5, 32, 3, 4), (512, 8, 8, 64, 2, 2)]


def _save_reference(folder, colors, h, w, n_embd, n_layer, n_head, head=True, safetensors=True, seed=0):
    """A random transformers ImageGPT (norm weights and biases perturbed so they matter), saved
    with its image processor."""
    torch.manual_seed(seed)
    # reorder_and_upcast_attn=True: transformers 4.42-5.20 scale the default attention path by
    # 1/int(sqrt(head_dim)) (their torch_float() returned int()), which is wrong wherever head_dim is
    # not a perfect square (here 8 and 32; igpt-m's 128 too); the reordered path divides by the true
    # sqrt(head_dim) on every version and is otherwise the same math in float32. Checked to pass
    # on 4.40.2, 4.41.2, 4.44.0, 4.57.6, 5.0.0, 5.17.0, 5.20.2, 5.21.0 and 5.24.0.
    cfg = transformers.ImageGPTConfig(vocab_size=colors + 1, n_positions=h * w, n_embd=n_embd,
                                      n_layer=n_layer, n_head=n_head, reorder_and_upcast_attn=True)
    cls = transformers.ImageGPTForCausalImageModeling if head else transformers.ImageGPTModel
    ref = cls(cfg).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ref.save_pretrained(folder)
    if not safetensors:  # the older pickle format, which we read with weights_only=True
        (folder / "model.safetensors").unlink()
        torch.save(ref.state_dict(), folder / "pytorch_model.bin")
    rng = np.random.default_rng(seed)
    clusters = rng.uniform(-1, 1, size=(colors, 3)).astype(np.float32)
    transformers.ImageGPTImageProcessor(clusters=clusters, size={"height": h, "width": w}).save_pretrained(folder)
    return ref, clusters


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_hidden_states_and_logits_match_transformers(tmp_path, shape):
    colors, h, w, n_embd, n_layer, n_head = shape
    ref, clusters = _save_reference(tmp_path, *shape)
    bb = create_backbone("igpt", DataSpec(3, h, w), BackboneOptions(weights=str(tmp_path)))
    model = bb.model
    idx = torch.randint(0, colors + 1, (3, h * w))
    with torch.no_grad():
        o = ref(idx, output_hidden_states=True)
        ours = model.forward_intermediates(idx)
        # transformers returns h0 … h(L-1) and then ln_f(hL) as its last hidden state.
        for i in range(n_layer):
            torch.testing.assert_close(ours[f"h{i}"], o.hidden_states[i], atol=1e-5, rtol=0)
        torch.testing.assert_close(ours["final"], o.hidden_states[n_layer], atol=1e-5, rtol=0)
        torch.testing.assert_close(model(idx), o.logits, atol=1e-5, rtol=0)


def test_hL_matches_transformers_last_block_output(tmp_path):
    colors, h, w, n_embd, n_layer, n_head = SHAPES[0]
    ref, _ = _save_reference(tmp_path, *SHAPES[0])
    bb = create_backbone("igpt", DataSpec(3, h, w), BackboneOptions(weights=str(tmp_path)))
    seen = {}

    def keep(module, inputs, out):
        seen["h"] = out[0] if isinstance(out, tuple) else out

    ref.transformer.h[-1].register_forward_hook(keep)
    idx = torch.randint(0, colors + 1, (2, h * w))
    with torch.no_grad():
        ref(idx)
        torch.testing.assert_close(bb.model.forward_intermediates(idx, [f"h{n_layer}"])[f"h{n_layer}"], seen["h"], atol=1e-5, rtol=0)


def test_headless_model_and_bin_weights_load(tmp_path):
    _save_reference(tmp_path, *SHAPES[1], head=False, safetensors=False)
    assert (tmp_path / "pytorch_model.bin").is_file()
    bb = create_backbone("igpt", DataSpec(3, 3, 5), BackboneOptions(weights=str(tmp_path)))
    assert bb.layers == ["h0", "h1", "h2", "h3", "final"]


def test_token_ids_equal_the_image_processor(tmp_path):
    colors, h, w = 512, 8, 8
    _, clusters = _save_reference(tmp_path, colors, h, w, 32, 1, 2)
    proc = transformers.ImageGPTImageProcessor.from_pretrained(tmp_path)
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(6, h, w, 3), dtype=np.uint8)
    expected = proc(images=list(images), return_tensors="pt")["input_ids"].numpy()
    ours = Palette(clusters).quantize(images)
    np.testing.assert_array_equal(ours, expected)


def test_asking_for_a_middle_layer_runs_no_block_past_it():
    bb = create_backbone("igpt-tiny", DataSpec(1, 8, 8), BackboneOptions(seed=0))
    calls = []
    for i, block in enumerate(bb.model.h):
        block.register_forward_hook(lambda m, inp, out, i=i: calls.append(i))
    x = bb.preprocess(np.zeros((2, 8, 8, 1), dtype=np.uint8))
    feats = bb.features(x, ["h2"])
    assert calls == [0, 1] and set(feats) == {"h2"} and feats["h2"].shape == (2, 64)
    calls.clear()
    bb.features(x, ["h1", "final"])
    assert calls == [0, 1, 2, 3]


def test_features_are_the_mean_of_rms_normalized_states():
    bb = create_backbone("igpt-tiny", DataSpec(1, 8, 8), BackboneOptions(seed=0))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 8, 8, 1), dtype=np.uint8)
    x = bb.preprocess(images)
    inp = bb.model_input(x)
    assert (inp[:, 0] == bb.model.cfg.sos).all() and torch.equal(inp[:, 1:], x[:, :-1])
    hs = bb.model.forward_intermediates(inp, ["h3", "final"])
    feats = bb.features(x, ["h3", "final"])
    h = hs["h3"]
    expected = (h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)).mean(1)
    torch.testing.assert_close(feats["h3"], expected)
    torch.testing.assert_close(feats["final"], hs["final"].mean(1))


def test_kv_cached_steps_equal_full_recomputation():
    torch.manual_seed(0)
    model = ImageGPT(IGPTConfig(n_colors=16, n_positions=12, n_embd=32, n_layer=2, n_head=4)).eval()
    idx = torch.randint(0, 17, (2, 12))
    with torch.no_grad():
        full = model(idx)
        caches = [{} for _ in model.h]
        first = step(model, idx[:, :5], caches, 0)
        steps = [step(model, idx[:, t : t + 1], caches, t) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat([first, *steps], 1), full, atol=1e-5, rtol=0)


def test_the_forward_with_caches_in_chunks_gives_the_forward_without():
    """The model's one forward: with caches, chunks of new positions attend to the kept ones."""
    torch.manual_seed(2)
    model = ImageGPT(IGPTConfig(n_colors=16, n_positions=12, n_embd=32, n_layer=2, n_head=4)).eval()
    idx = torch.randint(0, 17, (2, 12))
    with torch.no_grad():
        caches = [{} for _ in model.h]
        chunks = [model(idx[:, t : t + 3], caches=caches, start=t) for t in range(0, 12, 3)]
        torch.testing.assert_close(torch.cat(chunks, 1), model(idx), atol=1e-5, rtol=0)
    assert [cache["len"] for cache in caches] == [12, 12]


def test_one_token_decode_is_the_block_forward_on_a_filled_cache():
    """decode_block (the sampler's lean path for one new token) against Block.forward on the same
    cache, and the whole cached model, filled one token at a time from empty, against recomputation."""
    torch.manual_seed(1)
    model = ImageGPT(IGPTConfig(n_colors=16, n_positions=9, n_embd=24, n_layer=2, n_head=3)).eval()
    block = model.h[0]
    x = torch.randn(3, 9, 24)
    with torch.no_grad():
        filled, fresh = {"capacity": 9}, {"capacity": 9}
        block(x[:, :6], filled), block(x[:, :6], fresh)
        torch.testing.assert_close(decode_block(block, x[:, 6], filled, 6), block(x[:, 6:7], fresh)[:, 0], atol=1e-6,
                                   rtol=0)
        # position 6's keys are written where forward writes them; equal to rounding, as decode
        # multiplies by a contiguous copy of the weights, which MKL sums in another order
        torch.testing.assert_close(filled["k"][:, :, :7], fresh["k"][:, :, :7], atol=1e-6, rtol=0)
        assert filled["len"] == fresh["len"] == 7
        idx = torch.randint(0, 17, (3, 9))
        caches = [{} for _ in model.h]
        steps = [step(model, idx[:, t : t + 1], caches, t) for t in range(9)]
        torch.testing.assert_close(torch.cat(steps, 1), model(idx), atol=1e-5, rtol=0)
        # decode's weights: contiguous [in, out] copies on the CPU, the same numbers as the modules'
        blk = model.h[1]
        for got, linear in zip(caches[1]["weights"], (blk.attn.c_attn, blk.attn.c_proj, blk.c_fc, blk.c_proj)):
            assert got.is_contiguous() and got.data_ptr() != linear.weight.data_ptr()
            assert torch.equal(got, linear.weight.t())
        with pytest.raises(ValueError, match="exceeds the model's 9 positions"):
            step(model, idx[:, :1], caches, 9)


def test_palette_fit_quantize_round_trip():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(20, 6, 6, 1), dtype=np.uint8)
    pal = Palette.fit(images, n_colors=16, seed=0)
    assert pal.centers.shape == (16, 1)
    idx = pal.quantize(images)
    back = pal.dequantize(idx, 6, 6)
    assert back.shape == images.shape and np.abs(back.astype(int) - images).max() <= 16
    gray_under_rgb = Palette(np.eye(3, dtype=np.float32) * 2 - 1).quantize(images)
    assert gray_under_rgb.shape == (20, 36)
    with pytest.raises(BenchError, match="grayscale palette"):
        pal.quantize(np.zeros((1, 2, 2, 3), dtype=np.uint8))
    with pytest.raises(BenchError, match="shape"):
        Palette(np.zeros((4, 2)))


def test_bad_weights_folders(bench, tmp_path):
    run = ("-q", "extract", "-b", "igpt", "-d", "digits", "--split", "test", "--limit", "10")
    ok = tmp_path / "ok"
    _save_reference(ok, 16, 8, 8, 24, 2, 3)

    missing = tmp_path / "missing"
    missing.mkdir()
    (missing / "config.json").write_text((ok / "config.json").read_text())
    assert_user_error(bench(*run, "--weights", missing), "lacks", "preprocessor_config.json")

    wrong = tmp_path / "wrong"
    _save_reference(wrong, 16, 8, 8, 24, 2, 3)
    cfg = json.loads((wrong / "config.json").read_text())
    cfg["n_embd"] = 48
    (wrong / "config.json").write_text(json.dumps(cfg))
    assert_user_error(bench(*run, "--weights", wrong), "does not fit backbone 'igpt'", "wrong shape")

    pal = tmp_path / "pal"
    _save_reference(pal, 16, 8, 8, 24, 2, 3)
    proc = json.loads((pal / "preprocessor_config.json").read_text())
    proc["clusters"] = [[0.0, 0.0]] * 16
    (pal / "preprocessor_config.json").write_text(json.dumps(proc))
    assert_user_error(bench(*run, "--weights", pal), "palette")

    assert_user_error(bench(*run, "--weights", ok, "--image-size", "5"), "does not fit", "positions")
    assert not any(tmp_path.rglob("*.h5*"))


def test_igpt_runs_through_the_cli(bench, tmp_path):
    r = bench("-q", "run", "-b", "igpt-tiny", "-t", "linear-probe", "-d", "digits", "--limit", "200",
              "-o", "l2_grid=1e-3,1e-1", "--results", tmp_path)
    assert r.code == 0, r
    for layer in ("h0", "h4", "final"):
        assert layer in r.out


def test_pickled_igpt_weights_carrying_code_are_refused_unrun(bench, tmp_path):
    folder = tmp_path / "evil"
    _save_reference(folder, 16, 8, 8, 24, 2, 3)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    write_code_carrying_pickle(folder / "pytorch_model.bin", "transformer.wte.weight", marker)
    r = bench("-q", "extract", "-b", "igpt", "--weights", folder, "-d", "digits", "--split", "test",
              "--out", tmp_path / "a.h5")
    assert_user_error(r, "refused", "not run")
    assert not marker.exists() and not (tmp_path / "a.h5").exists()


def test_openai_kmeans_centers_npy_loads(tmp_path):
    centers = np.random.default_rng(0).uniform(-1, 1, size=(512, 3)).astype(np.float32)
    np.save(tmp_path / "kmeans_centers.npy", centers)
    pal = Palette.load(tmp_path / "kmeans_centers.npy")
    np.testing.assert_array_equal(pal.centers, centers)


def test_hub_id_not_cached_offline_says_what_to_do(bench, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    r = bench("-q", "extract", "-b", "igpt", "--weights", "openai/imagegpt-small", "-d", "digits",
              "--split", "test", "--out", tmp_path / "a.h5")
    assert_user_error(r, "openai/imagegpt-small", "Hugging Face cache")


def test_rgb_data_under_a_grayscale_palette_is_refused(bench, tmp_path):
    from PIL import Image

    from backbones.igpt import uniform_palette
    from backbones.igpt.checkpoint import save_checkpoint

    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    model = ImageGPT(IGPTConfig(n_colors=16, n_positions=64, n_embd=16, n_layer=1, n_head=2))
    ckpt = save_checkpoint(tmp_path / "gray", model, uniform_palette(1), (8, 8))
    r = bench("-q", "extract", "-b", "igpt", "--weights", ckpt, "-d", "imagefolder", "--data-root",
              tmp_path / "imgs", "--split", "train", "--out", tmp_path / "a.h5")
    assert_user_error(r, "RGB data under a grayscale palette")
    assert not (tmp_path / "a.h5").exists()
