"""The Python API keeps the CLI's contract, records the reports read are checked field by field,
timm models refuse an input size they cannot take, and a lock's stamp is only informational.

Every mistake a user can make, through either door, is one ``BenchError`` (one line, exit 2)
before any work; never a TypeError, an OverflowError or a traceback from deep inside."""

import copy
import errno
import json
import math
import os
import re
import threading
import time
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import api
from bench.errors import BenchError
from tests.conftest import assert_user_error

# -- the Python API: the CLI's checks for Python values ---------------------------------------------

RUN = {"backbone": "pixels", "task": "knn", "dataset": "digits", "limit": 100, "results": "res"}


@pytest.mark.parametrize("change, message", [
    ({"backbone": 123}, "--backbone takes a name or a list of names (text), got 123"),
    ({"task": ["knn", 5]}, "--task takes a name or a list of names"),
    ({"dataset": None}, "--dataset takes a name"),
    ({"weights": 5}, "--weights takes a path, a glob or a list of them, got 5"),
    ({"batch_size": 0}, "--batch-size must be an integer in 1..65536, got 0"),
    ({"batch_size": 65537}, "--batch-size must be an integer in 1..65536"),
    ({"batch_size": True}, "--batch-size must be an integer in 1..65536, got True"),
    ({"batch_size": 2.0}, "--batch-size must be an integer in 1..65536, got 2.0"),
    ({"layers": 123}, "--layers takes 'all', comma-separated layer names or a list of names, got 123"),
    ({"layers": ["pixels", None]}, "--layers takes"),
    ({"results": 5}, "--results takes a path (str or pathlib.Path), got 5"),
    ({"cache": 5}, "--cache takes a path"),
    ({"data_root": 5}, "--data-root takes a path"),
    ({"limit": 0}, "--limit must be a positive integer, got 0"),
    ({"limit": 1.5}, "--limit must be a positive integer, got 1.5"),
    ({"limit": True}, "--limit must be a positive integer, got True"),
    ({"image_size": 0}, "--image-size must be an integer in 1..1024, got 0"),
    ({"image_size": "32"}, "--image-size must be an integer in 1..1024, got '32'"),
    ({"tag": 5}, "--tag takes text"),
    ({"device": 5}, "--device must be auto, cpu or cuda[:N], got 5"),
    ({"precision": "fp16"}, "precision 'fp16' is not one of auto, fp32, bf16"),
    ({"log": "print"}, "log takes a function of one message"),
    ({"options": 5}, "options takes {key: value} or a list of 'key=value' texts"),
    ({"options": {"k": 5.5}}, "task option k='5.5' is invalid"),
    ({"options": {"k": b"5"}}, "task option k=\"b'5'\" is not a value it takes"),
    ({"options": {"k": {"a": 1}}}, "task option k="),
    ({"seed": -1}, "--seed -1 is not a seed"),
    ({"threads": 0}, "threads must be a whole number of CPU threads"),
])
def test_api_run_refuses_what_the_cli_refuses_with_one_bench_error_before_any_work(tmp_path, change, message):
    with pytest.raises(BenchError) as e:
        api.run(**{**RUN, **change})
    assert message in str(e.value)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "res").exists() and not (tmp_path / "cache").exists()  # nothing done, nothing written


@pytest.mark.parametrize("change, message", [
    ({"backbone": ["pixels"]}, "--backbone takes a name (text)"),
    ({"split": 5}, "--split takes a name (text), got 5"),
    ({"weights": ["a", "b"]}, "--weights takes a path"),
    ({"batch_size": 0}, "--batch-size must be an integer in 1..65536, got 0"),
    ({"seed": True}, "--seed must be an integer in 0..4294967295, got True"),
    ({"out": 5}, "--out takes a path"),
    ({"layers": 7}, "--layers takes"),
])
def test_api_extract_refuses_what_the_cli_refuses(tmp_path, change, message):
    with pytest.raises(BenchError, match="^" + re.escape(message)):
        api.extract(**{"backbone": "pixels", "dataset": "digits", "split": "test", "limit": 20, **change})


