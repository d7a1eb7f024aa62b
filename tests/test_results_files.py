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
