"""The skeleton every training run follows, shared by `pretrain.py` and `finetune.py`:

    run = start_run(recipe, output_dir, fingerprint, owned_names, args, results_file)   # accelerator, folder, data
    saved = run.resume("pretrain", finished_stages)        # the state to continue from; trackers started
    model = run.build_model(model_class)                   # whole even under ZeRO-3, checked against the recipe
    stage_run = run.train_stage(model, index, dataset, name, save_to=folder)   # prepared, trained, saved, freed
    run.finish(results_file, table, written)                # states removed, folder marked finished, what it wrote

and `run_script(main)`, how every script exits on a mistake in its recipe or output folder. The folder itself (who
owns it, files written atomically, saved states) is `run_folder.py`; the loop of a stage is `loop.py`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import set_seed

from modeling_svitt import SViTTProcessor
from training.building import build_initial_model, build_processor
from training.launch import check_one_run, make_accelerator, plain_loading, restore_scalar_shapes
from training.loop import StagePlan, StageRun, prepare_stage, train_stage
from training.recipe import Recipe, RecipeError, check_recipe_against_model
from training.recipe_data import check_data_paths, open_train_dataset, prepare_synthetic_data
from training.run_folder import (
    RunFolder,
    RunFolderError,
    claim_output_folder,
    latest_state,
    recipe_values,
    record_recipe,
    remove_states,
    save_pretrained_atomically,
    trim_metrics_log,
)
from training.tracking import flatten_hyperparameters


@dataclass
class TrainingRun:
    """A started run: its recipe and output folder (claimed: `folder.finished` when it already holds this run's
    results), the accelerator, the synthetic set's folder (when the recipe has one), the processor saved with every
    stage (`None` for a finished run) and when it started (`time.perf_counter`)."""

    recipe: Recipe
    output_dir: Path
    accelerator: Accelerator
    folder: RunFolder
    synthetic_root: Path | None
    processor: SViTTProcessor | None
    max_steps: int | None
    started: float

    @property
    def checkpoint_dir(self) -> Path:
        """Where the training states are saved while the run goes on."""
        return self.output_dir / "checkpoints"

    def open_train_dataset(self, index: int):
        """Stage `index`'s training set (this process's share when streamed), checked before any work."""
        accelerator = self.accelerator
        return open_train_dataset(self.recipe, index, self.processor, self.synthetic_root,
                                  accelerator.num_processes, accelerator.process_index)

    def resume(self, project: str, finished_stages: Sequence[dict] = ()) -> tuple[Path, dict] | None:
        """The newest saved state to continue from (`None`: start the next stage afresh); what a stopped run logged
        after it (or after the `finished_stages`, records with their `steps`) is dropped from `metrics.jsonl`, as it
        is logged again. Then the trackers start (`project`: the script), with the recipe as it runs, flattened to
        dotted keys (`stages.1.optimizer.lr`), as the run's hyper-parameters; runs are named after the folder."""
        accelerator = self.accelerator
        saved = latest_state(self.checkpoint_dir)
        if accelerator.is_main_process:
            resumed_step = saved[1]["global_step"] if saved else sum(stage["steps"] for stage in finished_stages)
            trim_metrics_log(self.output_dir / "metrics.jsonl", resumed_step, len(finished_stages))
        hyperparameters = flatten_hyperparameters({**recipe_values(self.recipe),
                                                   "num_processes": accelerator.num_processes})
        run_name = Path(accelerator.project_dir or project).name
        init_kwargs = {"wandb": {"name": run_name}, "mlflow": {"run_name": run_name}, "trackio": {"name": run_name}}
        accelerator.init_trackers(project, config=hyperparameters, init_kwargs=init_kwargs)
        return saved

    def build_model(self, model_class: type, checkpoint: Path | None = None):
        """A stage's starting model, built whole (`plain_loading`): the recipe's first model (its fresh weights
        depend on the seed alone), or the saved `checkpoint` of the previous stage; checked against the recipe."""
        with plain_loading():
            if checkpoint is None:
                set_seed(self.recipe.seed)
                model = build_initial_model(self.recipe, model_class)
            else:
                model = model_class.from_pretrained(checkpoint)
        check_recipe_against_model(self.recipe, model, self.processor)
        return model

    def train_stage(
        self,
        model,
        index: int,
        dataset,
        name: str,
        *,
        description: str,
        save_to: Path,
        global_step: int = 0,
        resume_from: tuple[Path, dict] | None = None,
        contrastive: bool = True,
    ) -> StageRun:
        """Prepare stage `index` of the recipe for `model` (see `loop.prepare_stage`; `contrastive`: the recipe sets
        its losses), train it (`loop.train_stage`; `name` names its saved states, `resume_from` a state of this stage),
        save the trained model with the processor to `save_to` and free the stage's memory on every process."""
        accelerator, recipe, stage = self.accelerator, self.recipe, self.recipe.stages[index]
        prepared = prepare_stage(accelerator, model, stage, dataset, self.processor, recipe.seed + index,
                                 f"recipe '{recipe.name}', stages.{index}", self.max_steps, contrastive)
        plan = StagePlan(
            index=index, name=name, description=description, seed=recipe.seed, checkpoint_dir=self.checkpoint_dir,
            save_every_steps=recipe.save_every_steps, log_every_steps=recipe.log_every_steps,
            max_grad_norm=stage.optimizer.max_grad_norm, global_step=global_step, resume_from=resume_from,
        )
        stage_run = train_stage(accelerator, prepared, dataset, plan)
        # every process takes part in gathering the weights (ZeRO-3); the main process alone writes them
        state_dict = restore_scalar_shapes(accelerator.get_state_dict(prepared.model), prepared.scalar_parameters)
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(prepared.model)
            save_pretrained_atomically(unwrapped, self.processor, save_to, state_dict=state_dict)
        accelerator.wait_for_everyone()
        accelerator.free_memory(prepared.model, prepared.optimizer, prepared.dataloader)
        return stage_run

    def finish(self, results: str, table: str, written: dict[str, Any]) -> None:
        """End the run: the saved training states removed, the folder marked finished (`results`: the file holding
        its results), the results `table` and what was `written` (label -> where) printed, the trackers closed."""
        if self.accelerator.is_main_process:
            remove_states(self.checkpoint_dir)
            self.folder.mark_finished(results)
            print(table)
            print(f"\nFinished in {time.perf_counter() - self.started:.0f} s. Everything is in {self.output_dir}:")
            width = max(len(label) for label in written)
            for label, where in written.items():
                print(f"  {label:<{width}}  {where}")
        self.accelerator.end_training()