@pytest.mark.parametrize("call", [
    lambda: api.report(5), lambda: api.report(["bench-results", 5]), lambda: api.compare(5, 6),
    lambda: api.paired(5), lambda: api.per_class(None),
])
def test_api_reports_refuse_what_is_no_path(call):
    with pytest.raises(BenchError, match=r"name results files or folders \(str or pathlib.Path\), got"):
        call()


@pytest.mark.parametrize("value, text", [
    (5, "5"), ([5], "5"), ((5, 20), "5,20"), (np.int64(7), "7"), (np.array([5, 20]), "5,20"), ("5,20", "5,20"),
])
def test_knn_k_as_a_python_value_parses_as_the_cli_text_that_means_the_same(value, text):
    from tasks.knn import KNN

    assert KNN().parse_options({"k": value}) == KNN().parse_options([f"k={text}"])


@pytest.mark.parametrize("task, key, value, text", [
    ("linear-probe", "l2_grid", 0.1, "0.1"), ("linear-probe", "l2_grid", [1, 0.01], "1,0.01"),
    ("linear-probe", "max_iter", 500, "500"), ("linear-probe", "concat", 5, "best5"),
    ("low-data-probe", "shots", 5, "5"), ("low-data-probe", "shots", ["paper", 2], "paper,2"),
    ("knn", "temperature", 0.5, "0.5"),
])
def test_task_options_as_python_values_parse_as_their_cli_text(task, key, value, text):
    from bench.registry import TASKS

    t = TASKS.get(task)()
    assert t.parse_options({key: value}) == t.parse_options([f"{key}={text}"])


@pytest.mark.parametrize("task, key, value", [
    ("linear-probe", "l2_grid", ["a"]), ("linear-probe", "l2_grid", [None]), ("linear-probe", "max_iter", 500.0),
    ("linear-probe", "max_iter", [500]), ("low-data-probe", "shots", "five"), ("knn", "k", True),
    ("knn", "k", None), ("knn", "temperature", [0.5]),
])
def test_a_python_value_an_option_does_not_take_is_a_bench_error_naming_it(task, key, value):
    from bench.registry import TASKS

    with pytest.raises(BenchError, match=f"^task option {key}="):
        TASKS.get(task)().parse_options({key: value})


def test_api_options_as_python_values_give_the_run_the_cli_text_gives(bench, tmp_path):
    """The same identity, so the same results file: {"k": 5} is ``-o k=5``, {"l2_grid": 0.1} ``-o l2_grid=0.1``."""
    for task, options, text in [("knn", {"k": 5}, "k=5"), ("linear-probe", {"l2_grid": 0.1}, "l2_grid=0.1")]:
        plan = api.run("pixels", task, "digits", limit=100, results="res", options=options, dry_run=True)
        r = bench("-q", "run", "-b", "pixels", "-t", task, "-d", "digits", "--limit", "100", "-o", text,
                  "--results", "res", "--dry-run")
        assert r.code == 0, r
        assert list(plan.plan) == ["run"] and f": {plan.path[0]}\n" in r.out, (plan.path[0], r.out)


def test_api_run_takes_numpy_integers_and_a_one_item_list_option_on_real_data(tmp_path):
    df = api.run("pixels", "knn", "digits", limit=np.int64(100), batch_size=np.int32(64), options={"k": 5},
                 results="res")
    chosen = df[(df.metric == "k") & (df.split == "val")].value
    assert list(chosen) == [5]
    assert df[df.metric == "top1"].value.between(50, 100).all()  # 8x8 digits by their pixels: well above chance


# -- the registry's scan from several threads --------------------------------------------------------


def _slow_entry_points(monkeypatch, delay=0.3):
    """Entry points that take a while to list: the window in which a second thread meets the scan."""
    import bench.registry as registry

    real = registry.entry_points

    def slow(**kw):
        time.sleep(delay)
        return real(**kw)

    monkeypatch.setattr(registry, "entry_points", slow)


