"""iGPT shapes beyond the named ones (igpt-<layers>x<width>), the one layer API
(forward_intermediates) and features that carry gradients."""

import json

import numpy as np
import pytest
import torch

from backbones.base import BackboneOptions, DataSpec, create_backbone
from backbones.igpt import IGPTBackbone
from backbones.igpt.model import IGPTConfig, ImageGPT
from backbones.igpt.shapes import shape_config
from bench.errors import BenchError
from tests.conftest import assert_user_error


@pytest.mark.parametrize("name, expected", [
    ("igpt-8x512", {"n_layer": 8, "n_embd": 512, "n_head": 8}),  # heads of 64 channels
    ("igpt-12x256", {"n_layer": 12, "n_embd": 256, "n_head": 4}),
    ("igpt-8x200", {"n_layer": 8, "n_embd": 200, "n_head": 2}),  # the most heads of >= 64 that divide 200
    ("igpt-4x64", {"n_layer": 4, "n_embd": 64, "n_head": 1}),
    ("igpt-2x24", {"n_layer": 2, "n_embd": 24, "n_head": 1}),
    ("igpt-8x512h4", {"n_layer": 8, "n_embd": 512, "n_head": 4}),
    ("igpt-tiny", {"n_layer": 4, "n_embd": 64, "n_head": 4}),  # the named shapes keep their heads
])
def test_a_shape_spec_gives_layers_width_and_heads(name, expected):
    assert shape_config(name) == expected


@pytest.mark.parametrize("name, fragments", [
    ("igpt-8x", ["malformed iGPT shape 'igpt-8x'", "igpt-<layers>x<width>", "igpt-8x512"]),
    ("igpt-x64", ["malformed", "igpt-<layers>x<width>"]),
    ("igpt-8x64h", ["malformed"]),
    ("igpt-0x64", ["0 layers", "1..512"]),
    ("igpt-8x0", ["0 wide", "1..16384"]),
    ("igpt-8x100000", ["100000 wide", "1..16384"]),
    ("igpt-8x100h3", ["3 heads do not divide the width 100", "drop h3", "default (1)"]),
    ("igpt-tinny", ["unknown iGPT shape", "did you mean 'igpt-tiny'"]),
])
def test_a_bad_shape_says_what_to_write(name, fragments):
    with pytest.raises(BenchError) as err:
        shape_config(name)
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_the_factory_refuses_a_shape_past_this_machines_memory_before_building_it():
    """The memory check lives with building a model (``shapes``), not in the model's definition."""
    import backbones.igpt.model as model_file

    with pytest.raises(BenchError, match="more than half of this machine's .* choose a smaller shape"):
        create_backbone("igpt-512x16384", DataSpec(1, 8, 8), BackboneOptions(seed=0))
    assert not hasattr(model_file, "physical_memory") and not hasattr(model_file, "shape_config")


def test_a_spec_builds_a_seeded_random_backbone():
    spec = DataSpec(1, 8, 8)
    bb = create_backbone("igpt-3x128", spec, BackboneOptions(seed=0))
    assert bb.layers == ["h0", "h1", "h2", "h3", "final"]
    assert bb.model.cfg.n_head == 2 and set(bb.layer_widths().values()) == {128}
    assert bb.fingerprint == create_backbone("igpt-3x128", spec, BackboneOptions(seed=0)).fingerprint
    assert bb.fingerprint != create_backbone("igpt-3x128h4", spec, BackboneOptions(seed=0)).fingerprint
    feats = bb.features(bb.preprocess(np.zeros((2, 8, 8, 1), dtype=np.uint8)), ["h2"])
    assert feats["h2"].shape == (2, 128)


def test_the_family_answers_for_specs_and_lists_the_pattern():
    assert all(IGPTBackbone.handles(n) for n in ("igpt", "igpt-tiny", "igpt-8x512", "igpt-8x", "igpt-x64"))
    assert not IGPTBackbone.handles("igpt-tinny")  # left to the registry's "did you mean"
    assert IGPTBackbone.list_names("igpt-*") == ["igpt-s", "igpt-m", "igpt-l", "igpt-xl", "igpt-wide", "igpt-mini",
                                                 "igpt-tiny", "igpt-<L>x<W>"]


def test_a_malformed_spec_is_one_line_on_every_command(bench, tmp_path):
    r = bench("run", "-b", "igpt-8x", "-t", "linear-probe", "-d", "digits", "--results", tmp_path)
    assert_user_error(r, "malformed iGPT shape 'igpt-8x'", "igpt-8x512")
    r = bench("pretrain", "-b", "igpt-0x64", "-d", "digits", "--steps", "2", "--out", tmp_path / "run")
    assert_user_error(r, "igpt-0x64", "1..512")
    assert_user_error(bench("benchmark", "pretrain", "-b", "igpt-x64"), "malformed")
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob("*.json"))


