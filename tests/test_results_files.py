"""Results files are recognised by parsing them, never by sniffing their first bytes: key order is
any JSON tool's to change, versions this code does not know are refused, special files are skipped."""

import json
import os

import pytest

from bench import api
from bench.errors import BenchError
from bench.records import RESULTS_FORMAT, write_results
from tests.conftest import assert_user_error, bench_subprocess


def _record(run, value):
    return {"backbone": "pixels", "run": run, "dataset": "digits", "task": "linear-probe", "layer": "pixels",
            "layer_index": 0, "split": "test", "metric": "top1", "value": value, "seed": 0}


@pytest.fixture
def folder(tmp_path):
    res = tmp_path / "res"
    write_results(res / "a.json", {}, [_record("a", 90.0)])
    write_results(res / "b.json", {}, [_record("b", 91.0)])
    (res / "settings.json").write_text(json.dumps({"lr": 0.1, "note": "not results"}))
    return res


def test_a_results_file_with_its_keys_reordered_is_still_read(folder):
    doc = json.loads((folder / "b.json").read_text())
    reordered = {"records": doc["records"], "run": doc["run"], "version": doc["version"], "format": doc["format"]}
    (folder / "b.json").write_text(json.dumps(reordered, indent=1) + "\n" + " " * 300)
    df = api.report(folder)
    assert sorted(df.run.unique()) == ["a", "b"]


def test_a_results_file_of_an_unknown_version_is_refused_naming_it(folder, bench):
    doc = json.loads((folder / "b.json").read_text())
    doc["version"] = 99
    (folder / "b.json").write_text(json.dumps(doc))
    with pytest.raises(BenchError, match="b.json is a results file of version 99"):
        api.report(folder)
    assert_user_error(bench("report", folder), "version 99", "upgrade igpt-bench")


def test_a_damaged_results_file_in_a_folder_is_an_error_not_left_out(folder, bench):
    (folder / "b.json").write_text('{"format": "' + RESULTS_FORMAT + '", "records": [')
    assert_user_error(bench("report", folder), "b.json", "not valid JSON")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_named_json_in_a_results_folder_is_skipped(folder):
    os.mkfifo(folder / "pipe.json")
    r = bench_subprocess("report", folder, "--long", "--format", "csv", timeout=120)
    assert r.code == 0, r
    assert r.out.count("\npixels,") == 2


def test_a_results_file_without_records_says_so(folder, bench):
    write_results(folder / "empty.json", {}, [])
    assert_user_error(bench("report", folder), "empty.json holds no records")


# -- study files: read whole, or refused naming the file -----------------------------------------


def _write_study(path, records):
    write_results(path, {}, records)
    return path


def test_a_whole_study_file_is_read_and_tabulated(tmp_path, bench):
    from tests.test_bad_inputs import study_records

    study = _write_study(tmp_path / "study.json", study_records())
    assert api.report(study).study.eq("correlation").all()
    r = bench("report", study, "--format", "md")
    assert r.code == 0, r
    assert "4 checkpoints: checkpoints" in r.out and "against best-layer test top-1" in r.out


@pytest.mark.parametrize("kind, field", [
    ("layer", "point"), ("layer", "depth"), ("best", "point"), ("best", "size"), ("quality", "point"),
    ("stat", "quality"), ("stat", "n"), ("stat", "lo"), ("separation", "quality"), ("separation", "gap"),
    ("separation", "gap_share"), ("separation", "separable"), ("separation", "value"), ("stat", "kind"),
    ("best", "metric")])
def test_a_study_file_missing_a_field_its_tables_need_is_refused_naming_the_file(tmp_path, bench, kind, field):
    from tests.test_bad_inputs import study_records

    records = [{k: v for k, v in r.items() if not (r["kind"] == kind and k == field)} for r in study_records()]
    study = _write_study(tmp_path / "study.json", records)
    with pytest.raises(BenchError, match="study.json"):
        api.report(study)
    assert_user_error(bench("report", study, "--summary"), "study.json", field)


@pytest.mark.parametrize("name, keep, fragment", [
    ("statistics only", lambda r: r["kind"] in ("stat", "separation"), "holds 0 checkpoints"),
    ("checkpoints only", lambda r: r["kind"] in ("layer", "best", "quality"), "holds no statistics"),
    ("two checkpoints", lambda r: r.get("point") not in ("tiny@step1", "tiny@step2"), "holds 2 checkpoints"),
    ("a checkpoint without its best layer", lambda r: not (r["kind"] == "best" and r["point"] == "tiny@step2"),
     "'tiny@step2' lacks its best layer"),
])
def test_a_fake_study_lacking_its_parts_is_refused_naming_the_file(tmp_path, bench, name, keep, fragment):
    from tests.test_bad_inputs import GOOD, study_records

    study = _write_study(tmp_path / "fake.json", [r for r in study_records() if keep(r)])
    assert_user_error(bench("report", study), "fake.json", fragment)
    other = tmp_path / "plain.json"
    write_results(other, {}, [dict(GOOD, run="plain")])
    assert_user_error(bench("compare", study, other), "fake.json", fragment)


def test_a_study_file_mixed_with_a_runs_records_or_edited_past_its_ranges_is_refused(tmp_path, bench):
    from tests.test_bad_inputs import study_records

    records = study_records()
    plain = dict(records[0], run=records[0]["run"])
    plain.pop("study")
    edits = {
        "mixed": ([*records, plain], "mixes a study's records with a run's"),
        "depth": ([dict(r, depth=7.0) if r["kind"] == "best" else r for r in records], "depth = 7"),
        "backwards": ([dict(r, lo=0.9, hi=-0.9) if r["kind"] == "stat" else r for r in records], "runs backwards"),
        "method": ([dict(r, metric="kendall") if r["kind"] == "stat" else r for r in records], "'kendall'"),
        "scope": ([dict(r, scope="elsewhere") if r["kind"] == "stat" else r for r in records], "'elsewhere'"),
        "better": ([dict(r, better="sideways") if r["kind"] == "quality" else r for r in records], "'sideways'"),
        "two best layers": ([*records, *[dict(r, layer="h9") for r in records if r["kind"] == "best"][:2]],
                            "has 4 best-layer records"),
        "records twice": ([*records, *records], "measures what record 0 does"),
    }
    for name, (edited, fragment) in edits.items():
        study = _write_study(tmp_path / f"{name.replace(' ', '-')}.json", edited)
        assert_user_error(bench("report", study), study.name, fragment)


def test_one_run_in_two_files_of_a_folder_is_refused_not_pooled_as_two_seeds(folder, bench):
    (folder / "backup").mkdir()
    (folder / "backup" / "b.json").write_bytes((folder / "b.json").read_bytes())
    with pytest.raises(BenchError, match="hold the same run"):
        api.report(folder)
    assert_user_error(bench("report", folder, "--summary"), "b.json", "hold the same run (b)", "pass each run once")


def test_a_metric_measured_as_nan_in_every_row_does_not_break_the_summary(tmp_path, bench):
    """A diverged loss is a measurement; the summary's column of it is empty (and left out)."""
    write_results(tmp_path / "c.json", {}, [_record("c", 92.0), dict(_record("c", float("nan")), metric="loss",
                                                                      split="train")])
    r = bench("report", tmp_path / "c.json", "--summary", "--format", "csv")
    assert r.code == 0, r
    assert "test top1" in r.out and "92.0" in r.out
