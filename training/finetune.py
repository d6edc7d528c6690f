"""Fine-tune SViTT on a downstream task from any pretraining (or other head's) checkpoint, then evaluate it.

    accelerate launch training/finetune.py --task retrieval --recipe ret-msrvtt --model svitt \\
        --media-root data/msrvtt/videos                                  # the release's MSRVTT settings
    accelerate launch training/finetune.py --task qa --recipe qa-msrvtt --model svitt \\
        --train-annotations data/msrvtt_qa/train.json --test-annotations data/msrvtt_qa/test.json \\
        --answer-list data/msrvtt_qa/answer_list.json --media-root data/msrvtt/videos
    python training/finetune.py --task retrieval                         # ret-synthetic on outputs/synthetic

`--task` is `retrieval` (ITC + ITM with hard negatives), `qa` (the answer decoder, initialised from the fusion layers
as the release does) or `multiple_choice` (EgoMCQ: cross-entropy over the five clips). A recipe (`--recipe NAME|FILE`,
`training/recipes/`) holds the task's settings: one stage (clip length, sparsity, optimiser, schedule, data) and the
test set with its protocol. Options, progress, trackers (`metrics.jsonl`), resumption (run the same command again) and
launches (one process, DDP, DeepSpeed) are those of `training/pretrain.py`.

Writes into the output folder the fine-tuned head with its processor (`from_pretrained(output_dir)`; retrieval with
`SViTTForVideoTextRetrieval`, QA with `AutoModelForVisualQuestionAnswering`, multiple choice with
`AutoModelForMultipleChoice`), `results.json` (the evaluation at the end, with `model_index` entries for a model card),
`metrics.jsonl` and `recipe.yaml`.
"""

from __future__ import annotations

import argparse
import json
import shutil

from training.evaluation_loops import (
    EVALUATION_HEADS,
    build_evaluation_dataset,
    checkpoint_problem,
    evaluation_results,
    load_checkpoint_config,
)
from training.launch import plain_loading
from training.options import add_run_arguments, check_run_arguments
from training.recipe import (
    EVALUATION_TASKS,
    SYNTHETIC_TASK_RECIPES,
    Recipe,
    RecipeError,
    builtin_recipes,
    load_recipe,
    resolve_path,
)
from training.recipe_data import recipe_field_name
from training.report import results_table
from training.run import run_script, start_run
from training.run_folder import (
    check_not_model_folder,
    output_folder,
    publish_model_files,
    run_fingerprint,
    write_json_atomically,
)

# What a fine-tuning run writes into its folder besides its model and training states (`--no-resume` removes them).
OWNED_NAMES = ("results.json", "finetune")
# option -> the recipe fields it sets
PATH_OPTIONS = {
    "model": ["model.checkpoint"],
    "train_annotations": ["stages.0.data.annotations"],
    "test_annotations": ["evaluation.0.annotations"],
    "answer_list": ["evaluation.0.answer_list"],
    "media_root": ["stages.0.data.media_root", "evaluation.0.media_root"],
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=EVALUATION_TASKS)
    builtin = [name for task in EVALUATION_TASKS for name in builtin_recipes(task)]
    parser.add_argument("--recipe", help="a built-in task recipe or a YAML file (default: the task's synthetic "
                                         f"recipe, {', '.join(SYNTHETIC_TASK_RECIPES.values())}); built-in: "
                                         f"{', '.join(builtin)}")
    parser.add_argument("--model", help="the checkpoint to start from: a folder or Hub id (default: the recipe's)")
    parser.add_argument("--media-root", help="the folder the video paths of the annotations are relative to")
    parser.add_argument("--train-annotations", help="the training annotation file (default: the recipe's)")
    parser.add_argument("--test-annotations", help="the test annotation file (default: the recipe's)")
    parser.add_argument("--answer-list", help="QA: the JSON list of candidate answers (default: the recipe's)")
    add_run_arguments(parser, "stages.0.optimizer.lr=2e-5")
    args = parser.parse_args(argv)
    check_run_arguments(parser, args)
    return args


