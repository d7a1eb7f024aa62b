"""`bench benchmark pretrain`: fp32 and bf16 training steps timed in one run."""

from bench.benchmark import compare_precisions
from tests.conftest import assert_user_error


def test_compare_precisions_times_both_from_the_same_start():
    res = compare_precisions("igpt-tiny", 16, 4, 4, steps=2)
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