def test_a_spec_pretrains_and_times_through_the_cli(bench, tmp_path):
    out = tmp_path / "run"
    r = bench("-q", "pretrain", "-b", "igpt-2x32", "-d", "digits", "--limit", "100", "--steps", "2",
              "--batch-size", "8", "--warmup", "1", "--out", out)
    assert r.code == 0, r
    meta = json.loads((out / "checkpoints" / "step-0000002" / "igpt.json").read_text())
    assert (meta["config"]["n_layer"], meta["config"]["n_embd"], meta["config"]["n_head"]) == (2, 32, 1)
    r = bench("benchmark", "pretrain", "-b", "igpt-2x32", "--image-size", "4", "--batch-size", "4", "--steps", "1",
              "--device", "cpu")
    assert r.code == 0, r


def _tiny_model():
    torch.manual_seed(0)
    return ImageGPT(IGPTConfig(n_colors=16, n_positions=12, n_embd=32, n_layer=4, n_head=4)).eval()


def test_forward_intermediates_takes_names_or_positions_in_depth_order():
    model = _tiny_model()
    idx = torch.randint(0, 17, (2, 12))
    with torch.no_grad():
        every = model.forward_intermediates(idx)
        some = model.forward_intermediates(idx, ["final", "h2", 1, "h2"])
        torch.testing.assert_close(model(idx), model.head(every["final"]))
    assert list(every) == model.layer_names and list(some) == ["h1", "h2", "final"]
    for name in some:
        assert torch.equal(some[name], every[name])
    assert list(model.forward_intermediates(idx, [-1, 0])) == ["h0", "final"]
    for bad, error in ((["h9"], ValueError), ([7], IndexError), ([], ValueError), ("h2", TypeError)):
        with pytest.raises(error):
            model.forward_intermediates(idx, bad)


def test_stop_early_runs_no_block_past_the_deepest_layer():
    model = _tiny_model()
    calls = []
    for depth, block in enumerate(model.h, start=1):
        block.register_forward_hook(lambda module, inputs, output, depth=depth: calls.append(depth))
    idx = torch.randint(0, 17, (2, 12))
    model.forward_intermediates(idx, ["h2"], stop_early=True)
    assert calls == [1, 2]
    calls.clear()
    model.forward_intermediates(idx, ["h2"])  # timm's default: the whole forward
    assert calls == [1, 2, 3, 4]


def test_features_carry_gradients_to_the_layers_below_and_equal_inference_values():
    bb = create_backbone("igpt-tiny", DataSpec(1, 8, 8), BackboneOptions(seed=0))
    assert bb.module is bb.model
    x = bb.preprocess(np.random.default_rng(0).integers(0, 256, size=(3, 8, 8, 1), dtype=np.uint8))
    feats = bb.features(x, ["h2"])
    assert feats["h2"].requires_grad
    feats["h2"].pow(2).sum().backward()
    grads = {name: p.grad for name, p in bb.module.named_parameters()}
    for name in ("wte.weight", "wpe.weight", "h.0.c_fc.weight", "h.1.attn.c_attn.weight"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    assert all(grads[name] is None for name in grads if name.startswith(("h.2.", "h.3.", "ln_f", "head")))
    with torch.inference_mode():
        inferred = bb.features(x, ["h2"])
    assert torch.equal(inferred["h2"], feats["h2"].detach())


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_fused_norm_and_mlp_equal_the_formulas(grad):
    """The block's fast path (F.rms_norm; the MLP's activation as one silu with its 1.702 scalings
    folded into the two matrix products) against the formulas, in values and gradients."""
    import torch

    from backbones.igpt.model import Block, IGPTConfig, quick_gelu

    torch.manual_seed(0)
    block = Block(IGPTConfig(n_colors=16, n_positions=8, n_embd=32, n_layer=1, n_head=4))
    with torch.no_grad():
        for p in block.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(3, 8, 32, requires_grad=grad)

    def simple(x):
        norm = lambda m, t: t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + m.eps) * m.weight  # noqa: E731
        x = x + block.attn(norm(block.ln_1, x))
        return x + block.c_proj(quick_gelu(block.c_fc(norm(block.ln_2, x))))

    with torch.set_grad_enabled(grad):
        fast, ref = block(x), simple(x)
        torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
        if grad:
            g_fast = torch.autograd.grad(fast.square().sum(), [x, *block.parameters()])
            g_ref = torch.autograd.grad(ref.square().sum(), [x, *block.parameters()])
            for a, b in zip(g_fast, g_ref):
                torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
