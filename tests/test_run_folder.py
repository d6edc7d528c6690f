"""The output folder of a run (`training/run_folder.py`): the mark and the lock, the fingerprint a run continues on,
only the run's own files removed, and torn files that do not block resumption."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from training import run_folder
from training.run_folder import (
    LOCK,
    MARKER,
    RunFolderError,
    check_not_model_folder,
    claim_output_folder,
    latest_state,
    output_folder,
    read_json_record,
    remove_states,
    save_state_atomically,
    trim_metrics_log,
    write_json_atomically,
)

ROOT = Path(__file__).resolve().parents[1]


class OneProcess:
    """What `claim_output_folder` and `save_state_atomically` use of an `Accelerator`, for one process."""

    is_main_process = True
    num_processes = 1

    def wait_for_everyone(self):
        pass

    def save_state(self, folder, safe_serialization=False):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "optimizer.bin").write_bytes(b"state")


def fingerprint(lr=1e-3, max_steps=None, model=None):
    return {"script": "pretrain", "recipe": {"stages": [{"optimizer": {"lr": lr}}]}, "model": model,
            "max_steps": max_steps, "seed": 0, "num_processes": 1, "svitt_version": "0.1.0"}


def claim(folder, print_=None, resume=None, owned=("summary.json", "stage-*-*f")):
    return claim_output_folder(OneProcess(), folder, print_ or fingerprint(), resume, owned)


def save(folder: Path, stage: int, step: int):
    return save_state_atomically(OneProcess(), folder / "checkpoints", f"stage-{stage + 1}-2f-step-{step:07d}",
                                 {"stage": stage, "stage_step": step, "global_step": step})


def test_a_non_empty_folder_the_run_did_not_create_is_refused_and_left_alone(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    with pytest.raises(RunFolderError, match=r"not empty and was not created by a training run .*another --output-dir"):
        claim(folder)
    with pytest.raises(RunFolderError, match="not empty"):
        claim(folder, resume=False)  # --no-resume does not empty it either
    assert sorted(path.name for path in folder.iterdir()) == ["metrics.jsonl"]
    assert (folder / "metrics.jsonl").read_text() == '{"step": 1, "loss": 2.0}\n'


def test_a_new_folder_is_marked_and_the_same_run_continues(tmp_path):
    folder = tmp_path / "run"
    first = claim(folder)
    assert not first.resumed and not first.finished
    assert json.loads((folder / MARKER).read_text())["fingerprint"] == fingerprint()
    save(folder, 0, 2)
    again = claim(folder)
    assert again.resumed and not again.finished
    again.mark_finished("summary.json")
    finished = claim(folder)
    assert finished.finished and "finished: its model is there, its results in" in finished.finished_note("summary.json")
    with pytest.raises(RunFolderError, match=r"holds a different finished run(.|\n)*It is finished \(its results: .*"
                                             r"summary.json\); pass --no-resume"):
        claim(folder, fingerprint(lr=0.5))


def test_a_different_run_is_refused_naming_each_field_with_both_values(tmp_path):
    folder = tmp_path / "run"
    claim(folder)
    save(folder, 0, 2)
    with pytest.raises(RunFolderError) as refused:
        claim(folder, fingerprint(lr=1e-4, max_steps=10))
    message = str(refused.value)
    assert "holds a different unfinished run" in message
    assert "recipe.stages.0.optimizer.lr: 0.001 in the folder's run, 0.0001 now" in message
    assert "max_steps: null in the folder's run, 10 now" in message
    assert "--no-resume" in message and "--output-dir" in message
    assert latest_state(folder / "checkpoints") is not None  # nothing was touched


def test_a_run_that_saved_nothing_is_replaced(tmp_path):
    folder = tmp_path / "run"
    claim(folder)
    (folder / "recipe.yaml").write_text("name: tiny\n")  # refused before its first step: nothing worth keeping
    assert not claim(folder, fingerprint(lr=1e-4)).resumed
    assert json.loads((folder / MARKER).read_text())["fingerprint"] == fingerprint(lr=1e-4)


def test_no_resume_removes_only_what_the_run_owns(tmp_path):
    folder = tmp_path / "run"
    claim(folder)
    save(folder, 0, 2)
    for name in ("summary.json", "metrics.jsonl", "recipe.yaml", "config.json", "model.safetensors", "notes.txt"):
        (folder / name).write_text("x")
    (folder / "stage-1-2f").mkdir()
    (folder / "release-weights").mkdir()
    (folder / "checkpoints" / "best").mkdir()
    claim(folder, fingerprint(lr=1e-4), resume=False)
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        [LOCK, MARKER, "checkpoints", "notes.txt", "release-weights"]
    )
    assert [path.name for path in (folder / "checkpoints").iterdir()] == ["best"]


def test_an_unreadable_mark_is_refused_unless_no_resume(tmp_path):
    folder = tmp_path / "run"
    claim(folder)
    save(folder, 0, 2)
    (folder / MARKER).write_text("")
    with pytest.raises(RunFolderError, match=r"\.svitt-run\.json is unreadable.*pass --no-resume"):
        with pytest.warns(UserWarning, match="is unreadable"):
            claim(folder)
    with pytest.warns(UserWarning, match="is unreadable"):
        claim(folder, resume=False)
    assert latest_state(folder / "checkpoints") is None
    assert json.loads((folder / MARKER).read_text())["fingerprint"] == fingerprint()


def test_a_second_run_is_refused_naming_the_host_and_pid_of_the_first(tmp_path):
    folder = tmp_path / "run"
    holder = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'tests')!r})
        from pathlib import Path
        from test_run_folder import claim
        claim(Path({str(folder)!r}))
        print("holding", flush=True)
        time.sleep(60)
    """)
    process = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "holding"
        with pytest.raises(RunFolderError, match=rf"in use by another run \(host .+, pid {process.pid}\)"):
            claim(folder)
    finally:
        process.kill()
        process.wait()
    assert not claim(folder).finished  # the lock went with the process


