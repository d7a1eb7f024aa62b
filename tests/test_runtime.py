"""Runtime helpers: the glibc allocator setting that keeps large freed blocks for the next batch."""

import subprocess
import sys
import textwrap

import pytest

from bench.runtime import keep_freed_memory

PROBE = textwrap.dedent("""
    import resource, sys
    import torch
    from bench.runtime import keep_freed_memory
    from backbones.igpt.model import IGPTConfig, ImageGPT
    applied = keep_freed_memory() if sys.argv[1] == "on" else False
    model = ImageGPT(IGPTConfig(n_colors=16, n_positions=196, n_embd=256, n_layer=2, n_head=8)).eval()
    x = torch.randint(0, 17, (128, 196))
    with torch.inference_mode():
        model.forward_intermediates(x)  # the first batch faults its pages in either way
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(3):
            model.forward_intermediates(x)
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_later_batches_reuse_freed_pages_instead_of_faulting_them_in():
    def later_batch_faults(mode):
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        applied, faults = out.stdout.split()
        return applied == "True", int(faults)

    applied, faults_on = later_batch_faults("on")
    _, faults_off = later_batch_faults("off")
    assert applied
    # glibc's default returns the batch's freed activations to the kernel and faults them in again
    # on the next batch; with the setting the later batches reuse the pages of the first.
    assert faults_on * 4 < faults_off, (faults_on, faults_off)


def test_user_settings_win(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert keep_freed_memory() is False


def test_a_job_bar_opened_under_a_sweep_bar_joins_its_display(monkeypatch):
    """rich shows one live display at a time: the inner bar must become a line of the outer one."""
    import sys

    from bench import runtime

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    with runtime.progress_bar("sweep", 2) as outer:
        for _ in range(2):
            with runtime.progress_bar("job", 3) as inner:
                inner.advance(3)
                assert inner._p is outer._p is runtime._live
                assert len(runtime._live.tasks) == 2
            outer.advance(1)
        assert len(runtime._live.tasks) == 1  # the finished jobs' lines are gone
    assert runtime._live is None
