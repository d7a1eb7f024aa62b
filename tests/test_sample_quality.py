"""Sample quality: the metric plumbing against closed forms, the task end to end on digits, and its
bad inputs."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import linalg

from bench import api
from bench.errors import BenchError
from bench.fidelity import Extractor, sample_metrics
from tests.conftest import assert_user_error, write_code_carrying_pickle


def _gaussian_images(mean, cov, n, rng):
    """n 2x2 grayscale uint8 images whose 4 pixels are drawn from N(mean, cov), rounded."""
    x = rng.multivariate_normal(mean, cov, size=n)
    assert x.min() > 0 and x.max() < 255  # no clipping: the closed form holds
    return np.rint(x).astype(np.uint8).reshape(n, 2, 2, 1)


def _frechet(mu1, s1, mu2, s2):
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean))


def test_frechet_distance_of_two_gaussians_matches_the_closed_form_through_the_extractor_plumbing():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 4))
    b = rng.normal(size=(4, 4))
    s1, s2 = 20 * a @ a.T / 4 + 10 * np.eye(4), 30 * b @ b.T / 4 + 5 * np.eye(4)
    mu1, mu2 = np.array([100.0, 110, 120, 130]), np.array([104.0, 108, 126, 131])
    fake = _gaussian_images(mu1, s1, 20000, rng)
    real = _gaussian_images(mu2, s2, 20000, rng)
    # Rounding to integers adds (nearly) independent uniform noise of variance 1/12 per pixel.
    q = np.eye(4) / 12
    expected = _frechet(mu1, s1 + q, mu2, s2 + q) / 255**2  # the extractor scales pixels to [0, 1]
    got = sample_metrics(fake, real, Extractor("pixels"), seed=0)
    assert got["fd"] == pytest.approx(expected, rel=0.05), (got["fd"], expected)
    assert expected > 40 / 255**2  # far from zero: the check has teeth


def test_a_set_against_itself_has_no_distance_and_full_precision_and_recall():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(300, 3, 3, 1), dtype=np.uint8)
    got = sample_metrics(images, images, Extractor("pixels"), seed=0)
    assert abs(got["fd"]) < 1e-3
    assert abs(got["kid"]) < 0.01  # an unbiased estimate: near 0, either sign
    assert got["precision"] == 1.0 and got["recall"] == 1.0
    other = rng.integers(0, 128, size=(300, 3, 3, 1), dtype=np.uint8)  # another distribution: worse on all
    worse = sample_metrics(other, images, Extractor("pixels"), seed=0)
    assert worse["fd"] > 0.5 and worse["kid"] > 0.1 and worse["recall"] < 0.5


def test_sample_quality_end_to_end_on_digits_trains_the_reference_classifier_once(bench, tiny_run, tmp_path):
    ckpt = tiny_run / "checkpoints" / "step-0000012"
    args = ("run", "-b", "igpt", "--weights", ckpt, "-t", "sample-quality", "-d", "digits", "--limit", "200",
            "--results", tmp_path / "res")
    r = bench(*args, "-o", "n=48")
    assert r.code == 0, r
    for header in ("bits/dim", "FD", "KID", "precision", "recall", "extractor top-1"):
        assert header in r.out
    (path,) = (tmp_path / "res").glob("*sample-quality*.json")
    doc = json.loads(path.read_text())
    got = {rec["metric"]: rec for rec in doc["records"]}
    assert set(got) == {"bits_per_dim", "fd", "kid", "precision", "recall", "extractor_top1"}
    assert got["fd"]["n"] == 48 and got["fd"]["extractor"].startswith("classifier:")
    assert 0 < got["bits_per_dim"]["value"] < 8 and 0 <= got["precision"]["value"] <= 1
    assert got["extractor_top1"]["value"] > 60  # the feature space separates digits
    assert (path.with_suffix("") / "samples.png").is_file()
    classifiers = list((tmp_path / "cache").rglob("classifier.json"))
    assert len(classifiers) == 1
    stamp = classifiers[0].stat().st_mtime_ns

    r = bench(*args, "-o", "n=40")  # another run: the classifier is reused, not retrained
    assert r.code == 0, r
    assert list((tmp_path / "cache").rglob("classifier.json")) == classifiers
    assert classifiers[0].stat().st_mtime_ns == stamp
    fds = [json.loads(p.read_text())["records"] for p in (tmp_path / "res").glob("*sample-quality*.json")]
    assert len(fds) == 2 and {recs[0]["extractor"] for recs in fds} == {got["fd"]["extractor"]}

    r = bench("report", tmp_path / "res")
    assert r.code == 0 and "fd" in r.out and "sample-quality" in r.out, r


def test_the_default_n_takes_the_split_whole_where_it_is_under_1000_and_says_so(bench, tiny_run, tmp_path):
    ckpt = tiny_run / "checkpoints" / "step-0000012"
    r = bench("run", "-b", "igpt", "--weights", ckpt, "-t", "sample-quality", "-d", "digits", "-o", "extractor=pixels",
              "--results", tmp_path / "res")
    assert r.code == 0, r
    (path,) = (tmp_path / "res").glob("*sample-quality*.json")
    doc = json.loads(path.read_text())
    fd = next(rec for rec in doc["records"] if rec["metric"] == "fd")
    assert fd["n"] == 144 and fd["n_rule"] == "default: min(1000, the val split's 144 images)"  # digits' val: 144
    assert doc["run"]["identity"]["options"]["n"] == 1000  # as before the rule: default runs keep their run ids

    df = api.run("igpt", "sample-quality", "digits", weights=ckpt, limit=60, results=tmp_path / "api",
                 options={"extractor": "pixels", "n": "auto"})
    fd = df[df.metric == "fd"].iloc[0]
    assert fd.n == 60 and fd.n_rule == "default: min(1000, the val split's 60 images)"
    df = api.run("igpt", "sample-quality", "digits", weights=ckpt, limit=60, results=tmp_path / "api",
                 options={"extractor": "pixels", "n": 40})  # a number the user chose: used as it is, no rule
    fd = df[df.metric == "fd"].iloc[0]
    assert fd.n == 40 and ("n_rule" not in df.columns or pd.isna(fd.n_rule))


def test_the_smallest_n_the_task_accepts_is_the_smallest_the_metrics_can_compute():
    from tasks.sample_quality import MIN_N

    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(MIN_N, 3, 3, 1), dtype=np.uint8)
    got = sample_metrics(images, images[::-1].copy(), Extractor("pixels"), seed=0)
    assert np.isfinite([got[k] for k in ("fd", "kid", "precision", "recall")]).all()
    with pytest.raises(RuntimeError):  # one image fewer: precision/recall's 3 neighbours do not exist
        sample_metrics(images[:-1], images[1:], Extractor("pixels"), seed=0)


def test_the_default_n_reads_as_1000_in_an_identity_and_as_auto_in_listings():
    from tasks.sample_quality import AtMost, SampleQuality

    task = SampleQuality()
    default = task.parse_options([])["n"]
    assert isinstance(default, AtMost) and json.dumps(default) == "1000"
    assert task.options["n"].show(default) == "auto" and isinstance(task.parse_options({"n": default})["n"], AtMost)
    typed = task.parse_options(["n=1000"])["n"]
    assert typed == 1000 and not isinstance(typed, AtMost)  # typed: never capped


@pytest.mark.parametrize("options, fragment", [
    (("-o", "n=145"), "larger than the val split (144 images)"),
    (("-o", "n=1"), "n='1' is invalid"),
    (("-o", "n=3"), "integer >= 4 (precision/recall use each image's 3 nearest neighbours)"),
    (("--limit", "3", "-o", "extractor=pixels"), "needs at least 4 images of the val split, it has 3"),
    (("-o", "extractor=inception"), "needs its weights file"),
    (("-o", "extractor=inception:/no/such.pth"), "do not exist"),
    (("-o", "extractor=vgg"), "choose classifier, pixels or inception:PATH"),
    (("-o", "temperature=0"), "temperature='0' is invalid"),
])
def test_bad_sample_quality_options_are_one_line_errors(bench, tiny_run, tmp_path, options, fragment):
    r = bench("run", "-b", "igpt", "--weights", tiny_run, "-t", "sample-quality", "-d", "digits",
              "--results", tmp_path / "res", *options)
    assert_user_error(r, fragment)
    assert not (tmp_path / "res").exists()


def test_a_backbone_that_cannot_sample_is_refused(bench, tmp_path):
    r = bench("run", "-b", "pixels", "-t", "sample-quality", "-d", "digits", "--results", tmp_path / "res")
    assert_user_error(r, "needs a generative backbone")
    assert not (tmp_path / "res").exists()


def test_inception_weights_that_carry_code_are_refused_without_running_it(tmp_path):
    weights, marker = tmp_path / "inception.pth", tmp_path / "ran"
    write_code_carrying_pickle(weights, "fc.weight", marker)
    images = np.zeros((4, 2, 2, 1), dtype=np.uint8)
    with pytest.raises(BenchError, match="cannot read Inception weights"):
        sample_metrics(images, images, Extractor.parse(f"inception:{weights}"))
    assert not marker.exists()


def test_inception_weights_of_another_network_are_refused(tmp_path):
    import torch

    weights = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(2, 2)}, weights)
    images = np.zeros((4, 2, 2, 1), dtype=np.uint8)
    with pytest.raises(BenchError, match="not InceptionV3 weights"):
        sample_metrics(images, images, Extractor.parse(f"inception:{weights}"))