def test_rotation_and_the_end_of_a_run_remove_only_the_runs_states(tmp_path):
    folder = tmp_path / "run"
    claim(folder)
    save(folder, 0, 1)
    release = folder / "checkpoints" / "release-weights"  # a user's folder among the states
    release.mkdir()
    (release / "model.safetensors").write_text("weights")
    for step in (2, 3):
        save(folder, 0, step)
    kept = sorted(path.name for path in (folder / "checkpoints").iterdir() if not path.name.startswith("."))
    assert kept == ["release-weights", "stage-1-2f-step-0000002", "stage-1-2f-step-0000003"]
    remove_states(folder / "checkpoints")
    assert sorted(path.name for path in (folder / "checkpoints").iterdir()) == ["release-weights"]
    assert (release / "model.safetensors").read_text() == "weights"
    other = tmp_path / "other"
    claim(other)
    save(other, 0, 1)
    remove_states(other / "checkpoints")
    assert not (other / "checkpoints").exists()


def test_an_unreadable_newest_state_falls_back_to_the_one_before(tmp_path):
    folder = tmp_path / "run"
    claim(folder)
    save(folder, 0, 2)
    newest = save(folder, 0, 4)
    (newest / "progress.json").write_text("")  # the write was lost
    with pytest.warns(UserWarning, match="progress.json is missing or unreadable; resuming from the state saved"):
        state = latest_state(folder / "checkpoints")
    assert state[0].name == "stage-1-2f-step-0000002" and state[1]["stage_step"] == 2


def test_an_empty_record_falls_back_to_its_previous_version(tmp_path):
    path = tmp_path / "run_state.json"
    write_json_atomically(path, {"stages": [1]}, keep_previous=True)
    write_json_atomically(path, {"stages": [1, 2]}, keep_previous=True)
    assert read_json_record(path) == {"stages": [1, 2]}
    path.write_text("")
    with pytest.warns(UserWarning, match="run_state.json is unreadable"):
        assert read_json_record(path) == {"stages": [1]}


def test_a_torn_last_log_line_is_dropped_with_a_warning(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "loss": 2.0}\n{"step": 3, "lo')
    with pytest.warns(UserWarning, match="the last line is cut"):
        trim_metrics_log(log, resumed_step=2, completed_stages=0)
    assert log.read_text() == '{"step": 1, "loss": 3.0}\n{"step": 2, "loss": 2.0}\n'
    log.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(RunFolderError, match=r"metrics.jsonl, line 2: not a JSON record"):
        trim_metrics_log(log, resumed_step=2, completed_stages=0)


def test_files_are_flushed_before_the_rename(tmp_path, monkeypatch):
    synced, renamed = [], []
    monkeypatch.setattr(run_folder, "fsync_path", lambda path: synced.append(Path(path).name))
    monkeypatch.setattr(run_folder.os, "replace", lambda a, b: (renamed.append(list(synced)), os.rename(a, b)))
    write_json_atomically(tmp_path / "summary.json", {"a": 1})
    assert renamed == [[".summary.json.tmp"]] and synced[-1] == tmp_path.name  # the file, then the folder's entry


@pytest.mark.parametrize("name", ["../../x", "a/b", ".."])
def test_a_recipe_name_cannot_place_outputs_outside_outputs(name):
    with pytest.raises(RunFolderError, match=r"name: must be a plain folder name"):
        output_folder(None, name)
    assert output_folder(None, "svitt-ego") == Path("outputs/svitt-ego").resolve()


def test_the_output_folder_may_not_be_the_model_folder(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    with pytest.raises(RunFolderError, match="is the folder of --model"):
        check_not_model_folder(model, str(model))
    with pytest.raises(RunFolderError, match="is the folder of --model"):
        check_not_model_folder(tmp_path, str(model))  # a folder holding it
    check_not_model_folder(tmp_path / "fine-tuned", str(model))
