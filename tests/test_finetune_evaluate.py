"""`training/finetune.py`, `training/evaluate.py` (protocols, sweeps, one vs two processes), the token-selection
pictures, and `pretrain.py --push-to-hub`, on the tiny synthetic set.

The checkpoints evaluated for numbers are random heads with a wide initialisation: a few training steps leave a tiny
model's scores nearly constant (every metric at its tie value), which would make equal numbers prove nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.fake_hub import FakeHub
from PIL import Image
from helpers.tiny_recipe import (
    ROOT,
    TINY_SYNTHETIC,
    pretrain_command,
    subprocess_env,
    write_tiny_recipe,
    write_tiny_task_recipe,
)
from transformers import AutoModelForVisualQuestionAnswering

import modeling_svitt  # noqa: F401
from modeling_svitt import (
    SViTTConfig,
    SViTTForMultipleChoice,
    SViTTForVideoQuestionAnswering,
    SViTTForVideoTextRetrieval,
    SViTTProcessor,
)
from svitt_tools.compute_cost import video_tower_gmacs
from svitt_tools.visualize import greyed, token_selection_picture
from training import evaluate, finetune, pretrain
from training.data.synthetic import SyntheticConfig, generate_synthetic_dataset
from training.recipe import EvaluationSpec, RecipeError
from training.run_folder import RunFolderError

TIMEOUT = 300
REPO = "someone/svitt-pushed"


def test_task_names_of_earlier_versions_are_refused_naming_the_new_one(capsys):
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--task", "egomcq", "--model", "m", "--dataset", "synthetic"])
    assert "--task egomcq is now spelled --task multiple_choice" in capsys.readouterr().err
    args = evaluate.parse_args(["--task", "multiple_choice", "--model", "m", "--dataset", "synthetic"])
    assert args.task == "multiple_choice"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    folder = tmp_path_factory.mktemp("finetune")
    previous = os.environ.get("SVITT_CACHE_DIR")
    os.environ["SVITT_CACHE_DIR"] = str(folder / "cache")  # the subprocesses get the same cache
    synthetic = generate_synthetic_dataset(config=SyntheticConfig(**TINY_SYNTHETIC)).root
    recipes = {task: write_tiny_task_recipe(folder, task) for task in ("retrieval", "qa", "multiple_choice")}
    yield {"folder": folder, "synthetic": synthetic, "recipes": recipes}
    if previous is None:
        os.environ.pop("SVITT_CACHE_DIR")
    else:
        os.environ["SVITT_CACHE_DIR"] = previous


@pytest.fixture(scope="module")
def pretrained(workspace):
    """A smoke pretraining run (one stage, two steps), pushed to a fake Hub with --push-to-hub at its end."""
    folder = workspace["folder"]
    recipe = write_tiny_recipe(folder, stages=[{"num_frames": 2, "token_keep_rate": 0.5, "steps": 2}])
    output = folder / "pretrained"
    with FakeHub() as hub:
        env = subprocess_env(folder / "cache")
        env.update(HF_ENDPOINT=hub.url, HF_TOKEN="hf_fake_token_for_tests", HF_HUB_OFFLINE="0",
                   HF_HOME=str(folder / "hf-home"))
        result = subprocess.run(pretrain_command(recipe, output, "--push-to-hub", REPO), env=env,
                                capture_output=True, text=True, timeout=TIMEOUT)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
        files = dict(hub.files(REPO))
    return {"folder": output, "stdout": result.stdout, "hub_files": files, "hub_url": hub.url}


def wide_random_head(head_class, pretrained_folder: Path, folder: Path, seed: int = 0, **config_overrides) -> Path:
    """A random head of the smoke-pretrained architecture with a wide initialisation (varied scores), saved with the
    run's processor."""
    config = SViTTConfig.from_pretrained(pretrained_folder)
    for part in (config.vision_config, config.text_config, config.answer_decoder_config):
        part.initializer_range = 0.5
    for key, value in config_overrides.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    head_class(config).save_pretrained(folder)
    SViTTProcessor.from_pretrained(pretrained_folder).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def heads(workspace, pretrained):
    folder = workspace["folder"]
    return {
        "retrieval": wide_random_head(SViTTForVideoTextRetrieval, pretrained["folder"], folder / "head-retrieval"),
        "qa": wide_random_head(SViTTForVideoQuestionAnswering, pretrained["folder"], folder / "head-qa"),
        "egomcq": wide_random_head(SViTTForMultipleChoice, pretrained["folder"], folder / "head-ego",
                                   contrastive_loss="egonce"),
        "itc-only": wide_random_head(SViTTForVideoTextRetrieval, pretrained["folder"], folder / "head-itc",
                                     loss_weight_itm=0.0),
    }


