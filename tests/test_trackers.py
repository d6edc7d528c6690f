"""`--report-to`: accelerate's trackers besides `metrics.jsonl`, refused at start-up when not installed, with the recipe
flattened as the run's hyper-parameters (TensorBoard, offline: event files read back with TensorBoard's own reader);
and the progress bars of evaluation."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import accelerate.tracking
import pytest
import torch

from helpers.tiny_recipe import TINY_SYNTHETIC, write_tiny_recipe, write_tiny_task_recipe
from training import finetune, pretrain
from training.evaluation_loops import progress_bar, sharded_pair_scorer
from training.recipe import load_recipe
from training.tracking import flatten_hyperparameters, resolve_report_to, tracker_names


@pytest.fixture
def only_tensorboard_installed(monkeypatch):
    monkeypatch.setattr(accelerate.tracking, "_available_trackers", [accelerate.tracking.LoggerType.TENSORBOARD])


def test_report_to_names_resolve_to_the_trackers_to_start(only_tensorboard_installed):
    assert resolve_report_to(["none"]) == []
    assert resolve_report_to(["tensorboard"]) == ["tensorboard"]
    assert resolve_report_to(["all"]) == ["tensorboard"]  # every installed tracker
    assert resolve_report_to(["TensorBoard,tensorboard"]) == ["tensorboard"]
    assert {"tensorboard", "wandb", "mlflow", "trackio", "comet_ml"} <= set(tracker_names())


@pytest.mark.parametrize(
    "values, message",
    [
        (["wandb"], "--report-to wandb: not installed here; run `pip install wandb`"),
        (["tensorboard", "mlflow,comet_ml"],
         "--report-to mlflow, comet_ml: not installed here; run `pip install mlflow comet-ml`"),
        (["tensorbored"], "--report-to tensorbored: not a tracker; choose among all, none, aim,"),
        (["none", "tensorboard"], "--report-to none excludes the other trackers"),
    ],
)
def test_report_to_refuses_unknown_and_missing_trackers(only_tensorboard_installed, values, message):
    with pytest.raises(ValueError) as error:
        resolve_report_to(values)
    assert message in str(error.value)


@pytest.mark.parametrize("script", [pretrain, finetune])
def test_a_tracker_not_installed_is_refused_at_start_up_with_the_pip_command(
    only_tensorboard_installed, script, capsys, tmp_path
):
    task = ["--task", "retrieval"] if script is finetune else []
    with pytest.raises(SystemExit):
        script.parse_args([*task, "--report-to", "wandb", "--output-dir", str(tmp_path / "run")])
    assert "pip install wandb" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert script.parse_args([*task, "--report-to", "tensorboard"]).report_to == ["tensorboard"]
    assert script.parse_args(task).report_to == []  # default: metrics.jsonl only


def test_recipe_flattens_to_dotted_keys_with_values_every_tracker_takes(tmp_path):
    recipe = load_recipe(write_tiny_recipe(tmp_path))
    flat = flatten_hyperparameters({"recipe": recipe, "nothing": None, "empty": {}})
    assert flat["recipe.stages.1.token_keep_rate"] == 0.5
    assert flat["recipe.stages.0.optimizer.lr"] == 1e-3
    assert json.loads(flat["recipe.stages.0.optimizer.betas"]) == list(recipe.stages[0].optimizer.betas)
    assert json.loads(flat["recipe.model.vision.token_drop_layers"]) == [0]
    assert flat["recipe.evaluation.0.kind"] == "retrieval"
    assert flat["nothing"] == "null" and flat["empty"] == "{}"
    assert all(isinstance(value, (bool, int, float, str)) for value in flat.values())


def shown(is_main_process: bool) -> bool:
    with progress_bar(SimpleNamespace(is_main_process=is_main_process), 3, "Encoding") as bar:
        return not bar.disable


def test_progress_bars_of_evaluation_show_on_the_main_process_only_and_can_be_hidden(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert shown(is_main_process=True) and not shown(is_main_process=False)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert not shown(is_main_process=True)


def read_tensorboard(folder: Path) -> tuple[dict[str, list[tuple[int, float]]], dict[str, object]]:
    """The scalars (tag -> [(step, value)]) and hyper-parameters in the TensorBoard event files under `folder`, read
    with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    scalars, hparams = {}, {}
    for run in sorted({path.parent for path in folder.rglob("events.out.tfevents.*")}):
        events = EventAccumulator(str(run))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((event.step, event.value) for event in events.Scalars(tag))
        try:
            contents = events.PluginTagToContent("hparams").values()
        except KeyError:  # no hyper-parameters in this run's files
            contents = ()
        for content in contents:
            for key, value in HParamsPluginData.FromString(content).session_start_info.hparams.items():
                hparams[key] = getattr(value, value.WhichOneof("kind"))
    return scalars, hparams


