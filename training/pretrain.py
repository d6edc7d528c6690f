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
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accelerate.utils import set_seed
from huggingface_hub import get_token

import modeling_svitt  # noqa: F401  (registers SViTT with the Auto classes)
from modeling_svitt import SViTTForPreTraining
from training.common import (
    add_run_arguments,
    build_initial_model,
    check_run_arguments,
    open_train_dataset,
    plain_loading,
    recipe_field_name,
    restore_scalar_shapes,
    start_run,
    start_trackers,
)
from training.evaluation import build_evaluation_dataset, evaluate_checkpoint, write_token_selection_picture
from training.loop import prepare_stage, train_stage
from training.recipe import RecipeError, builtin_recipes, check_recipe_against_model, load_recipe
from training.report import plot_curriculum, summary_record, summary_table
from training.run_folder import (
    RunFolderError,
    latest_state,
    output_folder,
    publish_model_files,
    read_json_record,
    remove_states,
    run_fingerprint,
    save_pretrained_atomically,
    trim_metrics_log,
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
    run_state_file = output_dir / "run_state.json"
    checkpoint_dir = output_dir / "checkpoints"
    fingerprint = run_fingerprint("pretrain", recipe, model=recipe.model.checkpoint, max_steps=args.max_steps)

    started = time.perf_counter()
    accelerator, run_folder, synthetic_root, processor = start_run(
        recipe, output_dir, fingerprint, OWNED_NAMES, args.resume, args.report_to, vars(args)
    )
    if run_folder.finished:
        accelerator.print(run_folder.finished_note("summary.json"))
        if args.push_to_hub and accelerator.is_main_process:
            push(output_dir, args.push_to_hub)
        return

    # Everything a stage reads is checked before the first step: wrong formats, empty sets and media roots fail here.
    # The check converts each annotation file once (cached, memory-mapped); a stage opens its data again when it
    # starts and releases it when it ends, so no process holds the data of every stage.
    for index in range(len(recipe.stages)):
        open_train_dataset(recipe, index, processor, synthetic_root, accelerator.num_processes,
                           accelerator.process_index)
    for index, spec in enumerate(recipe.evaluation):
        field_name = recipe_field_name(recipe.name, f"evaluation.{index}")
        build_evaluation_dataset(spec, processor, recipe.stages[0].num_frames, synthetic_root, field_name)

    run_state = read_json_record(run_state_file) or {"recipe": recipe.name, "stages": []}
    saved = latest_state(checkpoint_dir)
    if accelerator.is_main_process:
        resumed_step = saved[1]["global_step"] if saved else sum(stage["steps"] for stage in run_state["stages"])
        trim_metrics_log(output_dir / "metrics.jsonl", resumed_step, len(run_state["stages"]))
    start_trackers(accelerator, "pretrain", recipe, num_processes=accelerator.num_processes)

    global_step = sum(stage["steps"] for stage in run_state["stages"])
    for index, stage in enumerate(recipe.stages):
        name = stage_name(index, stage.num_frames)
        stage_dir = output_dir / name
        if index < len(run_state["stages"]) and stage_dir.is_dir():
            continue  # finished before a restart

        # Every stage starts from the previous stage's saved weights (the first from the recipe's model).
        with plain_loading():
            if index == 0:
                set_seed(recipe.seed)  # the fresh weights depend on the seed alone
                model = build_initial_model(recipe, SViTTForPreTraining)
            else:
                model = SViTTForPreTraining.from_pretrained(output_dir / run_state["stages"][-1]["checkpoint"])
        check_recipe_against_model(recipe, model, processor)
        dataset = open_train_dataset(recipe, index, processor, synthetic_root, accelerator.num_processes,
                                     accelerator.process_index)
        prepared = prepare_stage(accelerator, model, stage, dataset, processor, recipe.seed + index,
                                 f"recipe '{recipe.name}', stages.{index}", args.max_steps)
        run = train_stage(
            accelerator, prepared, dataset, seed=recipe.seed, stage_index=index, name=name,
            description=f"{name} (keep {stage.token_keep_rate:g})", checkpoint_dir=checkpoint_dir,
            save_every_steps=recipe.save_every_steps, log_every_steps=recipe.log_every_steps,
            max_grad_norm=stage.optimizer.max_grad_norm, global_step=global_step,
            resume_from=saved if saved is not None and saved[1]["stage"] == index else None,
        )
        saved = None

        # Save the stage, evaluate it, picture what it keeps of a test clip, record it.
        state_dict = restore_scalar_shapes(accelerator.get_state_dict(prepared.model), prepared.scalar_parameters)
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(prepared.model)
            save_pretrained_atomically(unwrapped, processor, stage_dir, state_dict=state_dict)
        accelerator.wait_for_everyone()
        metrics = evaluate_checkpoint(accelerator, stage_dir, recipe.evaluation, synthetic_root)
        if accelerator.is_main_process and recipe.evaluation:
            write_token_selection_picture(stage_dir, recipe.evaluation[0], synthetic_root,
                                          output_dir / "token_selection" / f"{name}.png", title=name)
        num_test_videos = metrics.pop("num_test_videos", None)
        global_step += run.steps
        record = {
            "name": name,
            "num_frames": stage.num_frames,
            "token_keep_rate": stage.token_keep_rate,
            "checkpoint": name,
            "steps": run.steps,
            "end_step": global_step,
            "final_loss": run.final_loss,
            "train_seconds": round(run.train_seconds, 3),
            "clips_per_second": round(run.clips / run.train_seconds, 3) if run.train_seconds else None,
            "metrics": metrics,
        }
        accelerator.log({"stage": index, **{f"eval/{key}": value for key, value in metrics.items()}}, step=global_step)
        run_state["stages"].append(record)
        if num_test_videos is not None:
            run_state["num_test_videos"] = num_test_videos
        if accelerator.is_main_process:
            write_json_atomically(run_state_file, run_state, keep_previous=True)
            write_summary(output_dir, recipe, run_state)
        accelerator.wait_for_everyone()
        accelerator.free_memory(prepared.model, prepared.optimizer, prepared.dataloader)
        del model, prepared, dataset

    # The last stage also at the root, so the output folder loads by its name.
    if accelerator.is_main_process:
        publish_model_files(output_dir / run_state["stages"][-1]["checkpoint"], output_dir)
        write_summary(output_dir, recipe, run_state)
        plot_curriculum(output_dir / "metrics.jsonl", run_state, output_dir / "curriculum.png")
        remove_states(checkpoint_dir)
        run_folder.mark_finished("summary.json")
        print(summary_table(run_state))
        print(f"\nFinished in {time.perf_counter() - started:.0f} s. Everything is in {output_dir}:")
        print(f"  model + processor   {output_dir}  (AutoModel.from_pretrained('{output_dir}'))")
        for record in run_state["stages"]:
            print(f"  {record['name']:<19} {output_dir / record['checkpoint']}")
        print(f"  summary             {output_dir / 'summary.json'}")
        print(f"  curves              {output_dir / 'metrics.jsonl'}, {output_dir / 'curriculum.png'}")
        print(f"  token selection     {output_dir / 'token_selection'}")
        if args.push_to_hub:
            push(output_dir, args.push_to_hub)
    accelerator.end_training()


def push(output_dir: Path, repo_id: str) -> None:
    from training.push_to_hub import push_run_to_hub

    commit = push_run_to_hub(output_dir, repo_id, stages=True)
    print(f"Pushed the run to {commit.commit_url}")


def write_summary(output_dir: Path, recipe, run_state: dict) -> None:
    write_json_atomically(output_dir / "summary.json", summary_record(recipe, run_state))


if __name__ == "__main__":
    try:
        main()
    except (RecipeError, RunFolderError) as error:
        sys.exit(f"error: {error}")
