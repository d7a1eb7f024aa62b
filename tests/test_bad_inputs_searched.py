"""Bad inputs found by search rather than listed: a hypothesis fuzz of the numeric and path
options, every option past its range through the Python API, and the hostile cases of studies
(a bootstrap that would not fit, one checkpoint named several ways, Inception weights in a
folder). Each is one line, exit 2 (or BenchError), nothing written."""


import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import assert_user_error

# -- fuzz: numeric and path options --------------------------------------------------------------

NUMBERS = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(min_size=1, max_size=12))


def _value(v) -> str:
    text = str(v)
    return " " + text if text.startswith("-") and not text[1:2].isdigit() else text  # a value, not an option


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(["--limit", "--batch-size", "--seed", "--image-size"]), value=NUMBERS)
def test_fuzzed_numeric_options_run_or_fail_as_user_errors(bench, tmp_path, option, value):
    """Any value of a numeric option either runs (tiny: 30 digits through pixels, or resnet18's first
    stage for --image-size) or is a one-line user error; never an internal error."""
    text = _value(value)
    if option == "--image-size" and text.strip().lstrip("-").isdigit() and 48 < int(text) <= 1024:
        return  # valid but slow on 2 cores; the table has the over-the-limit case
    backbone = ["-b", "resnet18", "--layers", "layer1"] if option == "--image-size" else ["-b", "pixels"]
    limit = [] if option == "--limit" else ["--limit", "30"]
    out = tmp_path / "fuzz.h5"
    r = bench("-q", "extract", *backbone, "-d", "digits", "--split", "test", *limit, option, text, "--out", out)
    assert r.code in (0, 2), r
    if r.code == 2:
        assert_user_error(r)
        assert not out.exists()
    out.unlink(missing_ok=True)


# Written-to paths stay relative (the test runs in its own folder) but for ones that cannot be written.
OUT_PATHS = st.one_of(
    st.sampled_from(["/dev/null/x.h5", "/proc/x.h5", "/proc/self", ".", "..", "~", "-", "--", "a" * 300, "x\x00y",
                     "a/../../b", "sub/", " ", "\n"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/"), min_size=1,
            max_size=40))
READ_PATHS = st.one_of(OUT_PATHS, st.sampled_from(["/", "/dev/null", "/etc/passwd", "/proc/self/mem", "/root"]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(out=OUT_PATHS, read=READ_PATHS)
def test_fuzzed_paths_run_or_fail_as_user_errors(bench, tmp_path, out, read):
    """Any --out / --results path, and any --data-root / report path: a run or a one-line user error."""
    for args in (["extract", "-b", "pixels", "-d", "digits", "--split", "test", "--limit", "20", "--out", out],
                 ["run", "-b", "pixels", "-t", "linear-probe", "-d", "digits", "--limit", "30", "-o",
                  "l2_grid=1e-2", "--results", out],
                 ["extract", "-b", "pixels", "-d", "fashion-mnist", "--split", "test", "--limit", "20",
                  "--data-root", read, "--out", "dr.h5"],
                 ["report", read]):
        r = bench("-q", *args)
        assert r.code in (0, 2), (args, r)
        if r.code == 2:
            assert_user_error(r)


# -- the same bounds from Python; studies over one checkpoint named several ways ------------------


@pytest.mark.parametrize("backbone, task, options, fragment", [
    ("igpt-tiny", "correlation", {"bootstrap": 2 * 10**9}, "1..100000"),
    ("pixels", "linear-probe", {"max_iter": 10**9}, "1..100000"),
    ("pixels", "linear-probe", {"l2_grid": [10 ** (-x / 20) for x in range(101)]}, "at most 100"),
    ("pixels", "knn", {"block_size": 10**12}, "1..4194304"),
    ("pixels", "knn", {"k": list(range(1, 102))}, "at most 100"),
    ("pixels", "low-data-probe", {"max_iter": 10**9}, "1..100000"),
    ("igpt-tiny", "sample-quality", {"batch_size": 10**7}, "1..65536"),
])
def test_the_python_api_refuses_an_option_past_its_range_before_any_work(tmp_path, backbone, task, options,
                                                                          fragment):
    from bench import api
    from bench.errors import BenchError

    with pytest.raises(BenchError, match=fragment):
        api.run(backbone, task, "digits", options=options, results=tmp_path / "res")
    assert not (tmp_path / "res").exists()


def test_a_correlations_bootstrap_that_would_not_fit_in_memory_is_refused_for_its_number_of_checkpoints():
    from bench.errors import BenchError
    from tasks.correlation import MAX_BOOTSTRAP_CELLS, Correlation

    task = Correlation()
    task.check_points(500, task.parse_options({"bootstrap": MAX_BOOTSTRAP_CELLS // 500}))
    with pytest.raises(BenchError, match=f"lower bootstrap to at most {MAX_BOOTSTRAP_CELLS // 501}"):
        task.check_points(501, task.parse_options({"bootstrap": MAX_BOOTSTRAP_CELLS // 500}))


def test_a_correlation_counts_a_checkpoint_named_several_ways_once_and_says_so(bench, tiny_run, tmp_path):
    """A copy, a symlink, ``dir/./step`` and the run folder (its latest checkpoint) are the
    checkpoints already named: the study has three points, not six, and its identity is the same."""
    import shutil

    ckpts = sorted((tiny_run / "checkpoints").iterdir())
    shutil.copytree(ckpts[0], tmp_path / "copy")
    (tmp_path / "link").symlink_to(ckpts[1])
    twice = [tmp_path / "copy", tmp_path / "link", tiny_run / "checkpoints" / "." / ckpts[2].name, tiny_run]
    study = ("-t", "correlation", "-d", "digits", "--limit", "150", "--results", tmp_path / "res", "--dry-run")
    plain = bench("run", "-b", "igpt", *[a for c in ckpts for a in ("--weights", c)], *study)
    r = bench("run", "-b", "igpt", *[a for c in [*ckpts, *twice] for a in ("--weights", c)], *study)
    assert plain.code == 0 and r.code == 0, r
    said = [line for line in r.err.splitlines() if "counted once" in line]
    assert len(said) == 3 and all(str(w) in r.err for w in twice), r.err
    study_line = [line for line in r.out.splitlines() + r.err.splitlines() if "correlation study" in line]
    assert study_line and "3 checkpoints" in study_line[0]
    assert study_line == [line for line in plain.out.splitlines() + plain.err.splitlines()
                          if "correlation study" in line]  # the same study file: the same identity


def test_inception_weights_in_a_folder_are_found_or_the_folder_is_said_to_lack_them(tmp_path):
    from bench.fidelity import INCEPTION_FILE, Extractor

    one = tmp_path / "one"
    one.mkdir()
    (one / "inception.safetensors").write_bytes(b"x")
    assert Extractor.parse(f"inception:{one}").path == str(one / "inception.safetensors")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / INCEPTION_FILE).write_bytes(b"x")
    (cache / "other.pth").write_bytes(b"x")
    assert Extractor.parse(f"inception:{cache}").path == str(cache / INCEPTION_FILE)
    (one / "second.pth").write_bytes(b"x")
    with pytest.raises(ValueError, match="holds 2 weights files .*pass the one to use"):
        Extractor.parse(f"inception:{one}")
    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match="holds no weights file"):
        Extractor.parse(f"inception:{tmp_path / 'none'}")