def test_a_fresh_registry_scanned_from_many_threads_at_once_finds_its_names_in_each(monkeypatch):
    from bench.registry import Registry

    _slow_entry_points(monkeypatch)
    reg = Registry("backbone", "bench.backbones")
    start, got, errors = threading.Barrier(6), [], []

    def resolve():
        start.wait()
        try:
            got.append(reg.get("pixels"))
        except BenchError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=resolve) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(got) == 6 and len({id(obj) for obj in got}) == 1 and got[0].__name__ == "PixelsBackbone"


def test_a_scan_that_fails_fails_again_rather_than_leaving_an_empty_registry(monkeypatch):
    import bench.registry as registry

    twice = [EntryPoint("w", "mod_a:W", "bench.widgets"), EntryPoint("w", "mod_b:W", "bench.widgets")]
    monkeypatch.setattr(registry, "entry_points", lambda **kw: twice)
    reg = registry.Registry("widget", "bench.widgets")
    for _ in range(2):
        with pytest.raises(BenchError, match="widget name 'w' is registered twice"):
            reg.get("w")


def test_api_run_from_two_threads_on_first_use_plans_both(monkeypatch, tmp_path):
    from bench.registry import BACKBONES, DATASETS, TASKS

    for reg in (BACKBONES, TASKS, DATASETS):  # as in a fresh interpreter: nothing scanned yet
        monkeypatch.setattr(reg, "_entries", {})
        monkeypatch.setattr(reg, "_scanned", False)
    _slow_entry_points(monkeypatch, delay=0.1)
    start, plans, errors = threading.Barrier(2), [], []

    def plan(task):
        start.wait()
        try:
            plans.append(api.run("pixels", task, "digits", limit=50, results="res", dry_run=True))
        except BenchError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=plan, args=(task,)) for task in ("knn", "linear-probe")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(p.plan[0] for p in plans) == ["run", "run"]


# -- timm models and the input sizes they can take -------------------------------------------------


def test_convnext_at_3_pixels_is_one_line_naming_the_smallest_size_before_any_work(bench, tmp_path):
    r = bench("-q", "run", "-b", "convnext_atto", "--image-size", "3", "-t", "knn", "-d", "digits", "--limit", "50",
              "--results", "res")
    assert_user_error(r, "'convnext_atto'", "at least 32×32", "not 3×3", "--image-size 32")
    assert not list(tmp_path.rglob("*.json")) and not list(tmp_path.rglob("*.h5"))


def test_a_vit_at_8_pixels_is_one_line_naming_the_size_it_takes(bench, tmp_path):
    r = bench("-q", "run", "-b", "vit_tiny_patch16_224", "--image-size", "8", "-t", "knn", "-d", "digits",
              "--limit", "50", "--results", "res", "--dry-run")
    assert r.code == 2 and "refuse" in r.out and "takes 224×224 images only, not 8×8; pass --image-size 224" in r.out


def test_the_size_named_is_the_smallest_a_blank_forward_goes_through():
    """The reference: a plain forward of convnext_atto fails at 31 pixels and runs at 32."""
    import timm
    import torch

    from backbones.timm_models import check_input_size

    model = timm.create_model("convnext_atto", in_chans=1).eval()
    with torch.no_grad():
        model(torch.zeros(1, 1, 32, 32))
        with pytest.raises(RuntimeError):
            model(torch.zeros(1, 1, 31, 31))
    check_input_size(model, "convnext_atto", 1, 32, None)
    with pytest.raises(BenchError, match=r"at least 32×32 .*not 31×31; pass --image-size 32 or more$"):
        check_input_size(model, "convnext_atto", 1, 31, None)