def start_run(
    recipe: Recipe,
    output_dir: Path,
    fingerprint: dict,
    owned: Sequence[str],
    args: argparse.Namespace,
    results: str,
) -> TrainingRun:
    """What every training run starts with: the accelerator (with `metrics.jsonl` and the trackers of
    `args.report_to`), the output folder claimed for the run with its `fingerprint` (`run_folder.claim_output_folder`:
    `owned` names what the script writes, `args.resume` is `--resume` / `--no-resume`), every process checked to run
    the same recipe and options into the same folder (`launch.check_one_run`), the recipe as it ran (`recipe.yaml`),
    the synthetic set when the recipe has one, every file and folder the recipe names checked, and the processor.
    A run already finished (its `results` file written) says so and returns right after the claim
    (`run.folder.finished`, no processor)."""
    started = time.perf_counter()
    accelerator = make_accelerator(output_dir, mixed_precision=recipe.mixed_precision, report_to=args.report_to)
    # the main process alone creates and writes the folder, for every machine
    run_folder = claim_output_folder(accelerator, output_dir, fingerprint, args.resume, owned)
    run = TrainingRun(recipe, output_dir, accelerator, run_folder, None, None, args.max_steps, started)
    if run_folder.finished:
        accelerator.print(run_folder.finished_note(results))
        return run
    # the same folder may be mounted at other paths on other machines: `check_one_run` compares what they see
    options = {key: value for key, value in vars(args).items() if key != "output_dir"}
    check_one_run(accelerator, output_dir, {"recipe": recipe_values(recipe), "options": options})
    if accelerator.is_main_process:
        record_recipe(output_dir, recipe)
    run.synthetic_root = prepare_synthetic_data(recipe, accelerator)
    check_data_paths(recipe, run.synthetic_root)
    run.processor = build_processor(recipe)
    return run


def run_script(main: Callable[[], Any]) -> None:
    """Run a script's `main`; a mistake in the recipe, the options or the output folder ends it with its message
    (exit status 1) instead of a traceback."""
    try:
        main()
    except (RecipeError, RunFolderError) as error:
        sys.exit(f"error: {error}")


__all__ = ["TrainingRun", "run_script", "start_run"]