def test_pretraining_pictures_token_selection_and_pushes_the_run(pretrained):
    output = pretrained["folder"]
    picture = output / "token_selection" / "stage-1-2f.png"
    assert Image.open(picture).size[0] > 200
    assert f"Pushed the run to {pretrained['hub_url']}/{REPO}/commit/" in pretrained["stdout"]
    files = pretrained["hub_files"]
    assert files["token_selection/stage-1-2f.png"] == picture.read_bytes()
    assert files["stage-1-2f/model.safetensors"] == (output / "stage-1-2f" / "model.safetensors").read_bytes()
    assert "Tokens kept by node sparsity" in files["README.md"].decode()


def test_push_to_hub_without_a_token_is_refused_at_start_up(monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(SystemExit):
        pretrain.parse_args(["--push-to-hub", REPO])
    assert "--push-to-hub needs a Hugging Face token" in capsys.readouterr().err


def test_retrieval_fine_tuning_from_the_smoke_pretrained_checkpoint(workspace, pretrained):
    output = workspace["folder"] / "ft-retrieval"
    arguments = ["--task", "retrieval", "--recipe", str(workspace["recipes"]["retrieval"]),
                 "--model", str(pretrained["folder"]), "--output-dir", str(output)]
    record = finetune.main(arguments)
    results = json.loads((output / "results.json").read_text())
    assert results == json.loads(json.dumps(record))
    assert results["task"] == "retrieval" and results["training"]["steps"] == 2
    assert (results["num_frames"], results["clip_length"], results["num_clips"]) == (4, 2, 2)
    assert results["sparsity"]["token_keep_rate"] == 0.75 and results["sparsity"]["fusion_token_keep_rate"] == 0.5
    assert {"t2v_r1", "v2t_mean_rank", "temporal_probe_accuracy"} <= results["metrics"].keys()
    entries = {entry["metric_name"]: entry for entry in results["model_index"]}
    assert entries["R@1 (text-to-video)"]["metric_value"] == pytest.approx(100 * results["metrics"]["t2v_r1"], abs=1e-3)
    model = SViTTForVideoTextRetrieval.from_pretrained(output)
    assert model.config.vision_config.num_frames == 2 and model.config.architectures == ["SViTTForVideoTextRetrieval"]
    processor = SViTTProcessor.from_pretrained(output)
    assert processor.max_text_length == 12 and processor.video_processor.num_frames == 2  # the model's clip length
    assert not (output / "checkpoints").exists()
    assert finetune.main(arguments) is None  # a finished run is not trained again


def test_qa_fine_tuning_then_evaluation_report_accuracy_per_question_type(workspace, pretrained):
    output = workspace["folder"] / "ft-qa"
    recipe = str(workspace["recipes"]["qa"])
    finetune.main(["--task", "qa", "--recipe", recipe, "--model", str(pretrained["folder"]),
                   "--output-dir", str(output)])
    trained = json.loads((output / "results.json").read_text())
    assert {"qa_accuracy", "qa_accuracy_order", "qa_accuracy_direction"} <= trained["metrics"].keys()
    assert trained["model_index"][0]["metric_name"] == "Accuracy"
    assert isinstance(AutoModelForVisualQuestionAnswering.from_pretrained(output), SViTTForVideoQuestionAnswering)
    again = evaluate.main(["--task", "qa", "--model", str(output), "--recipe", recipe,
                           "--output-dir", str(workspace["folder"] / "eval-qa")])
    assert again["metrics"] == trained["metrics"]


def test_egomcq_evaluation_and_fine_tuning_of_an_ego_checkpoint(workspace, heads):
    recipe = str(workspace["recipes"]["multiple_choice"])
    record = evaluate.main(["--task", "multiple_choice", "--model", str(heads["egomcq"]), "--recipe", recipe,
                            "--output-dir", str(workspace["folder"] / "eval-ego")])
    assert set(record["metrics"]) == {"egomcq_inter_accuracy", "egomcq_intra_accuracy"}
    assert [entry["metric_name"] for entry in record["model_index"]] == ["Inter-video accuracy",
                                                                         "Intra-video accuracy"]
    output = workspace["folder"] / "ft-ego"
    finetune.main(["--task", "multiple_choice", "--recipe", recipe, "--model", str(heads["egomcq"]),
                   "--output-dir", str(output), "--max-steps", "1"])
    tuned = SViTTForMultipleChoice.from_pretrained(output)
    assert tuned.config.contrastive_loss == "egonce"


def test_sweep_decodes_once_and_writes_table_and_plot(workspace, heads, monkeypatch):
    import training.data.readers as readers

    calls = []
    original = readers.read_video
    monkeypatch.setattr(readers, "read_video", lambda *a, **k: calls.append(a[0]) or original(*a, **k))
    output = workspace["folder"] / "sweep"
    record = evaluate.main(["--task", "retrieval", "--model", str(heads["retrieval"]),
                            "--recipe", str(workspace["recipes"]["retrieval"]), "--output-dir", str(output),
                            "--sweep", "token_keep_rate=1.0,0.5", "--repeats", "2"])
    assert len(calls) == len(set(calls)) == TINY_SYNTHETIC["num_test_clips"]  # every video decoded once
    rows = record["rows"]
    assert [row["settings"] for row in rows] == [{"token_keep_rate": 1.0}, {"token_keep_rate": 0.5}]
    vision = SViTTConfig.from_pretrained(heads["retrieval"]).vision_config
    for row in rows:
        expected = video_tower_gmacs(vision, token_keep_rate=row["settings"]["token_keep_rate"]) * 2  # 2 clips
        assert row["video_tower_gmacs"] == pytest.approx(expected) and row["seconds_per_video"] > 0
    assert rows[0]["video_tower_gmacs"] > rows[1]["video_tower_gmacs"]
    assert rows[0]["metrics"] != rows[1]["metrics"]
    assert "| token_keep_rate | GMACs / video | s / video |" in (output / "sweep.md").read_text()
    assert Image.open(output / "sweep.png").size[0] > 500
    # each point equals a fresh evaluation of the model saved with that setting
    fresh = workspace["folder"] / "head-retrieval-keep-0.5"
    shutil.copytree(heads["retrieval"], fresh)
    config = json.loads((fresh / "config.json").read_text())
    config["vision_config"]["token_keep_rate"] = 0.5
    (fresh / "config.json").write_text(json.dumps(config))
    single = evaluate.main(["--task", "retrieval", "--model", str(fresh),
                            "--recipe", str(workspace["recipes"]["retrieval"]), "--output-dir", str(fresh / "eval")])
    assert single["metrics"] == pytest.approx(rows[1]["metrics"])


def test_token_selection_picture_greys_exactly_the_dropped_patches(workspace, heads):
    model = SViTTForVideoTextRetrieval.from_pretrained(heads["retrieval"]).eval()
    model.config.text_config.fusion_token_drop_layers = [0]
    processor = SViTTProcessor.from_pretrained(heads["retrieval"])
    video = workspace["synthetic"] / "clips" / "test_00000.mp4"
    pixel_values = processor(videos=[str(video)], num_frames=2)["pixel_values"][0]
    path = workspace["folder"] / "picture" / "tokens.png"
    picture = token_selection_picture(model, processor, pixel_values, path, caption="a red square moves left",
                                      fusion_keep_rate=0.5)
    image = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy())
    with torch.no_grad():
        kept = model.svitt.encode_video(pixel_values[None]).vision_output.kept_token_indices
    vision = model.config.vision_config
    side, patch = vision.patches_per_side, vision.patch_size * picture.scale
    frames = ((pixel_values * 0.5 + 0.5) * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    frames = frames.repeat_interleave(picture.scale, 1).repeat_interleave(picture.scale, 2)
    assert len(picture.origins) == 1 + len(kept) + 1  # input, the drop layer(s), the text-guided selection
    for row, positions in zip(picture.origins[1:], kept):
        kept_set = set(positions[0].tolist())
        for frame, (left, top) in enumerate(row):
            for index in range(side * side):
                y, x = divmod(index, side)
                shown = image[top + y * patch : top + (y + 1) * patch, left + x * patch : left + (x + 1) * patch]
                original = frames[frame, y * patch : (y + 1) * patch, x * patch : (x + 1) * patch]
                expected = original if frame * side * side + index in kept_set else greyed(original)
                assert torch.equal(shown, expected), (frame, index)


def test_visualize_command_writes_the_picture(workspace, heads):
    from svitt_tools import visualize

    output = workspace["folder"] / "picture" / "command.png"
    video = workspace["synthetic"] / "clips" / "test_00001.mp4"
    visualize.main([str(heads["retrieval"]), str(video), "--output", str(output), "--caption", "a red square"])
    assert Image.open(output).size[1] > 3 * 64  # input, drop layer, text-guided rows


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--task", "qa", "--recipe", "{qa}", "--model", "{pretrained}"],
         r"cannot be evaluated on --task qa: it is a SViTTForPreTraining checkpoint, without a trained answer decoder"),
        (["--task", "retrieval", "--annotations", "{synthetic}/qa_test.json", "--model", "{head}"],
         r"--annotations: expected retrieval test JSON, .*qa_test.json' lacks \['caption'\]"),
        (["--task", "retrieval", "--annotations", "{synthetic}/ret_test.json", "--media-root", "{synthetic}/ego",
          "--model", "{head}"],
         r"--media-root: none of the 6 videos of the annotations exists"),
        (["--task", "retrieval", "--dataset", "synthetic", "--model", "{head}", "--sweep", "hidden_size=16,32"],
         r"'hidden_size' is not an inference-time setting"),
        (["--task", "retrieval", "--recipe", "{retrieval}", "--model", "{itc-only}", "--sweep", "use_itm=false,true"],
         r"it was trained without the ITM loss .*: rank by ITC with --no-itm"),
    ],
)
def test_evaluation_refuses_wrong_inputs_before_work(workspace, pretrained, heads, arguments, message):
    values = {"{qa}": str(workspace["recipes"]["qa"]), "{retrieval}": str(workspace["recipes"]["retrieval"]),
              "{pretrained}": str(pretrained["folder"]), "{head}": str(heads["retrieval"]),
              "{itc-only}": str(heads["itc-only"])}
    arguments = [values.get(argument, argument) for argument in arguments]
    arguments = [argument.replace("{synthetic}", str(workspace["synthetic"])) for argument in arguments]
    output = workspace["folder"] / "refused"
    with pytest.raises(RecipeError, match=message):
        evaluate.main(arguments + ["--output-dir", str(output)])
    assert not output.exists()


