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
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accelerate.utils import set_seed

import modeling_svitt  # noqa: F401  (registers SViTT with the Auto classes)
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
from training.evaluation import (
    EVALUATION_HEADS,
    build_evaluation_dataset,
    checkpoint_problem,
    evaluation_results,
    load_checkpoint_config,
)
from training.loop import prepare_stage, train_stage
from training.recipe import RecipeError, builtin_recipes, check_recipe_against_model, load_recipe, resolve_path
from training.report import results_table
from training.run_folder import (
    RunFolderError,
    check_not_model_folder,
    latest_state,
    output_folder,
    publish_model_files,
    remove_states,
    run_fingerprint,
    save_pretrained_atomically,
    trim_metrics_log,
    write_json_atomically,
)

EVALUATIONS = {"retrieval": "retrieval", "qa": "qa", "multiple_choice": "egomcq"}  # task -> how its recipes test
HEADS = {task: EVALUATION_HEADS[kind] for task, kind in EVALUATIONS.items()}
# What a fine-tuning run writes into its folder besides its model and training states (`--no-resume` removes them).
OWNED_NAMES = ("results.json", "finetune")
DEFAULT_RECIPES = {"retrieval": "ret-synthetic", "qa": "qa-synthetic", "multiple_choice": "mc-synthetic"}
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
    parser.add_argument("--task", required=True, choices=list(HEADS))
    parser.add_argument("--recipe", help="a built-in task recipe or a YAML file (default: the task's synthetic "
                                         f"recipe, {', '.join(DEFAULT_RECIPES.values())}); built-in: "
                                         f"{', '.join(name for task in HEADS for name in builtin_recipes(task))}")
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
    recipe = load_recipe(args.recipe or DEFAULT_RECIPES[args.task], recipe_overrides(args))
    if recipe.task != args.task:
        raise RecipeError(f"recipe '{recipe.name}' is a {recipe.task} recipe, not {args.task}: pick one with "
                          f"task: {args.task} ({', '.join(builtin_recipes(args.task))}) or a file of your own")
    stage, spec = recipe.stages[0], recipe.evaluation[0]
    output_dir = output_folder(args.output_dir, recipe.name)
    checkpoint_dir = output_dir / "checkpoints"
    start_model = resolve_path(recipe.model.checkpoint) if recipe.model.checkpoint else None
    check_not_model_folder(output_dir, start_model)
    fingerprint = run_fingerprint(f"finetune --task {args.task}", recipe, model=start_model, max_steps=args.max_steps)

    # The starting checkpoint must serve the task; the data must be readable: checked before anything runs.
    if recipe.model.init == "checkpoint":
        if not recipe.model.checkpoint:
            raise RecipeError(f"recipe '{recipe.name}' names no checkpoint to start from: pass --model PATH_OR_HUB_ID")
        checkpoint = resolve_path(recipe.model.checkpoint)
        config = load_checkpoint_config(checkpoint)
        scoring = recipe.model.config.get("multiple_choice_scoring", config.multiple_choice_scoring)
        if args.task == "retrieval":
            itm = stage.loss_weights.itm > 0
        else:
            itm = args.task == "multiple_choice" and scoring == "itm"
        problem = checkpoint_problem(config, spec.kind, training=True, use_itm=itm)
        if problem:
            raise RecipeError(f"--model {checkpoint} cannot be fine-tuned for --task {args.task}: {problem}")
    started = time.perf_counter()
    accelerator, run_folder, synthetic_root, processor = start_run(
        recipe, output_dir, fingerprint, OWNED_NAMES, args.resume, args.report_to, vars(args)
    )
    if run_folder.finished:
        accelerator.print(run_folder.finished_note("results.json"))
        return None
    dataset = open_train_dataset(recipe, 0, processor, synthetic_root, accelerator.num_processes)
    test_field = recipe_field_name(recipe.name, "evaluation.0")
    test_set = build_evaluation_dataset(spec, processor, stage.num_frames, synthetic_root, test_field)

    saved = latest_state(checkpoint_dir)
    if accelerator.is_main_process:
        trim_metrics_log(output_dir / "metrics.jsonl", saved[1]["global_step"] if saved else 0, 0)
    start_trackers(accelerator, "finetune", recipe, num_processes=accelerator.num_processes)
    with plain_loading():
        set_seed(recipe.seed)  # what the checkpoint lacks (a new head) starts from the seed alone
        model = build_initial_model(recipe, HEADS[args.task])
    check_recipe_against_model(recipe, model, processor)
    prepared = prepare_stage(accelerator, model, stage, dataset, processor, recipe.seed,
                             f"recipe '{recipe.name}', stages.0", args.max_steps, contrastive=args.task == "retrieval")
    run = train_stage(
        accelerator, prepared, dataset, seed=recipe.seed, stage_index=0, name=args.task,
        description=f"{recipe.name} ({stage.num_frames} frames, keep {stage.token_keep_rate:g})",
        checkpoint_dir=checkpoint_dir, save_every_steps=recipe.save_every_steps,
        log_every_steps=recipe.log_every_steps, max_grad_norm=stage.optimizer.max_grad_norm, resume_from=saved,
    )

    # The fine-tuned head and its processor at the root of the output folder, then its evaluation.
    state_dict = restore_scalar_shapes(accelerator.get_state_dict(prepared.model), prepared.scalar_parameters)
    if accelerator.is_main_process:
        staging = output_dir / ".model"
        save_pretrained_atomically(accelerator.unwrap_model(prepared.model), processor, staging, state_dict)
        publish_model_files(staging, output_dir)
        shutil.rmtree(staging)
    accelerator.wait_for_everyone()
    accelerator.free_memory(prepared.model, prepared.optimizer, prepared.dataloader)
    del model, prepared
    with plain_loading():
        head = EVALUATION_HEADS[spec.kind].from_pretrained(output_dir).to(accelerator.device).eval()
    record = evaluation_results(
        accelerator, head, test_set, processor, spec, model_name=str(output_dir), synthetic_root=synthetic_root
    )
    record["training"] = {"recipe": recipe.name, "from": recipe.model.checkpoint, "steps": run.steps,
                          "final_loss": run.final_loss, "train_seconds": round(run.train_seconds, 3)}
    accelerator.log({f"eval/{key}": value for key, value in record["metrics"].items()}, step=run.steps)
    if accelerator.is_main_process:
        write_json_atomically(output_dir / "results.json", record)
        remove_states(checkpoint_dir)
        run_folder.mark_finished("results.json")
        print(results_table(record))
        print(f"\nFinished in {time.perf_counter() - started:.0f} s. Everything is in {output_dir}:")
        print(f"  {HEADS[args.task].__name__} + processor   {output_dir}")
        print(f"  results   {output_dir / 'results.json'}")
        print(f"  curves    {output_dir / 'metrics.jsonl'}")
    accelerator.end_training()
    return record


if __name__ == "__main__":
    try:
        main()
    except (RecipeError, RunFolderError) as error:
        sys.exit(f"error: {error}")