def test_the_size_check_moves_no_weight_so_fingerprints_stay(monkeypatch):
    """The blank forward runs in eval mode: batch-norm statistics (part of the fingerprint) stay put."""
    import backbones.timm_models as timm_models
    from backbones.base import BackboneOptions, DataSpec

    spec = DataSpec.of(np.zeros((2, 8, 8, 1), np.uint8))
    checked = timm_models.TimmBackbone.create("resnet18", spec, BackboneOptions(seed=3)).fingerprint
    monkeypatch.setattr(timm_models, "check_input_size", lambda *a: None)
    assert timm_models.TimmBackbone.create("resnet18", spec, BackboneOptions(seed=3)).fingerprint == checked


def test_a_vit_without_an_image_size_takes_the_one_it_was_built_for():
    from backbones.base import BackboneOptions, DataSpec
    from backbones.timm_models import TimmBackbone

    backbone = TimmBackbone.create("vit_tiny_patch16_224", DataSpec.of(np.zeros((2, 8, 8, 1), np.uint8)),
                                   BackboneOptions())
    assert backbone.image_size == 224


# -- records the reports read -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def knn_results(tmp_path_factory):
    """A real results file: pixels · knn · digits (its records: top1 per split, the chosen k)."""
    root = tmp_path_factory.mktemp("knn")
    df = api.run("pixels", "knn", "digits", limit=100, results=root / "res", cache=root / "cache")
    return json.loads(Path(df.file.iloc[0]).read_text())


def _write(doc, records, path="x.json") -> Path:
    doc = copy.deepcopy(doc)
    doc["records"] = records
    Path(path).write_text(json.dumps(doc))
    return Path(path)


@pytest.mark.parametrize("field, value, what", [
    ("step", 10**30, "a whole number in 0..9223372036854775807"),
    ("step", -1, "a whole number"),
    ("shots", "five", "a count in 1..9223372036854775807"),
    ("shots", 0, "a count"),
    ("shots", 2.5, "a count"),
    ("seed", "x", "a whole number"),
    ("limit", 10**30, "a count"),
    ("epoch", 1.5, "a whole number"),
    ("n", -1, "a whole number"),
    ("layer_index", 2**63, "a whole number"),
    ("seeds", "x", "a count"),
    ("value", 1e308, "a number within ±1e+150"),
    ("value", 10**200, "a number within ±1e+150"),
    ("stderr", "x", "a number"),
    ("std", [1], "a number"),
    ("curve", "x", "true or false"),
    ("study", 5, "text"),
])
def test_a_record_field_out_of_its_type_or_range_is_one_line_naming_file_record_and_field(
        bench, knn_results, field, value, what):
    records = copy.deepcopy(knn_results["records"])
    records[1][field] = value
    path = _write(knn_results, records)
    for args in (["report", path], ["report", "--summary", path], ["report", "."]):
        r = bench(*args)
        assert_user_error(r, str(path), "record 1", f"has {field} = ", f"which is not {what}")


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 10**30, 4.5, -1])
def test_a_counting_metric_must_be_a_whole_number(bench, knn_results, value):
    records = copy.deepcopy(knn_results["records"])
    i = next(i for i, r in enumerate(records) if r["metric"] == "k")
    records[i]["value"] = value
    assert_user_error(bench("report", _write(knn_results, records)), f"record {i}", "has k = ", "not a whole number")


@pytest.mark.parametrize("value", [float("inf"), float("nan"), None])
def test_a_top1_must_be_finite_since_layers_are_chosen_by_it(bench, knn_results, value):
    records = copy.deepcopy(knn_results["records"])
    i = next(i for i, r in enumerate(records) if r["metric"] == "top1" and r["split"] == "val")
    records[i]["value"] = value
    assert_user_error(bench("report", _write(knn_results, records)), f"record {i} has top1 = ", "not a finite")


def test_a_measured_nan_or_infinity_is_still_read_and_shown(bench, knn_results):
    """A diverged loss is a measurement: non-finite values of other metrics stay readable."""
    records = copy.deepcopy(knn_results["records"])
    tops = [r for r in records if r["metric"] == "top1"]
    tops[0]["stderr"], tops[1]["stderr"] = float("nan"), float("inf")
    records += [dict(tops[0], split="train", metric=m, value=v, stderr=None)
                for m, v in (("loss", float("nan")), ("gen_loss", float("inf")))]
    path = _write(knn_results, records)
    for args in (["report", path], ["report", "--long", "--best", path], ["report", "--format", "md", path]):
        r = bench(*args)
        assert r.code == 0, r


