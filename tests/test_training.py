"""What the three training loops share: the metrics log (JSONL + TensorBoard) and the resume check."""

import json
import time

import pytest

from neurofm.errors import NeuroFMError
from neurofm.training import MetricsLog, changed_settings, check_resume_settings
from neurofm.training.metrics import scalars


def test_metrics_log_is_cut_back_to_the_resumed_step(tmp_path):
    path = tmp_path / "train_log.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo')
    log = MetricsLog(path, resumed_step=3)  # checkpointed at 3, killed at 6 mid-line
    log.write({"step": 4, "loss": 0.0})
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]
    MetricsLog(path, resumed_step=4, enabled=False).write({"step": 5})  # another rank: touches nothing
    assert len(path.read_text().splitlines()) == 4


def tensorboard_steps(folder, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return [(e.step, round(e.value, 6)) for e in events.Scalars(tag)]


def test_tensorboard_scalars_are_purged_past_the_resumed_step(tmp_path):
    board = tmp_path / "tb"
    with MetricsLog(tmp_path / "log.jsonl", tensorboard=board) as log:
        for step in range(1, 6):
            log.write({"step": step, "loss": 1.0 / step, "accuracy": [0.1 * step, 0.2], "note": "text"})
    # TensorBoard reads a folder's event files in name order: the creation second, then a per-process
    # counter that sorts "10" before "9"; a resumed run is a new process in a later second, so start one
    time.sleep(1.01 - time.time() % 1.0)
    # resumed from a step-3 checkpoint: steps 4 and 5 are written again, with other values
    with MetricsLog(tmp_path / "log.jsonl", resumed_step=3, tensorboard=board) as log:
        for step in (4, 5):
            log.write({"step": step, "loss": 10.0 * step, "accuracy": [0.0, 0.0], "note": "text"})
    assert tensorboard_steps(board, "loss") == [(1, 1.0), (2, 0.5), (3, round(1 / 3, 6)), (4, 40.0), (5, 50.0)]
    assert [s for s, _ in tensorboard_steps(board, "accuracy/1")] == [1, 2, 3, 4, 5]


def test_scalars_take_numbers_lists_and_dicts_only():
    record = {"step": 7, "loss": 0.5, "usage": [1, 0.5], "flag": True, "mfu": None, "name": "x", "nan": float("nan"),
              "by": {"eeg": [0.25], "step": 3}}
    assert scalars(record) == [("loss", 0.5), ("usage/0", 1.0), ("usage/1", 0.5), ("by/eeg/0", 0.25), ("by/step", 3.0)]


def test_resume_check_names_every_changed_setting_and_allows_deliberate_ones():
    saved = {"lr": 1e-3, "steps": 100, "out": "a", "seed": 0}
    now = {"lr": 2e-3, "steps": 200, "out": "b", "seed": 0, "added_later": 1}
    assert changed_settings(saved, now, free={"out"}) == {"lr": (1e-3, 2e-3), "steps": (100, 200)}
    with pytest.raises(NeuroFMError, match=r"other settings.*'lr'.*'steps'.*--allow-changed"):
        check_resume_settings("run", saved, now, free={"out"})
    with pytest.raises(NeuroFMError, match="'lr'") as err:
        check_resume_settings("run", saved, now, free={"out"}, allow_changed=["steps"])
    assert "'steps'" not in str(err.value)
    assert check_resume_settings("run", saved, now, free={"out"}, allow_changed=["steps", "lr"]) == {
        "lr": (1e-3, 2e-3), "steps": (100, 200)}


def _manager(root, module, optimizer, **kwargs):
    from neurofm.training.checkpoint import CheckpointManager, FolderBackend

    return CheckpointManager(root, FolderBackend(module, optimizer, tensors={"extra": lambda: {"x": module.weight.detach() * 2}}),
                             **kwargs)


def _trained_step(module, optimizer):
    import torch

    optimizer.zero_grad()
    module(torch.randn(4, 3)).square().mean().backward()
    optimizer.step()


def test_checkpoint_manager_saves_every_k_keeps_the_last_and_resumes_exactly(tmp_path):
    import numpy as np
    import torch

    from neurofm.training.checkpoint import TrainState, capture_rng, restore_rng

    torch.manual_seed(0)
    module = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(module.parameters(), lr=0.1)
    order = np.random.default_rng(5)
    manager = _manager(tmp_path / "ck", module, optimizer, every=2, keep=2)
    assert manager.latest() is None and [s for s in range(1, 7) if manager.should_save(s)] == [2, 4, 6]
    assert manager.should_save(3, last=True) and manager.should_save(3, requested=True)
    for step in range(1, 5):
        _trained_step(module, optimizer)
        if manager.should_save(step):
            manager.save(step, TrainState(step=step, windows_seen=4 * step, data={"position": step},
                                          rng=capture_rng(numpy_generators={"order": order})), {"lr": 0.1})
    assert sorted(p.name for p in (tmp_path / "ck").glob("step_*")) == ["step_00000002", "step_00000004"]
    expected = [torch.rand(3), order.random()]  # what the run draws next
    weights = module.weight.detach().clone()

    torch.manual_seed(1)  # another process: fresh model, optimizer and generators
    module2 = torch.nn.Linear(3, 2)
    optimizer2 = torch.optim.AdamW(module2.parameters(), lr=0.1)
    order2 = np.random.default_rng(99)
    again = _manager(tmp_path / "ck", module2, optimizer2, every=2, keep=2)
    found = again.latest()
    assert (found.tag, found.step, found.config, found.states[0].windows_seen, found.states[0].data) == \
        ("step_00000004", 4, {"lr": 0.1}, 16, {"position": 4})
    groups = again.load(found)
    restore_rng(found.states[0].rng, numpy_generators={"order": order2})
    assert torch.equal(module2.weight, weights) and torch.equal(groups["extra"]["x"], weights * 2)
    assert torch.equal(torch.rand(3), expected[0]) and order2.random() == expected[1]
    # the optimizer continued too: one more step of each gives the same weights
    torch.manual_seed(7)
    _trained_step(module, optimizer)
    torch.manual_seed(7)
    _trained_step(module2, optimizer2)
    assert torch.equal(module.weight, module2.weight)


def test_a_save_that_dies_midway_leaves_the_last_good_checkpoint_in_force(tmp_path, monkeypatch):
    import errno

    import torch

    from neurofm.training.checkpoint import TrainState

    module = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(module.parameters())
    manager = _manager(tmp_path / "ck", module, optimizer, every=1, keep=1)
    manager.save(1, TrainState(step=1), {})
    real = torch.save

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError):
        manager.save(2, TrainState(step=2), {})
    monkeypatch.setattr(torch, "save", real)
    assert manager.latest().tag == "step_00000001"
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["latest", "step_00000001"]  # no half-written tag
    # a tag left unfinished by a killed process (no `latest` on it) is not resumed from and is replaced
    (tmp_path / "ck" / "step_00000002").mkdir()
    assert manager.latest().tag == "step_00000001"
    manager.save(2, TrainState(step=2), {})
    assert manager.latest().tag == "step_00000002" and not (tmp_path / "ck" / "step_00000001").exists()


