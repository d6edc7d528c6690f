"""Staged sparse-expansion pretraining of SViTT: a curriculum of clip lengths and sparsity, one stage after another.

    accelerate launch training/pretrain.py                      # the built-in default: the synthetic recipe
    python training/pretrain.py --recipe svitt-ego --output-dir svitt-ego
    accelerate launch --config_file training/configs/deepspeed_zero2.yaml training/pretrain.py --recipe svitt

Every stage starts from the previous stage's saved weights, with the relative position bias resampled to the
stage's clip length and the stage's sparsity, and trains with its own optimiser and schedule. After each stage the
model and processor are saved (`stage-<i>-<T>f/`) and evaluated zero-shot; the training state is saved every
`save_every_steps` steps, and a run started again with the same output folder continues where it stopped.

Writes into the output folder: the stage folders, the last stage's files at the root (the folder loads with
`AutoModel.from_pretrained`), `metrics.jsonl`, `summary.json`, `curriculum.png` and `checkpoints/`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml
from accelerate.utils import set_seed
from tqdm.auto import tqdm

import modeling_svitt  # noqa: F401  (registers SViTT with the Auto classes)
from modeling_svitt import SViTTForPreTraining
from training.common import (
    build_initial_model,
    build_optimizer,
    build_processor,
    build_scheduler,
    build_train_dataset,
    check_dataset,
    check_prepared_model,
    configure_stage,
    evaluate_checkpoint,
    freeze_unused_parameters,
    latest_state,
    make_accelerator,
    make_train_dataloader,
    plain_loading,
    prepare_for_deepspeed,
    prepare_synthetic_data,
    restore_scalar_shapes,
    save_pretrained_atomically,
    share_cpu_cores,
    save_state_atomically,
    step_seed,
    write_json_atomically,
)
from training.data import EgoMCQDataset, RetrievalEvalDataset
from training.recipe import RecipeError, builtin_recipes, check_data_paths, load_recipe, resolve_path
from training.report import plot_curriculum, summary_record, summary_table


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="synthetic",
                        help=f"a built-in recipe ({', '.join(builtin_recipes())}) or a YAML file (default: synthetic)")
    parser.add_argument("--output-dir", help="where everything is written (default: outputs/<recipe name>)")
    parser.add_argument("--max-steps", type=int, help="cap every stage at this many optimiser steps (smoke runs)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe field by its dotted path, e.g. --set stages.1.token_keep_rate=0.5 "
                             "(stages.*.X for every stage); repeatable")
    parser.add_argument("--seed", type=int, help="the run's seed (same as --set seed=N)")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                        help="continue from the state saved in the output folder (default: when there is one)")
    args = parser.parse_args(argv)
    if args.max_steps is not None and args.max_steps < 1:
        parser.error("--max-steps must be >= 1")
    return args


def stage_name(index: int, num_frames: int) -> str:
    return f"stage-{index + 1}-{num_frames}f"


def main(argv=None) -> None:
    args = parse_args(argv)
    overrides = args.overrides + ([f"seed={args.seed}"] if args.seed is not None else [])
    recipe = load_recipe(args.recipe, overrides)
    output_dir = Path(args.output_dir or Path("outputs") / recipe.name).resolve()
    run_state_file = output_dir / "run_state.json"
    checkpoint_dir = output_dir / "checkpoints"
    if args.resume is False and output_dir.exists():
        for stale in ("run_state.json", "metrics.jsonl", "summary.json", "checkpoints"):
            path = output_dir / stale
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)

    accelerator = make_accelerator(output_dir, mixed_precision=recipe.mixed_precision)
    if accelerator.is_main_process:  # the recipe as it ran, with every override and default
        values = {key: value for key, value in dataclasses.asdict(recipe).items() if key != "source"}
        (output_dir / "recipe.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    started = time.perf_counter()
    synthetic_root = prepare_synthetic_data(recipe, accelerator)
    check_data_paths(recipe, synthetic_root)
    processor = build_processor(recipe)

    # Everything a stage reads is checked before the first step: empty sets and wrong media roots fail here.
    train_sets = []
    for index, stage in enumerate(recipe.stages):
        dataset = build_train_dataset(stage, processor, recipe.seed, synthetic_root)
        check_dataset(dataset, recipe, f"stages.{index}.data", needed=stage.batch_size * accelerator.num_processes)
        train_sets.append(dataset)
    for index, spec in enumerate(recipe.evaluation):
        dataset_class = EgoMCQDataset if spec.kind == "egomcq" else RetrievalEvalDataset
        dataset = dataset_class(resolve_path(spec.annotations, synthetic_root), processor,
                                media_root=resolve_path(spec.media_root, synthetic_root))
        check_dataset(dataset, recipe, f"evaluation.{index}")

    run_state = {"recipe": recipe.name, "stages": []}
    resume = args.resume is not False and run_state_file.is_file()
    if resume:
        run_state = json.loads(run_state_file.read_text(encoding="utf-8"))
    saved = latest_state(checkpoint_dir) if args.resume is not False else None
    if accelerator.is_main_process:
        resumed_step = saved[1]["global_step"] if saved else sum(stage["steps"] for stage in run_state["stages"])
        trim_metrics_log(output_dir / "metrics.jsonl", resumed_step, len(run_state["stages"]))
    accelerator.init_trackers("pretrain", config={"recipe": recipe.name, "seed": recipe.seed})
    log_every = recipe.log_every_steps

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
        configure_stage(model, stage)
        share_cpu_cores(accelerator, stage.data.num_workers)
        freeze_unused_parameters(model, stage.freeze)
        dataset = train_sets[index]
        dataloader, sampler = make_train_dataloader(dataset, stage, processor, recipe.seed + index)
        raw_optimizer = build_optimizer(model, stage.optimizer)
        scalar_parameters = prepare_for_deepspeed(accelerator, model)
        model, optimizer, dataloader = accelerator.prepare(model, raw_optimizer, dataloader)
        check_prepared_model(accelerator, model)
        steps_per_epoch = len(dataloader)
        if steps_per_epoch == 0:
            raise RecipeError(f"recipe '{recipe.name}', stages.{index}.batch_size: larger than the dataset")
        total_steps = stage.steps or max(1, round(stage.epochs * steps_per_epoch))
        if args.max_steps:
            total_steps = min(total_steps, args.max_steps)
        scheduler = build_scheduler(raw_optimizer, stage, total_steps)

        stage_step, train_seconds, clips_seen = 0, 0.0, 0
        if saved is not None and saved[1]["stage"] == index:
            accelerator.load_state(str(saved[0]))
            progress = saved[1]
            stage_step, train_seconds, clips_seen = progress["stage_step"], progress["train_seconds"], progress["clips"]
            scheduler.last_epoch = stage_step - 1
            scheduler.step()  # the learning rate of step `stage_step`
            accelerator.print(f"Resuming {name} at step {stage_step} from {saved[0]}")
        saved = None

        bar = tqdm(total=total_steps, initial=stage_step, desc=f"{name} (keep {stage.token_keep_rate:g})",
                   disable=not accelerator.is_local_main_process, dynamic_ncols=True)
        model.train()
        loss = None
        while stage_step < total_steps:
            epoch, position = divmod(stage_step, steps_per_epoch)
            sampler.set_epoch(epoch)
            dataset.set_epoch(epoch)
            batches = accelerator.skip_first_batches(dataloader, position) if position else dataloader
            tick = time.perf_counter()
            for batch in batches:
                if batch is None:  # nothing in it could be read
                    continue
                set_seed(step_seed(recipe.seed, index, stage_step, accelerator.process_index))
                output = model(**batch)
                accelerator.backward(output.loss)
                if stage.optimizer.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), stage.optimizer.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                stage_step += 1
                clips = batch["pixel_values"].shape[0] * accelerator.num_processes
                clips_seen += clips
                now = time.perf_counter()
                train_seconds += now - tick
                tick = now
                loss = output.loss.detach()
                bar.update(1)
                if stage_step % log_every == 0 or stage_step == total_steps:
                    values = {"loss": accelerator.reduce(loss, "mean").item()}
                    for part in ("loss_itc", "loss_itm", "loss_mlm"):
                        if getattr(output, part) is not None:
                            values[part] = accelerator.reduce(getattr(output, part).detach(), "mean").item()
                    values.update(lr=scheduler.get_last_lr()[0], clips_per_second=clips_seen / train_seconds,
                                  stage=index, stage_step=stage_step, epoch=epoch)
                    accelerator.log(values, step=global_step + stage_step)
                    bar.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{values['lr']:.2e}",
                                    clips_s=f"{values['clips_per_second']:.1f}")
                if stage_step % recipe.save_every_steps == 0 or stage_step == total_steps:
                    progress = {"stage": index, "stage_step": stage_step, "train_seconds": train_seconds,
                                "clips": clips_seen, "global_step": global_step + stage_step}
                    save_state_atomically(accelerator, checkpoint_dir, f"{name}-step-{stage_step:07d}", progress)
                    tick = time.perf_counter()
                if stage_step >= total_steps:
                    break
        bar.close()

        # Save the stage, evaluate it zero-shot, record it.
        unwrapped = accelerator.unwrap_model(model)
        state_dict = restore_scalar_shapes(accelerator.get_state_dict(model), scalar_parameters)
        if accelerator.is_main_process:
            save_pretrained_atomically(unwrapped, processor, stage_dir, state_dict=state_dict)
        accelerator.wait_for_everyone()
        metrics = evaluate_checkpoint(accelerator, stage_dir, recipe.evaluation, synthetic_root)
        num_test_videos = metrics.pop("num_test_videos", None)
        global_step += stage_step
        final_loss = accelerator.reduce(loss, "mean").item() if loss is not None else None
        record = {
            "name": name,
            "num_frames": stage.num_frames,
            "token_keep_rate": stage.token_keep_rate,
            "checkpoint": name,
            "steps": stage_step,
            "end_step": global_step,
            "final_loss": final_loss,
            "train_seconds": round(train_seconds, 3),
            "clips_per_second": round(clips_seen / train_seconds, 3) if train_seconds else None,
            "metrics": metrics,
        }
        accelerator.log({"stage": index, **{f"eval/{key}": value for key, value in metrics.items()}}, step=global_step)
        run_state["stages"].append(record)
        if num_test_videos is not None:
            run_state["num_test_videos"] = num_test_videos
        if accelerator.is_main_process:
            write_json_atomically(run_state_file, run_state)
            write_summary(output_dir, recipe, run_state)
        accelerator.wait_for_everyone()
        model, optimizer, dataloader = accelerator.free_memory(model, optimizer, dataloader)

    # The last stage also at the root, so the output folder loads by its name.
    if accelerator.is_main_process:
        last = output_dir / run_state["stages"][-1]["checkpoint"]
        for item in last.iterdir():
            target = output_dir / item.name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
            shutil.copytree(item, target) if item.is_dir() else shutil.copy2(item, target)
        write_summary(output_dir, recipe, run_state)
        plot_curriculum(output_dir / "metrics.jsonl", run_state, output_dir / "curriculum.png")
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        print(summary_table(run_state))
        print(f"\nFinished in {time.perf_counter() - started:.0f} s. Everything is in {output_dir}:")
        print(f"  model + processor   {output_dir}  (AutoModel.from_pretrained('{output_dir}'))")
        for record in run_state["stages"]:
            print(f"  {record['name']:<19} {output_dir / record['checkpoint']}")
        print(f"  summary             {output_dir / 'summary.json'}")
        print(f"  curves              {output_dir / 'metrics.jsonl'}, {output_dir / 'curriculum.png'}")
    accelerator.end_training()


def trim_metrics_log(path: Path, resumed_step: int, completed_stages: int) -> None:
    """Drop what a stopped run logged after the point it resumes from (it is logged again)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        evaluation = any(key.startswith("eval/") for key in entry)
        if (entry.get("stage", 0) < completed_stages) if evaluation else (entry.get("step") or 0) <= resumed_step:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def write_summary(output_dir: Path, recipe, run_state: dict) -> None:
    write_json_atomically(output_dir / "summary.json", summary_record(recipe, run_state))


if __name__ == "__main__":
    try:
        main()
    except RecipeError as error:
        sys.exit(f"error: {error}")
