"""torchrun coordination in one place: which process this is, joining the launch's process group,
and the few collectives the harness uses (wait for all, sum, rank 0 decides for all).

Extraction, pretraining and fine-tuning all go through these, so a launch behaves the same in
each: outside torchrun every helper is a no-op for a single process (rank 0 of 1).
"""

from __future__ import annotations

import os

from bench.errors import BenchError


def launch() -> tuple[int, int]:
    """(rank, world size) of this process as torchrun set them; (0, 1) outside torchrun."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Whether this process is rank 0, the one that writes shared files and prints results."""
    return launch()[0] == 0


def join_processes(device: str) -> tuple[int, int, str, bool]:
    """Under ``torchrun``: (rank, world size, this process's device, whether this call started the
    process group). The group is started once per process, gloo on CPUs and NCCL on GPUs, where
    each rank takes the GPU of its LOCAL_RANK; collectives time out after $BENCH_DIST_TIMEOUT_MIN
    minutes (default 720). Outside torchrun: (0, 1, device, False)."""
    rank, world = launch()
    if world == 1:
        return 0, 1, device, False
    import torch
    import torch.distributed as dist

    started = False
    if not dist.is_initialized():
        # Ranks wait in collectives while rank 0 waits for another process's lock or writes a
        # large file: far longer than torch's default timeout (10 min NCCL, 30 min gloo) allows.
        from datetime import timedelta

        minutes = float(os.environ.get("BENCH_DIST_TIMEOUT_MIN", "720"))
        dist.init_process_group("nccl" if str(device).startswith("cuda") else "gloo",
                                timeout=timedelta(minutes=minutes))
        started = True
    if str(device).startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    return rank, world, device, started


def leave(started: bool) -> None:
    """End the process group where ``join_processes`` started it (``started``)."""
    if started:
        import torch.distributed as dist

        dist.destroy_process_group()


def barrier(world: int) -> None:
    """Wait until every one of the ``world`` processes gets here (nothing to wait for alone)."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def all_reduce(tensor, world: int) -> None:
    """Sum ``tensor`` over the ``world`` processes, in place (unchanged alone)."""
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(tensor)


class Group:
    """The processes of a torchrun launch as a shared writer sees them: rank 0 decides and tells
    the others, and a user error on any rank ends every rank with the same one line (no rank is left
    waiting in a collective for one that gave up)."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world

    def share(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def decide(self, fn):
        """``fn()`` on rank 0, its result (or its BenchError) on every rank."""
        if self.world == 1:
            return fn()
        out = ("error", None)
        if self.rank == 0:
            try:
                out = ("ok", fn())
            except BenchError as e:
                self.share(("error", str(e)))
                raise
        kind, value = self.share(out)
        if kind == "error":
            raise BenchError(value)
        return value

    def each(self, fn, on_error=lambda kinds: None):
        """``fn()`` on every rank; if it raised a BenchError anywhere, every rank raises it (rank 0,
        first, runs ``on_error`` with the names of the error classes)."""
        if self.world == 1:
            try:
                return fn()
            except BenchError as e:
                on_error({type(e).__name__})
                raise
        import torch.distributed as dist

        result, err = None, None
        try:
            result = fn()
        except BenchError as e:
            err = e
        errors = [None] * self.world
        dist.all_gather_object(errors, (type(err).__name__, str(err)) if err else None)
        found = [e for e in errors if e]
        if found:
            if self.rank == 0:
                on_error({kind for kind, _ in found})
            if err is not None:
                raise err
            raise BenchError(found[0][1])
        return result
