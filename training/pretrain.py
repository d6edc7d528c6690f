"""Staged sparse-expansion pretraining of SViTT: a curriculum of clip lengths and sparsity, one stage after another.

    accelerate launch training/pretrain.py                      # the built-in default: the synthetic recipe
    python training/pretrain.py --recipe svitt-ego --output-dir svitt-ego
    accelerate launch --config_file training/configs/deepspeed_zero2.yaml training/pretrain.py --recipe svitt

Every stage starts from the previous stage's saved weights, with the relative position bias resampled to the
stage's clip length and the stage's sparsity, and trains with its own optimiser and schedule. After each stage the
model and processor are saved (`stage-<i>-<T>f/`) and evaluated zero-shot; the training state is saved every
`save_every_steps` steps, and the same run started again with the same output folder continues where it stopped (a
different run is refused there, and a folder this package did not create is never written into: `run_folder.py`).

Writes into the output folder: the stage folders, the last stage's files at the root (the folder loads with
`AutoModel.from_pretrained`), `metrics.jsonl`, `summary.json`, `curriculum.png`, `token_selection/<stage>.png` (what
node sparsity keeps of a test clip after each stage) and `checkpoints/`. `--push-to-hub REPO_ID` uploads the run,
every stage and a generated model card at the end (`training/push_to_hub.py`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from huggingface_hub import get_token

from modeling_svitt import SViTTForPreTraining
from training.evaluation_loops import build_evaluation_dataset, evaluate_checkpoint, write_token_selection_picture
from training.options import add_run_arguments, check_run_arguments
from training.recipe import RecipeError, builtin_recipes, load_recipe
from training.recipe_data import recipe_field_name
from training.report import plot_curriculum, summary_record, summary_table
from training.run import TrainingRun, run_script, start_run
from training.run_folder import (
    output_folder,
    publish_model_files,
    read_json_record,
    run_fingerprint,
    write_json_atomically,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="synthetic",
                        help=f"a built-in recipe ({', '.join(builtin_recipes('pretraining'))}) or a YAML file "
                             "(default: synthetic)")
    add_run_arguments(parser, "stages.1.token_keep_rate=0.5 (stages.*.X for every stage)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID",
                        help="at the end, upload the run (every stage, a generated model card) to this Hub repo")
    args = parser.parse_args(argv)
    check_run_arguments(parser, args)
    if args.push_to_hub and get_token() is None:
        parser.error("--push-to-hub needs a Hugging Face token: run `hf auth login` or set HF_TOKEN")
    return args


# What a pretraining run writes into its folder besides its model and training states (`--no-resume` removes them).
OWNED_NAMES = ("run_state.json", "summary.json", "curriculum.png", "token_selection", "stage-*-*f", ".stage-*-*f.tmp",
               "pretrain")


def stage_name(index: int, num_frames: int) -> str:
    return f"stage-{index + 1}-{num_frames}f"


def main(argv=None) -> None:
    args = parse_args(argv)
    overrides = args.overrides + ([f"seed={args.seed}"] if args.seed is not None else [])
    recipe = load_recipe(args.recipe, overrides)
    if recipe.task != "pretraining":
        raise RecipeError(f"recipe '{recipe.name}' fine-tunes ({recipe.task}): run it with training/finetune.py "
                          f"--task {recipe.task} --recipe {args.recipe}")
    output_dir = output_folder(args.output_dir, recipe.name)
    fingerprint = run_fingerprint("pretrain", recipe, model=recipe.model.checkpoint, max_steps=args.max_steps)
    run = start_run(recipe, output_dir, fingerprint, OWNED_NAMES, args, "summary.json")
    if run.folder.finished:
        if args.push_to_hub and run.accelerator.is_main_process:
            push(output_dir, args.push_to_hub)
        return

    # Everything a stage reads is checked before the first step: wrong formats, empty sets and media roots fail here.
    # The check converts each annotation file once (cached, memory-mapped); a stage opens its data again when it
    # starts and releases it when it ends, so no process holds the data of every stage.
    for index in range(len(recipe.stages)):
        run.open_train_dataset(index)
    for index, spec in enumerate(recipe.evaluation):
        field_name = recipe_field_name(recipe.name, f"evaluation.{index}")
        build_evaluation_dataset(spec, run.processor, recipe.stages[0].num_frames, run.synthetic_root, field_name)

    run_state = read_json_record(output_dir / "run_state.json") or {"recipe": recipe.name, "stages": []}
    saved = run.resume("pretrain", run_state["stages"])
    for index, stage in enumerate(recipe.stages):
        name = stage_name(index, stage.num_frames)
        if index < len(run_state["stages"]) and (output_dir / name).is_dir():
            continue  # finished before a restart
        # Every stage starts from the previous stage's saved weights (the first from the recipe's model).
        previous = output_dir / run_state["stages"][-1]["checkpoint"] if index else None
        model = run.build_model(SViTTForPreTraining, previous)
        dataset = run.open_train_dataset(index)
        global_step = sum(record["steps"] for record in run_state["stages"])
        stage_run = run.train_stage(
            model, index, dataset, name, description=f"{name} (keep {stage.token_keep_rate:g})",
            save_to=output_dir / name, global_step=global_step,
            resume_from=saved if saved is not None and saved[1]["stage"] == index else None,
        )
        saved = None
        del model, dataset
        record_stage(run, index, name, stage_run, run_state)

    # The last stage also at the root, so the output folder loads by its name.
    if run.accelerator.is_main_process:
        publish_model_files(output_dir / run_state["stages"][-1]["checkpoint"], output_dir)
        write_summary(output_dir, recipe, run_state)
        plot_curriculum(output_dir / "metrics.jsonl", run_state, output_dir / "curriculum.png")
    written = {"model + processor": f"{output_dir}  (AutoModel.from_pretrained('{output_dir}'))"}
    written.update({record["name"]: output_dir / record["checkpoint"] for record in run_state["stages"]})
    written.update({"summary": output_dir / "summary.json",
                    "curves": f"{output_dir / 'metrics.jsonl'}, {output_dir / 'curriculum.png'}",
                    "token selection": output_dir / "token_selection"})
    run.finish("summary.json", summary_table(run_state), written)
    if args.push_to_hub and run.accelerator.is_main_process:
        push(output_dir, args.push_to_hub)


def record_stage(run: TrainingRun, index: int, name: str, stage_run, run_state: dict) -> None:
    """Evaluate the stage's saved model, picture what it keeps of a test clip, log and record the stage in
    `run_state.json` and `summary.json`."""
    accelerator, recipe, output_dir = run.accelerator, run.recipe, run.output_dir
    stage, stage_dir = recipe.stages[index], output_dir / name
    metrics = evaluate_checkpoint(accelerator, stage_dir, recipe.evaluation, run.synthetic_root)
    if accelerator.is_main_process and recipe.evaluation:
        write_token_selection_picture(stage_dir, recipe.evaluation[0], run.synthetic_root,
                                      output_dir / "token_selection" / f"{name}.png", title=name)
    num_test_videos = metrics.pop("num_test_videos", None)
    end_step = sum(record["steps"] for record in run_state["stages"]) + stage_run.steps
    seconds = stage_run.train_seconds
    record = {
        "name": name,
        "num_frames": stage.num_frames,
        "token_keep_rate": stage.token_keep_rate,
        "checkpoint": name,
        "steps": stage_run.steps,
        "end_step": end_step,
        "final_loss": stage_run.final_loss,
        "train_seconds": round(seconds, 3),
        "clips_per_second": round(stage_run.clips / seconds, 3) if seconds else None,
        "metrics": metrics,
    }
    accelerator.log({"stage": index, **{f"eval/{key}": value for key, value in metrics.items()}}, step=end_step)
    run_state["stages"].append(record)
    if num_test_videos is not None:
        run_state["num_test_videos"] = num_test_videos
    if accelerator.is_main_process:
        write_json_atomically(output_dir / "run_state.json", run_state, keep_previous=True)
        write_summary(output_dir, recipe, run_state)
    accelerator.wait_for_everyone()


def push(output_dir: Path, repo_id: str) -> None:
    from training.push_to_hub import push_run_to_hub

    commit = push_run_to_hub(output_dir, repo_id, stages=True)
    print(f"Pushed the run to {commit.commit_url}")


def write_summary(output_dir: Path, recipe, run_state: dict) -> None:
    write_json_atomically(output_dir / "summary.json", summary_record(recipe, run_state))


if __name__ == "__main__":
    run_script(main)