@pytest.mark.parametrize("damage", ["dangling latest", "garbage train state", "garbage optimizer"])
def test_a_damaged_checkpoint_is_an_error_that_names_it(tmp_path, damage):
    import torch

    from neurofm.training.checkpoint import TrainState

    module = torch.nn.Linear(3, 2)
    manager = _manager(tmp_path / "ck", module, torch.optim.AdamW(module.parameters()), every=1)
    manager.save(1, TrainState(step=1), {})
    tag = tmp_path / "ck" / "step_00000001"
    if damage == "dangling latest":
        (tmp_path / "ck" / "latest").write_text("step_00000009")
        expected = "names 'step_00000009', which is not a complete checkpoint"
    elif damage == "garbage train state":
        (tag / "train_state_rank0.json").write_text('{"no step": 1}')
        expected = "train_state_rank0.json is not a NeuroFM train state"
    else:
        (tag / "optimizer.pt").write_bytes(b"\x80\x04 not a torch file")
        expected = "optimizer.pt is damaged"
    with pytest.raises(NeuroFMError, match=expected):
        manager.load(manager.latest())


def test_a_finished_rank_of_a_ddp_run_leaves_without_interpreter_finalization(tmp_path):
    """A gloo group that DistributedDataParallel used outlives destroy_process_group (its threads keep
    running), and finalizing the interpreter under them can abort a finished rank; exit_process ends each
    rank with its status, its output flushed, and no finalization (an atexit hook never runs)."""
    import subprocess
    import sys

    from conftest import torchrun_processes

    code = ("import atexit, os, sys, torch; from neurofm.distributed import exit_process, process_group; "
            "atexit.register(lambda: open(os.path.join(sys.argv[1], 'finalized' + os.environ['RANK']), 'w').write('yes')); "
            "rank, world = process_group(); model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 2)); "
            "model(torch.randn(3, 4)).sum().backward(); "
            "sys.stdout.write(f'rank {rank} of {world} done {model.module.weight.grad.abs().sum().item() > 0}\\n'); exit_process(0)")
    result = torchrun_processes(2, code, tmp_path)  # one write per rank: the two ranks' lines do not interleave
    assert "rank 0 of 2 done True" in result.stdout and "rank 1 of 2 done True" in result.stdout
    assert not list(tmp_path.glob("finalized*"))
    alone = subprocess.run([sys.executable, "-c", "from neurofm.distributed import exit_process; print('alone'); exit_process(3)"],
                           capture_output=True, text=True, timeout=120)
    assert alone.returncode == 3 and alone.stdout == "alone\n"  # no process group: an ordinary exit with the status


def test_a_process_group_started_for_torchrun_is_destroyed_at_exit(tmp_path):
    """A gloo group left to interpreter finalization can abort a finished rank (SIGABRT); the group that
    neurofm.distributed starts is destroyed by an exit hook, before any hook registered earlier runs."""
    from conftest import torchrun_processes

    code = ("import atexit, os, sys, torch; "
            "atexit.register(lambda: open(os.path.join(sys.argv[1], 'rank' + os.environ['RANK']), 'w')"
            ".write(str(torch.distributed.is_initialized()))); "
            "from neurofm.distributed import process_group; rank, world = process_group(); "
            "t = torch.ones(1); torch.distributed.all_reduce(t); assert world == 2 and t.item() == 2")
    torchrun_processes(2, code, tmp_path)
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["False", "False"]
