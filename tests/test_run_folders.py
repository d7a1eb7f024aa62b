"""Pretraining run folders cannot be mixed: one writer at a time, and a folder's settings are
checked against run.json and every checkpoint's own settings before anything resumes."""

import json

from bench.lock import exclusive
from tests.conftest import assert_user_error

ARGS = ("pretrain", "-b", "igpt-tiny", "-d", "digits", "--limit", "100", "--steps", "4", "--batch-size", "8",
        "--warmup", "1", "--save-at", "2")


def test_a_second_pretraining_into_a_busy_folder_is_refused(bench, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with exclusive(out / "run.json", "pretraining into"):  # another process's run, as the lock sees it
        r = bench(*ARGS, "--out", out)
    assert_user_error(r, "is being trained by", "choose another --out")
    assert not (out / "run.json").exists() and not (out / "checkpoints").exists()


def test_settings_are_checked_against_every_checkpoint_when_run_json_is_gone(bench, tmp_path):
    out = tmp_path / "run"
    assert bench("-q", *ARGS, "--out", out).code == 0
    saved = json.loads((out / "checkpoints" / "step-0000002" / "igpt.json").read_text())["train"]
    assert saved["lr"] == 3e-3
    (out / "run.json").unlink()
    r = bench(*ARGS, "--lr", "1e-3", "--out", out)
    assert_user_error(r, "step-0000002", "other settings (lr)", "choose another --out")
    r = bench("-q", *ARGS, "--out", out)  # the same settings: finds the run finished
    assert r.code == 0, r
    assert len((out / "log.jsonl").read_text().splitlines()) == 2


def test_a_damaged_run_json_is_one_line(bench, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("[1, 2")
    assert_user_error(bench(*ARGS, "--out", out), "run.json is damaged")
    (out / "run.json").write_text("[1, 2]")
    assert_user_error(bench(*ARGS, "--out", out), "run.json is damaged")
