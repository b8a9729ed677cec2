"""What the three training loops share: the metrics log (JSONL + TensorBoard) and the resume check."""

import json

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
    # resumed from a step-3 checkpoint: steps 4 and 5 are written again, with other values
    with MetricsLog(tmp_path / "log.jsonl", resumed_step=3, tensorboard=board) as log:
        for step in (4, 5):
            log.write({"step": step, "loss": 10.0 * step, "accuracy": [0.0, 0.0], "note": "text"})
    assert tensorboard_steps(board, "loss") == [(1, 1.0), (2, 0.5), (3, round(1 / 3, 6)), (4, 40.0), (5, 50.0)]
    assert [s for s, _ in tensorboard_steps(board, "accuracy/1")] == [1, 2, 3, 4, 5]


def test_scalars_take_numbers_and_lists_only():
    record = {"step": 7, "loss": 0.5, "usage": [1, 0.5], "flag": True, "mfu": None, "name": "x", "nan": float("nan")}
    assert scalars(record) == [("loss", 0.5), ("usage/0", 1.0), ("usage/1", 0.5)]


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
