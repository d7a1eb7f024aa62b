"""The training helper the three loops share (bench/training.py): its schedule is the one
pretraining and fine-tuning always used, float for float; its parameter groups decay matrices only;
a run folder written with other settings is refused naming the file and the settings."""

import json
import math

import pytest
import torch

from bench.errors import BenchError
from bench.training import SKIP, adamw, as_is, check_settings, ddp, lr_factor, prefetched, whole_folders, write_whole


def _finetune_factor(step, warmup, total):  # the fine-tuning schedule as it was written before the helper
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _pretrain_factor(step, warmup, steps, min_lr_ratio):  # the pretraining schedule as it was written
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@pytest.mark.parametrize("warmup,total", [(0, 1), (0, 37), (3, 10), (10, 10), (25, 1000), (7, 5)])
def test_the_schedule_is_the_old_fine_tuning_and_pretraining_schedules_bit_for_bit(warmup, total):
    for step in range(total + 3):
        assert lr_factor(step, warmup, total) == _finetune_factor(step, warmup, total)
        for floor in (0.0, 0.1, 0.25, 1 / 3):
            assert lr_factor(step, warmup, total, floor) == _pretrain_factor(step, warmup, total, floor)


def test_the_schedule_warms_up_linearly_then_decays_to_its_floor():
    assert [lr_factor(s, 4, 20) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 4, 20) == 1.0
    assert lr_factor(20, 4, 20, 0.1) == pytest.approx(0.1) and lr_factor(99, 4, 20, 0.1) == pytest.approx(0.1)


def test_weight_decay_falls_on_matrices_and_kernels_only_and_frozen_parameters_are_left_out():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                              torch.nn.Linear(4, 2))
    net[3].bias.requires_grad_(False)
    opt = adamw(net, 1e-3, 0.05, betas=(0.9, 0.95))
    decay, rest = opt.param_groups
    assert decay["weight_decay"] == 0.05 and rest["weight_decay"] == 0.0 and decay["betas"] == (0.9, 0.95)
    assert [p.shape for p in decay["params"]] == [net[0].weight.shape, net[3].weight.shape]
    assert {id(p) for p in rest["params"]} == {id(net[0].bias), id(net[1].weight), id(net[1].bias)}


def test_one_process_trains_the_module_itself():
    net = torch.nn.Linear(2, 2)
    assert ddp(net, 1) is net


def test_a_folder_with_other_settings_is_refused_naming_the_file_and_the_settings(tmp_path):
    want = {"lr": 0.1, "seed": 0}
    (tmp_path / "run.json").write_text(json.dumps(want))
    check_settings([(tmp_path / "run.json", want, as_is, False), (tmp_path / "absent.json", want, as_is, False)],
                   "a run", "choose another --out")
    (tmp_path / "run.json").write_text(json.dumps({"lr": 0.2, "seed": 0}))
    with pytest.raises(BenchError, match=r"run.json was written by a run with other settings \(lr\); choose another"):
        check_settings([(tmp_path / "run.json", want, as_is, False)], "a run", "choose another --out")
    check_settings([(tmp_path / "run.json", want, lambda doc: SKIP, False)], "a run", "x")  # nothing to compare


def test_a_damaged_or_missing_settings_file_is_refused_with_what_to_do(tmp_path):
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(BenchError, match="run.json is damaged .*; delete it"):
        check_settings([(tmp_path / "run.json", {}, as_is, False)], "a run", "delete it")
    with pytest.raises(BenchError, match="holds no settings"):
        check_settings([(tmp_path / "ckpt" / "settings.json", {}, as_is, True)], "a run", "delete it")


def test_a_checkpoint_folder_appears_whole_and_replaces_the_earlier_ones(tmp_path):
    write_whole(tmp_path / "epoch-0001", lambda tmp: (tmp / "a").write_text("1"), "epoch-*")
    (tmp_path / "epoch-0003.tmp").mkdir()  # a write that was killed

    def fail(tmp):
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_whole(tmp_path / "epoch-0002", fail, "epoch-*")
    assert [p.name for p in whole_folders(tmp_path, "epoch-*")] == ["epoch-0001"]
    write_whole(tmp_path / "epoch-0002", lambda tmp: (tmp / "a").write_text("2"), "epoch-*")
    assert [p.name for p in whole_folders(tmp_path, "epoch-*")] == ["epoch-0002"]
    assert (tmp_path / "epoch-0002" / "a").read_text() == "2"


def test_prefetched_items_come_in_order_and_an_error_reaches_the_consumer():
    assert list(prefetched(iter(range(10)), depth=2)) == list(range(10))

    def broken():
        yield 1
        raise ValueError("bad batch")

    with pytest.raises(ValueError, match="bad batch"):
        list(prefetched(broken(), depth=2))
