"""`training/pretrain.py` end to end on a tiny recipe: the outputs, resumption after SIGKILL (mid-stage and between
stages) with the same final losses, bad input failing before the first step, and the EgoNCE + EgoMCQ path."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoProcessor

from modeling_svitt import SViTTConfig
from svitt_tools.model_card import _usage
from helpers.tiny_recipe import TINY_EGO_STAGES, pretrain_command, subprocess_env, write_tiny_recipe

TIMEOUT = 300


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pretrain")
    return {
        "folder": folder,
        "env": subprocess_env(folder / "cache"),
        "recipe": write_tiny_recipe(folder, stages=[
            {"num_frames": 2, "token_keep_rate": 0.75, "steps": 6},
            {"num_frames": 4, "token_keep_rate": 0.5, "steps": 4},
        ]),
    }


def run(command, env, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def final_losses(output_dir: Path) -> list[float]:
    summary = json.loads((output_dir / "summary.json").read_text())
    return [stage["final_loss"] for stage in summary["stages"]]


@pytest.fixture(scope="module")
def uninterrupted(workspace):
    output = workspace["folder"] / "uninterrupted"
    result = run(pretrain_command(workspace["recipe"], output), workspace["env"])
    return output, result


def test_run_writes_stage_folders_summary_curves_and_a_loadable_root(uninterrupted):
    output, result = uninterrupted
    summary = json.loads((output / "summary.json").read_text())
    assert summary["recipe"] == "tiny" and summary["num_test_videos"] == 6
    entries = {entry["metric_name"]: entry["metric_value"] for entry in summary["model_index"]}  # for model cards
    assert entries["R@1 (text-to-video)"] == pytest.approx(100 * summary["stages"][-1]["metrics"]["t2v_r1"], abs=1e-3)
    assert "Temporal probe accuracy" in entries
    assert "tiny" in (output / "recipe.yaml").read_text()
    assert [stage["name"] for stage in summary["stages"]] == ["stage-1-2f", "stage-2-4f"]
    for stage, (frames, keep) in zip(summary["stages"], [(2, 0.75), (4, 0.5)]):
        assert (stage["num_frames"], stage["token_keep_rate"], stage["checkpoint"]) == (frames, keep, stage["name"])
        assert stage["train_seconds"] > 0 and stage["clips_per_second"] > 0 and stage["steps"] > 0
        metrics = stage["metrics"]
        for key in ("t2v_r1", "t2v_r5", "v2t_r1", "temporal_probe_accuracy", "temporal_probe_itc_accuracy"):
            assert 0.0 <= metrics[key] <= 1.0, key
        folder = output / stage["checkpoint"]
        config = json.loads((folder / "config.json").read_text())["vision_config"]
        assert (config["num_frames"], config["token_keep_rate"]) == (frames, keep)
        model, processor = AutoModel.from_pretrained(folder), AutoProcessor.from_pretrained(folder)
        assert isinstance(model.config, SViTTConfig) and model.config.vision_config.num_frames == frames
        assert processor.video_processor.size == {"height": 32, "width": 32}
    # the last stage also at the root: the output folder loads by its name
    root_model = AutoModel.from_pretrained(output)
    last = AutoModel.from_pretrained(output / "stage-2-4f")
    for (name, a), (_, b) in zip(root_model.state_dict().items(), last.state_dict().items()):
        assert torch.equal(a, b), name
    lines = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    train_steps = [line["step"] for line in lines if "loss" in line]
    assert train_steps == list(range(1, 11))  # one line per step (log_every_steps 1), global step across stages
    assert sum(1 for line in lines if "eval/t2v_r1" in line) == 2
    assert (output / "curriculum.png").stat().st_size > 10_000
    assert not (output / "checkpoints").exists()
    assert "| stage-2-4f | 4 | 0.5 |" in result.stdout and "Everything is in" in result.stdout


def kill_when(process: subprocess.Popen, condition, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended before {what}:\n{process.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_sigkill_mid_stage_then_relaunch_continues_and_ends_with_the_same_losses(workspace, uninterrupted):
    output = workspace["folder"] / "killed-mid-stage"
    command = pretrain_command(workspace["recipe"], output)
    process = subprocess.Popen(command, env=workspace["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    checkpoints = output / "checkpoints"
    kill_when(process, lambda: checkpoints.is_dir() and any(p.name.startswith("stage-1") for p in checkpoints.iterdir()),
              "the first saved state")
    assert not (output / "stage-1-2f").exists()
    with open(output / "metrics.jsonl", "a") as log:
        log.write('{"step": 99, "lo')  # the kill cut the last line
    resumed = run(command, workspace["env"])
    assert "Resuming stage-1-2f at step" in resumed.stdout + resumed.stderr
    assert "the last line is cut (the run was stopped while writing it): dropped" in resumed.stderr
    expected = final_losses(uninterrupted[0])
    assert final_losses(output) == pytest.approx(expected, abs=1e-6)
    lines = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line] == list(range(1, 11))  # no step logged twice


def test_sigkill_between_stages_then_relaunch_skips_the_finished_stage(workspace, uninterrupted):
    output = workspace["folder"] / "killed-between-stages"
    command = pretrain_command(workspace["recipe"], output)
    process = subprocess.Popen(command, env=workspace["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state = output / "run_state.json"
    kill_when(process, lambda: state.is_file() and len(json.loads(state.read_text())["stages"]) == 1,
              "the end of stage 1")
    resumed = run(command, workspace["env"])
    assert "stage-1-2f (keep" not in resumed.stderr  # no progress bar: the stage was not trained again
    assert final_losses(output) == pytest.approx(final_losses(uninterrupted[0]), abs=1e-6)


def test_a_finished_run_says_so_and_a_changed_recipe_is_refused_naming_the_field(workspace, uninterrupted):
    output = uninterrupted[0]
    before = {name: (output / name).read_bytes() for name in ("summary.json", "recipe.yaml", "metrics.jsonl")}
    again = run(pretrain_command(workspace["recipe"], output), workspace["env"])
    assert f"{output} holds this run, finished" in again.stdout and "stage-1-2f (keep" not in again.stderr
    changed = run(pretrain_command(workspace["recipe"], output, "--set", "stages.*.optimizer.lr=1e-4"),
                  workspace["env"], check=False)
    assert changed.returncode != 0 and "stage-1-2f (keep" not in changed.stderr
    assert "holds a different finished run" in changed.stderr
    for stage in (0, 1):
        assert f"recipe.stages.{stage}.optimizer.lr: 0.001 in the folder's run, 0.0001 now" in changed.stderr
    assert "--no-resume" in changed.stderr
    assert {name: (output / name).read_bytes() for name in before} == before  # nothing rewritten


def test_every_saved_folder_runs_the_cards_usage_code_with_its_own_processor(workspace, uninterrupted):
    output = uninterrupted[0]
    video = next((workspace["folder"] / "cache").rglob("*.mp4"))  # a clip of the synthetic set
    usage = _usage("LOAD_NAME").split("```python\n")[1].split("```")[0]
    for folder, frames in ((output / "stage-1-2f", 2), (output / "stage-2-4f", 4), (output, 4)):
        assert AutoProcessor.from_pretrained(folder).video_processor.num_frames == frames
        scope = {}
        exec(usage.replace("LOAD_NAME", str(folder)).replace("clip.mp4", str(video)), scope)
        assert scope["similarity"].shape == (1, 2), folder


def test_no_resume_starts_over(workspace, uninterrupted):
    output = workspace["folder"] / "uninterrupted"
    again = run(pretrain_command(workspace["recipe"], output, "--no-resume", "--max-steps", "1"), workspace["env"])
    assert "stage-1-2f (keep" in again.stderr
    assert [stage["steps"] for stage in json.loads((output / "summary.json").read_text())["stages"]] == [1, 1]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"stage_defaults": {"data": {"annotations": "{synthetic}/empty.json"}}},
         r"stages\.0\.data\.annotations: the dataset has 0 samples"),
        ({"stage_defaults": {"data": {"media_root": "{synthetic}/ego"}}},
         r"stages\.0\.data\.media_root: none of the .* videos of the annotations exists"),
        ({"stage_defaults": {"data": {"media_root": "/nonexistent/videos"}}},
         r"stages\.0\.data\.media_root: media folder '/nonexistent/videos' does not exist"),
        ({"evaluation": [{"kind": "retrieval", "annotations": "{synthetic}/missing.json"}]},
         r"evaluation\.0\.annotations: annotation file '.*missing.json' does not exist"),
        # checked on the built model, every stage before the first one's first step
        ({"stages": [{"num_frames": 2, "token_keep_rate": 0.75, "freeze": ["svitt.txt_model."]},
                     {"num_frames": 4, "token_keep_rate": 0.5, "optimizer": {"lr_multipliers": {"nowhere": 2.0}}}]},
         r"(?s)stages\.0\.freeze: no parameter name starts 'svitt\.txt_model\.'.*"
         r"stages\.1\.optimizer\.lr_multipliers: no parameter name holds 'nowhere'"),
    ],
)
def test_bad_input_fails_before_the_first_step_naming_the_field(tmp_path, monkeypatch, overrides, message):
    from training import pretrain
    from training.data.synthetic import SyntheticConfig, generate_synthetic_dataset
    from training.recipe import RecipeError
    from helpers.tiny_recipe import TINY_SYNTHETIC

    monkeypatch.setenv("SVITT_CACHE_DIR", str(tmp_path / "cache"))
    synthetic = generate_synthetic_dataset(config=SyntheticConfig(**TINY_SYNTHETIC)).root
    (synthetic / "empty.json").write_text("[]")
    recipe = write_tiny_recipe(tmp_path, name="bad", **overrides)
    output = tmp_path / "bad-run"
    with pytest.raises(RecipeError, match=message):
        pretrain.main(["--recipe", str(recipe), "--output-dir", str(output)])
    assert not any(output.glob("stage-*")) and not (output / "checkpoints").exists()
    assert not (output / "metrics.jsonl").exists()


def test_egonce_recipe_evaluates_egomcq(workspace):
    output = workspace["folder"] / "ego"
    recipe = write_tiny_recipe(workspace["folder"], name="tiny-ego", **TINY_EGO_STAGES)
    run(pretrain_command(recipe, output, "--max-steps", "2"), workspace["env"])
    summary = json.loads((output / "summary.json").read_text())
    metrics = summary["stages"][0]["metrics"]
    assert set(metrics) == {"egomcq_inter_accuracy", "egomcq_intra_accuracy"}
    assert all(0.0 <= value <= 1.0 for value in metrics.values())
    config = json.loads((output / "config.json").read_text())
    assert config["contrastive_loss"] == "egonce"
