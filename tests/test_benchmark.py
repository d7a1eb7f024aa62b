"""`bench benchmark pretrain`: fp32, bf16 and compiled training steps timed in one run."""

from bench.benchmark import compare_steps
from tests.conftest import assert_user_error


def test_compare_steps_times_both_precisions_from_the_same_start():
    res = compare_steps("igpt-tiny", 16, 4, 4, steps=2)
    assert set(res) == {"fp32", "bf16"}
    (t32, loss32), (t16, loss16) = res["fp32"], res["bf16"]
    assert t32 > 0 and t16 > 0
    # Same init, same batch, four steps: bf16 rounding moves the loss only a little.
    assert abs(loss32 - loss16) < 0.05 * loss32


def test_benchmark_pretrain_prints_the_ratio(bench):
    r = bench("benchmark", "pretrain", "-b", "igpt-tiny", "--image-size", "4", "--batch-size", "4", "--steps", "1",
              "--device", "cpu")
    assert r.code == 0, r
    assert "speed-up vs fp32" in r.out and "bf16" in r.out


def test_benchmark_pretrain_refuses_an_unknown_shape(bench):
    assert_user_error(bench("benchmark", "pretrain", "-b", "igpt-tinny"), "did you mean", "igpt-tiny")


def test_a_compiled_step_trains_as_the_eager_step():
    """torch.compile's graph of the training step (captured by dynamo and AOTAutograd; the
    aot_eager backend runs that graph without generating kernels, which inductor's CPU path would
    spend tens of seconds on) gives the eager step's losses and weights."""
    res = compare_steps("igpt-tiny", 16, 4, 4, steps=2, variants=("fp32", "fp32+compile"), backend="aot_eager")
    assert abs(res["fp32"][1] - res["fp32+compile"][1]) < 1e-5