@pytest.fixture(scope="module")
def tracked_runs(tmp_path_factory):
    """A tiny pretraining run, then a retrieval fine-tuning of it, both with --report-to tensorboard: their folder and
    what they wrote to stderr (the progress bars)."""
    folder = tmp_path_factory.mktemp("trackers")
    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(stderr):
        patch.setenv("SVITT_CACHE_DIR", str(folder / "cache"))
        patch.delenv("TQDM_DISABLE", raising=False)
        recipe = write_tiny_recipe(folder, stages=[{"num_frames": 2, "token_keep_rate": 0.75, "steps": 2}])
        pretrain.main(["--recipe", str(recipe), "--output-dir", str(folder / "pretrained"),
                       "--report-to", "tensorboard"])
        task_recipe = write_tiny_task_recipe(folder, "retrieval")
        finetune.main(["--task", "retrieval", "--recipe", str(task_recipe), "--model", str(folder / "pretrained"),
                       "--output-dir", str(folder / "retrieval"), "--report-to", "tensorboard"])
    return folder, stderr.getvalue()


def test_pretraining_logs_losses_and_the_recipe_to_tensorboard(tracked_runs):
    folder, _ = tracked_runs
    logs = folder / "pretrained" / "logs" / "pretrain"
    assert list(logs.glob("events.out.tfevents.*"))
    scalars, hparams = read_tensorboard(logs)
    assert [step for step, _ in scalars["loss"]] == [1, 2]
    metrics = [json.loads(line) for line in (folder / "pretrained" / "metrics.jsonl").read_text().splitlines()]
    logged = {entry["step"]: entry["loss"] for entry in metrics if "loss" in entry}
    assert [value for _, value in scalars["loss"]] == pytest.approx([logged[1], logged[2]], rel=1e-6)  # JSON lines too
    assert {"lr", "loss_itc", "loss_itm", "loss_mlm", "clips_per_second", "eval/t2v_r1"} <= set(scalars)
    assert hparams["name"] == "tiny" and hparams["num_processes"] == 1
    assert hparams["stages.0.num_frames"] == 2 and hparams["stages.0.token_keep_rate"] == 0.75
    assert hparams["stages.0.optimizer.lr"] == pytest.approx(1e-3)
    assert hparams["synthetic.num_pretrain_clips"] == TINY_SYNTHETIC["num_pretrain_clips"]


def test_fine_tuning_logs_to_tensorboard_with_its_recipe(tracked_runs):
    folder, _ = tracked_runs
    scalars, hparams = read_tensorboard(folder / "retrieval" / "logs" / "finetune")
    assert [step for step, _ in scalars["loss"]] == [1, 2]
    assert "eval/t2v_r1" in scalars
    assert hparams["task"] == "retrieval" and hparams["name"] == "tiny-retrieval"
    assert hparams["model.checkpoint"] == str(folder / "pretrained")


def test_evaluation_shows_its_progress(tracked_runs):
    _, stderr = tracked_runs
    assert "Encoding the videos of" in stderr
    assert "ITM re-ranking" in stderr


@torch.no_grad()
def test_itm_reranking_with_its_progress_bar_scores_exactly_as_before(capsys, monkeypatch):
    from modeling_svitt import SViTTForVideoTextRetrieval
    from modeling_svitt.retrieval_ranking import itm_pair_scores
    from helpers.tiny_configs import FRAMES, captions, make_model, videos

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    model = make_model(SViTTForVideoTextRetrieval, seed=4)
    video_gallery = model.encode_videos(videos(5, frames=2 * FRAMES, seed=5))  # 2 clips a video
    text_gallery = model.encode_texts(*captions(7, seed=6))
    text_indices, video_indices = torch.cartesian_prod(torch.arange(7), torch.arange(5)).unbind(1)
    one_process = SimpleNamespace(process_index=0, num_processes=1, is_main_process=True)
    for batch_size in (6, 128):  # 3 pairs a forward (12 forwards), or all 35 pairs in one
        expected = itm_pair_scores(model, video_gallery, text_gallery, text_indices, video_indices,
                                   clip_aggregation="lse", batch_size=batch_size)
        scores = sharded_pair_scorer(one_process)(model, video_gallery, text_gallery, text_indices, video_indices,
                                                  clip_aggregation="lse", batch_size=batch_size)
        assert torch.equal(scores, expected)
        assert "ITM re-ranking:   0%|          | 0/35 " in capsys.readouterr().err  # a bar over every pair