def test_a_record_nested_deeper_than_json_reads_is_one_line_naming_the_file(bench, knn_results):
    text = json.dumps(knn_results).replace('"records": [{', '"records": [{"deep": ' + "[" * 100_000 + "]" * 100_000
                                           + ", ", 1)
    Path("deep.json").write_text(text)
    assert_user_error(bench("report", "deep.json"), "deep.json", "nested too deeply")
    assert_user_error(bench("report", "."), "deep.json", "nested too deeply")


def test_a_fake_study_is_refused_by_name(bench, knn_results):
    """Records marked as a study's but without what a study's tables need."""
    records = copy.deepcopy(knn_results["records"])
    no_kind = [dict(r, study="correlation") for r in records]
    assert_user_error(bench("report", _write(knn_results, no_kind)), "record 0 is a study record without its kind")
    no_point = [dict(r, study="correlation", kind="best") for r in records]
    assert_user_error(bench("report", _write(knn_results, no_point)),
                      "record 0 is a study record (best) without its point, size, depth")
    quality_only = [dict(r, study="correlation", kind="quality", point="a@step1", size="igpt 2x32") for r in records]
    assert_user_error(bench("report", _write(knn_results, quality_only)),
                      "its study's checkpoint 'a@step1' lacks its best layer's val and test records")


def test_the_committed_study_passes_the_record_checks():
    from bench.records import read_results
    from tests.conftest import ROOT

    studies = sorted((ROOT / "results").rglob("study__*.json"))
    assert studies
    for path in studies:
        assert read_results(path)


FIELDS = ["step", "shots", "seed", "limit", "epoch", "n", "layer_index", "value", "stderr", "std", "seeds", "labels",
          "curve", "layer", "metric", "split", "study", "kind", "depth", "point"]
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(max_size=8), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2),
                                                                                            st.integers(), max_size=1))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), value=VALUES, everywhere=st.booleans())
def test_fuzzed_record_fields_report_or_fail_as_user_errors(bench, knn_results, tmp_path, field, value, everywhere):
    """Any value in any field the tables and plots read: a report or a one-line user error."""
    records = copy.deepcopy(knn_results["records"])
    for r in records if everywhere else records[:1]:
        r[field] = value
    path = _write(knn_results, records, tmp_path / "fuzz.json")
    for args in (["report", path], ["report", "--long", "--best", "--format", "csv", path]):
        r = bench(*args)
        assert r.code in (0, 2), (field, value, r)
        if r.code == 2:
            assert_user_error(r)


# -- the lock's stamp ---------------------------------------------------------------------------------


def _full_disk(monkeypatch):
    def enospc(*a):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", enospc)
    monkeypatch.setattr(os, "ftruncate", enospc)


def test_a_stamp_that_cannot_be_written_leaves_the_lock_held_and_the_holder_unnamed(monkeypatch, tmp_path):
    from bench.lock import exclusive, held, holder, lock_path

    _full_disk(monkeypatch)
    target = tmp_path / "r.json"
    with exclusive(target, "writing"):
        assert held(target)
        assert holder(target) == "another process"
    assert not held(target) and not lock_path(target).exists()


def test_a_run_into_a_results_folder_on_a_full_filesystem_still_runs_when_only_the_stamp_fails(
        bench, monkeypatch, tmp_path):
    _full_disk(monkeypatch)
    r = bench("-q", "run", "-b", "pixels", "-t", "knn", "-d", "digits", "--limit", "100", "--results", "res")
    assert r.code == 0, r
    written = list((tmp_path / "res").glob("*.json"))
    assert len(written) == 1 and math.isfinite(json.loads(written[0].read_text())["records"][0]["value"])