def recipe_overrides(args: argparse.Namespace) -> list[str]:
    """`--set` assignments of the path options given (JSON strings, so a path is never read as another YAML value)."""
    overrides = list(args.overrides)
    for option, fields in PATH_OPTIONS.items():
        value = getattr(args, option)
        if value is not None:
            overrides += [f"{field}={json.dumps(value)}" for field in fields]
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    return overrides


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    recipe = load_recipe(args.recipe or SYNTHETIC_TASK_RECIPES[args.task], recipe_overrides(args))
    if recipe.task != args.task:
        raise RecipeError(f"recipe '{recipe.name}' is a {recipe.task} recipe, not {args.task}: pick one with "
                          f"task: {args.task} ({', '.join(builtin_recipes(args.task))}) or a file of your own")
    stage, spec = recipe.stages[0], recipe.evaluation[0]
    output_dir = output_folder(args.output_dir, recipe.name)
    start_model = resolve_path(recipe.model.checkpoint) if recipe.model.checkpoint else None
    check_not_model_folder(output_dir, start_model)
    check_starting_checkpoint(recipe, args.task)
    fingerprint = run_fingerprint(f"finetune --task {args.task}", recipe, model=start_model, max_steps=args.max_steps)
    run = start_run(recipe, output_dir, fingerprint, OWNED_NAMES, args, "results.json")
    if run.folder.finished:
        return None
    accelerator = run.accelerator
    dataset = run.open_train_dataset(0)
    test_field = recipe_field_name(recipe.name, "evaluation.0")
    test_set = build_evaluation_dataset(spec, run.processor, stage.num_frames, run.synthetic_root, test_field)

    saved = run.resume("finetune")
    head_class = EVALUATION_HEADS[args.task]
    model = run.build_model(head_class)  # what the checkpoint lacks (a new head) starts from the seed alone
    staging = output_dir / ".model"
    stage_run = run.train_stage(
        model, 0, dataset, args.task, description=f"{recipe.name} ({stage.num_frames} frames, keep "
        f"{stage.token_keep_rate:g})", save_to=staging, resume_from=saved, contrastive=args.task == "retrieval",
    )
    del model, dataset

    # The fine-tuned head and its processor at the root of the output folder, then its evaluation.
    if accelerator.is_main_process:
        publish_model_files(staging, output_dir)
        shutil.rmtree(staging)
    accelerator.wait_for_everyone()
    with plain_loading():
        head = head_class.from_pretrained(output_dir).to(accelerator.device).eval()
    record = evaluation_results(
        accelerator, head, test_set, run.processor, spec, model_name=str(output_dir), synthetic_root=run.synthetic_root
    )
    record["training"] = {"recipe": recipe.name, "from": recipe.model.checkpoint, "steps": stage_run.steps,
                          "final_loss": stage_run.final_loss, "train_seconds": round(stage_run.train_seconds, 3)}
    accelerator.log({f"eval/{key}": value for key, value in record["metrics"].items()}, step=stage_run.steps)
    if accelerator.is_main_process:
        write_json_atomically(output_dir / "results.json", record)
    written = {f"{head_class.__name__} + processor": output_dir, "results": output_dir / "results.json",
               "curves": output_dir / "metrics.jsonl"}
    run.finish("results.json", results_table(record), written)
    return record


def check_starting_checkpoint(recipe: Recipe, task: str) -> None:
    """The checkpoint a recipe starts from must serve `task` (a trained ITM head where the task scores with it):
    checked before anything runs."""
    if recipe.model.init != "checkpoint":
        return
    if not recipe.model.checkpoint:
        raise RecipeError(f"recipe '{recipe.name}' names no checkpoint to start from: pass --model PATH_OR_HUB_ID")
    checkpoint = resolve_path(recipe.model.checkpoint)
    config = load_checkpoint_config(checkpoint)
    scoring = recipe.model.config.get("multiple_choice_scoring", config.multiple_choice_scoring)
    if task == "retrieval":
        itm = recipe.stages[0].loss_weights.itm > 0
    else:
        itm = task == "multiple_choice" and scoring == "itm"
    problem = checkpoint_problem(config, task, training=True, use_itm=itm)
    if problem:
        raise RecipeError(f"--model {checkpoint} cannot be fine-tuned for --task {task}: {problem}")


if __name__ == "__main__":
    run_script(main)