@pytest.mark.parametrize(
    ("task", "extra", "message"),
    [
        ("qa", ["--recipe", "{retrieval}"], r"recipe 'tiny-retrieval' is a retrieval recipe, not qa"),
        ("qa", ["--recipe", "{qa}", "--train-annotations", "{synthetic}/ret_train.json"],
         r"stages\.0\.data\.annotations: expected QA JSON, .*ret_train.json' lacks \['question'\]"),
        ("retrieval", ["--recipe", "{retrieval}", "--media-root", "{synthetic}/ego"],
         r"stages\.0\.data\.media_root: none of the .* videos of the annotations exists"),
        ("retrieval", ["--recipe", "{retrieval}", "--set", "stages.0.optimizer.lr_multipliers={nowhere: 2.0}"],
         r"stages\.0\.optimizer\.lr_multipliers: no parameter name holds 'nowhere'"),
    ],
)
def test_fine_tuning_refuses_wrong_inputs_before_work(workspace, pretrained, task, extra, message):
    values = {"{qa}": str(workspace["recipes"]["qa"]), "{retrieval}": str(workspace["recipes"]["retrieval"])}
    extra = [values.get(value, value).replace("{synthetic}", str(workspace["synthetic"])) for value in extra]
    output = workspace["folder"] / f"refused-{task}"
    with pytest.raises(RecipeError, match=message):
        finetune.main(["--task", task, "--model", str(pretrained["folder"]), "--output-dir", str(output), *extra])
    assert not (output / "checkpoints").exists() and not (output / "results.json").exists()


def test_a_checkpoint_without_fusion_layers_cannot_serve_qa(workspace, pretrained):
    no_fusion = workspace["folder"] / "no-fusion"
    config = SViTTConfig.from_pretrained(pretrained["folder"])
    config.text_config.fusion_layer = config.text_config.num_hidden_layers
    modeling_svitt.SViTTModel(config).save_pretrained(no_fusion)
    with pytest.raises(RecipeError, match="cannot be fine-tuned for --task qa: it has no fusion layers"):
        finetune.main(["--task", "qa", "--recipe", str(workspace["recipes"]["qa"]), "--model", str(no_fusion),
                       "--output-dir", str(workspace["folder"] / "refused-no-fusion")])


def test_two_gloo_processes_give_the_results_of_one(workspace, heads, monkeypatch):
    from helpers import evaluate_probe
    recipes = workspace["recipes"]
    runs = {
        "retrieval": ["--task", "retrieval", "--model", str(heads["retrieval"]), "--recipe", str(recipes["retrieval"])],
        "qa": ["--task", "qa", "--model", str(heads["qa"]), "--recipe", str(recipes["qa"])],
        "egomcq": ["--task", "multiple_choice", "--model", str(heads["egomcq"]), "--recipe", str(recipes["multiple_choice"])],
    }
    two = workspace["folder"] / "two-processes"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "training" / "configs" / "ddp.yaml"), str(ROOT / "tests" / "helpers" / "evaluate_probe.py"), str(two),
               json.dumps(runs)]
    result = subprocess.run(command, env=subprocess_env(workspace["folder"] / "cache"), cwd=ROOT,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    shards = [torch.load(two / f"rank{rank}.pt") for rank in range(2)]

    alone, current = {}, [""]
    # the same recording in this process (monkeypatch puts the original back afterwards)
    monkeypatch.setattr(evaluate_probe.evaluation_loops, "_gathered_unique", evaluate_probe.evaluation_loops._gathered_unique)
    evaluate_probe.record_first_gathering(alone, current)
    for name, args in runs.items():
        current[0] = name
        one = evaluate.main(args + ["--output-dir", str(workspace["folder"] / "one-process" / name)])
        shared = json.loads((two / name / "results.json").read_text())
        assert shared["metrics"] == one["metrics"] and shared["num_samples"] == one["num_samples"], name
        # each process evaluated a part of the set, and the gathered rows are those of one process
        first, second = set(shards[0][name]["local"]), set(shards[1][name]["local"])
        assert first != second and first | second == set(range(one["num_samples"])), name
        for gathered, expected in zip(shards[0][name]["gathered"], alone[name]["gathered"]):
            torch.testing.assert_close(gathered, expected, rtol=1e-5, atol=1e-5)
    predictions = alone["qa"]["gathered"][1]
    assert predictions.unique().numel() > 1  # the answers differ by question: equal results are not a tie


def test_fine_tuning_another_model_into_an_interrupted_run_is_refused(workspace, pretrained, heads, monkeypatch):
    output = workspace["folder"] / "ft-interrupted"
    recipe = str(workspace["recipes"]["retrieval"])
    first = ["--task", "retrieval", "--recipe", recipe, "--model", str(pretrained["folder"]), "--output-dir", str(output)]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # stopped after training, before the evaluation

    with monkeypatch.context() as patch:
        patch.setattr(finetune, "evaluation_results", interrupted)
        with pytest.raises(KeyboardInterrupt):
            finetune.main(first)
    assert (output / "checkpoints").is_dir() and not (output / "results.json").exists()
    weights = (output / "model.safetensors").read_bytes()
    other = ["--model", str(heads["retrieval"])]
    with pytest.raises(RunFolderError) as refused:
        finetune.main(first[:4] + other + first[6:])
    message = str(refused.value)
    assert "holds a different unfinished run" in message
    assert f'model: "{pretrained["folder"].resolve()}" in the folder\'s run, "{heads["retrieval"].resolve()}" now' in message
    assert (output / "model.safetensors").read_bytes() == weights and (output / "checkpoints").is_dir()


def test_the_output_folder_may_not_be_the_model_folder(workspace, heads):
    model = heads["retrieval"]
    files = {path.name: path.read_bytes() for path in model.iterdir()}
    with pytest.raises(RunFolderError, match="is the folder of --model"):
        finetune.main(["--task", "retrieval", "--recipe", str(workspace["recipes"]["retrieval"]), "--model", str(model),
                       "--output-dir", str(model)])
    assert {path.name: path.read_bytes() for path in model.iterdir()} == files


def test_an_earlier_evaluation_is_kept_unless_overwrite(workspace, heads):
    output = workspace["folder"] / "eval-kept"
    arguments = ["--task", "retrieval", "--model", str(heads["retrieval"]), "--recipe",
                 str(workspace["recipes"]["retrieval"]), "--output-dir", str(output)]
    evaluate.main(arguments)
    earlier = (output / "results.json").read_bytes()
    with pytest.raises(RunFolderError, match=r"results.json holds an earlier evaluation and is kept: pass --overwrite"):
        evaluate.main(arguments)
    assert (output / "results.json").read_bytes() == earlier
    evaluate.main(arguments + ["--overwrite"])
    assert json.loads((output / "results.json").read_text())["model"] == str(heads["retrieval"])


def test_the_default_evaluation_folder_tells_data_and_models_apart(tmp_path):
    spec = EvaluationSpec(kind="retrieval", annotations="data/msrvtt/test_1k.json")
    folders = {
        evaluate.default_output_dir("outputs/a/svitt", spec),
        evaluate.default_output_dir("outputs/b/svitt", spec),  # another model of the same name
        evaluate.default_output_dir("outputs/a/svitt", EvaluationSpec(kind="retrieval", annotations="didemo/test.json")),
        evaluate.default_output_dir("outputs/a/svitt", EvaluationSpec(kind="qa", annotations="data/msrvtt/test_1k.json")),
    }
    assert len(folders) == 4
    assert evaluate.default_output_dir("outputs/a/svitt", spec).name.startswith("eval-svitt-retrieval-test_1k-")
    assert all(folder.parent == Path("outputs").resolve() for folder in folders)
