"""Evaluate an SViTT checkpoint with the release's protocols, on one process or many; or sweep inference-time
sparsity over a grid of settings.

    accelerate launch training/evaluate.py --task retrieval --model ft-msrvtt \\
        --annotations data/msrvtt/msrvtt_ret_test1k.json --media-root data/msrvtt/videos --output-dir eval-msrvtt
    python training/evaluate.py --task qa --model ft-msrvtt-qa --annotations data/msrvtt_qa/test.json \\
        --answer-list data/msrvtt_qa/answer_list.json --media-root data/msrvtt/videos
    python training/evaluate.py --task multiple_choice --model svitt-ego --recipe mc-egomcq   # a recipe's test settings
    python training/evaluate.py --task retrieval --model outputs/synthetic --dataset synthetic --no-itm \\
        --sweep token_keep_rate=1.0,0.7,0.5,0.3 --sweep fusion_token_keep_rate=1.0,0.5,0.1

Retrieval scores all pairs by ITC, re-ranks each query's top `--k` by ITM in both directions, ensembles `--num-clips`
clips per video (`--clip-aggregation lse|mean|max`) and reports R@1/5/10, MedR and MnR both ways; QA ranks the answer
list and reports accuracy (overall and per question type); EgoMCQ reports inter- and intra-video accuracy. Without a
recipe the release's defaults apply (12 / 24 test frames: 3 clips of the model's clip length for retrieval and QA).

Writes `results.json` (metrics, model, data files, frames, sparsity, library versions, `model_index` entries for a
model card) into the output folder and prints a table; a sweep writes `sweep.json`, `sweep.md` and `sweep.png` (every
metric against measured seconds per video and the video tower's analytic GMACs) instead, from one loaded model and one
decoded copy of the data. An earlier evaluation's results in the output folder are kept unless `--overwrite`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
from pathlib import Path

from modeling_svitt import SViTTProcessor
from modeling_svitt.answer_ranking import ANSWER_SCORINGS
from modeling_svitt.clip_ensemble import CLIP_AGGREGATIONS
from training.evaluation_loops import (
    EVALUATION_HEADS,
    build_evaluation_dataset,
    checkpoint_problem,
    evaluation_results,
    load_checkpoint_config,
)
from training.launch import make_accelerator, plain_loading
from training.recipe import (
    EVALUATION_TASKS,
    RENAMED_VALUES,
    SYNTHETIC_TASK_RECIPES,
    EvaluationSpec,
    RecipeError,
    load_recipe,
    validate_evaluation,
)
from training.recipe_data import prepare_synthetic_data
from training.report import plot_sweep, results_table, sweep_table
from training.run import run_script
from training.run_folder import RunFolderError, write_json_atomically
from training.sweep import parse_settings, run_sweep, settings_applied, values_of

# 12 / 24 test frames as 3 clips; EgoMCQ one clip
RELEASE_NUM_CLIPS = {"retrieval": 3, "qa": 3, "multiple_choice": 1}
# option -> EvaluationSpec field, for the options that override a field
SPEC_OPTIONS = {
    "annotations": "annotations", "answer_list": "answer_list", "media_root": "media_root", "num_clips": "num_clips",
    "clip_aggregation": "clip_aggregation", "k": "k", "use_itm": "use_itm", "qa_scoring": "qa_scoring",
    "paragraphs": "is_paragraph_retrieval", "multi_video_captions": "has_multi_vision_gt",
    "path_template": "path_template", "chunk_seconds": "chunk_seconds", "batch_size": "batch_size",
    "num_workers": "num_workers", "dataset_name": "dataset_name", "dataset_type": "dataset_type", "split": "split",
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, type=task_name, choices=EVALUATION_TASKS)
    parser.add_argument("--model", required=True, help="the checkpoint: a save_pretrained folder or a Hub id")
    parser.add_argument("--dataset", choices=["synthetic"],
                        help="the built-in synthetic split of the task (retrieval with the temporal probe, QA, EgoMCQ)")
    parser.add_argument("--recipe", help="take the test settings (and synthetic set) of a recipe's evaluation entry")
    parser.add_argument("--annotations", help="the test annotation file")
    parser.add_argument("--answer-list", help="QA: the JSON list of candidate answers")
    parser.add_argument("--media-root", help="the folder the annotations' video paths are relative to")
    parser.add_argument("--output-dir", help="where results go (default: outputs/eval-<model>-<task>-<annotation "
                                             "file>-<digest of their paths>)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results.json (sweep.json) of an earlier evaluation in the output folder")
    parser.add_argument("--num-clips", type=int, help="clips of the model's clip length per test video (default 3; 1 "
                                                      "for EgoMCQ and for the synthetic set)")
    parser.add_argument("--clip-aggregation", choices=CLIP_AGGREGATIONS, help="how clip scores combine")
    parser.add_argument("--k", type=int, help="candidates re-ranked by ITM / answers ranked in full (default 128)")
    parser.add_argument("--no-itm", dest="use_itm", action="store_false", default=None, help="rank by ITC alone")
    parser.add_argument("--qa-scoring", choices=ANSWER_SCORINGS, help="how QA ranks the answer list")
    parser.add_argument("--paragraphs", action="store_true", default=None,
                        help="retrieval: join each video's captions into one (DiDeMo)")
    parser.add_argument("--multi-video-captions", action="store_true", default=None,
                        help="retrieval: one entry per caption, which may name several videos (SSv2)")
    parser.add_argument("--path-template", help="EgoMCQ: video file of a clip, e.g. '{video_uid}/{chunk}.mp4'")
    parser.add_argument("--chunk-seconds", type=float, help="EgoMCQ: length of the chunk files (Ego4D: 600)")
    parser.add_argument("--max-text-length", type=int, help="caption / question tokens (default: the processor's)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--num-workers", type=int)
    parser.add_argument("--dataset-type", help="dataset id for results.json and model cards (e.g. msrvtt)")
    parser.add_argument("--dataset-name", help="dataset name for results.json and model cards")
    parser.add_argument("--split", help="split name for results.json and model cards (default test)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="an inference-time setting of the model, e.g. token_keep_rate=0.5; repeatable")
    parser.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="evaluate every combination of these values (grid), e.g. token_keep_rate=1.0,0.5; "
                             "repeatable")
    parser.add_argument("--repeats", type=int, default=1,
                        help="sweeps: time every point this many times and report the median (default 1)")
    args = parser.parse_args(argv)
    if args.dataset and args.annotations:
        parser.error("--dataset synthetic and --annotations exclude each other")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if not (args.dataset or args.annotations or args.recipe):
        parser.error("say what to evaluate: --annotations FILE (with --media-root), --recipe, or --dataset synthetic")
    return args


def task_name(value: str) -> str:
    """`--task`, with the new name of a task that earlier versions spelled otherwise."""
    renamed = RENAMED_VALUES["kind"].get(value)
    if renamed:
        raise argparse.ArgumentTypeError(f"--task {value} is now spelled --task {renamed}")
    return value


def evaluation_spec(args: argparse.Namespace) -> tuple[EvaluationSpec, dict | None, str]:
    """The evaluation entry (from the recipe, or the release's defaults), overridden by the options given; the
    recipe's synthetic section; the recipe's name (`None` without a recipe)."""
    recipe_name = args.recipe or (SYNTHETIC_TASK_RECIPES[args.task] if args.dataset else None)
    synthetic = None
    if recipe_name:
        recipe = load_recipe(recipe_name)
        specs = [spec for spec in recipe.evaluation if spec.kind == args.task]
        if not specs:
            kinds = [other.kind for other in recipe.evaluation]
            raise RecipeError(f"--recipe {recipe_name}: it evaluates {kinds}, not {args.task}")
        spec, synthetic = specs[0], recipe.synthetic
        if args.dataset:  # the synthetic clips hold 16 frames: one clip of the model's length, as pretraining reads
            spec = dataclasses.replace(spec, num_clips=1)
    else:
        spec = EvaluationSpec(kind=args.task, num_clips=RELEASE_NUM_CLIPS[args.task])
    given = {field: getattr(args, option) for option, field in SPEC_OPTIONS.items()}
    given = {field: value for field, value in given.items() if value is not None}
    if "annotations" in given and synthetic is not None:
        synthetic = None  # the recipe's synthetic set is not what is evaluated
    spec = dataclasses.replace(spec, **given)

    def check(condition, field, message):
        if not condition:
            raise RecipeError(f"--{field.rsplit('.', 1)[-1].replace('_', '-')}: {message}")

    validate_evaluation(spec, check, "evaluation")
    return spec, synthetic, recipe_name


def default_output_dir(model: str, spec: EvaluationSpec) -> Path:
    """`outputs/eval-<model>-<task>-<data>-<digest>`: the digest of the model's and the data's full paths tells apart
    evaluations of models or annotation files of the same name."""
    data = Path(spec.annotations).stem if spec.annotations else "data"
    located = [str(Path(value).resolve()) if Path(value).exists() else value
               for value in (model, spec.annotations, spec.answer_list, spec.media_root) if value]
    digest = hashlib.sha256(json.dumps(located).encode()).hexdigest()[:8]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"eval-{Path(model).name}-{spec.kind}-{data}-{digest}")
    return (Path("outputs") / name).resolve()


def main(argv=None) -> dict:
    args = parse_args(argv)
    settings = parse_settings(args.settings, "--set", several=False)
    grid = parse_settings(args.sweep, "--sweep", several=True)
    spec, synthetic, recipe_name = evaluation_spec(args)
    config = load_checkpoint_config(args.model)
    # every setting the evaluation will run with (--set replaces the spec's, --sweep adds its values)
    use_itm = (values_of(settings, "use_itm") or [spec.use_itm]) + values_of(grid, "use_itm")
    scorings = (values_of(settings, "multiple_choice_scoring") or [config.multiple_choice_scoring])
    scorings += values_of(grid, "multiple_choice_scoring")
    itm = (spec.kind == "retrieval" and any(use_itm)) or (spec.kind == "multiple_choice" and "itm" in scorings)
    problem = checkpoint_problem(config, args.task, training=False, use_itm=itm)
    if problem:
        raise RecipeError(f"--model {args.model} cannot be evaluated on --task {args.task}: {problem}")
    output_dir = Path(args.output_dir).resolve() if args.output_dir else default_output_dir(args.model, spec)
    written = output_dir / ("sweep.json" if grid else "results.json")
    if written.is_file() and not args.overwrite:
        raise RunFolderError(f"{written} holds an earlier evaluation and is kept: pass --overwrite to replace it, or "
                             "--output-dir to write elsewhere.")

    accelerator = make_accelerator(log=False)
    synthetic_root = None
    if synthetic is not None:
        recipe = dataclasses.replace(load_recipe(recipe_name), synthetic=synthetic)
        synthetic_root = prepare_synthetic_data(recipe, accelerator)
    processor = SViTTProcessor.from_pretrained(args.model)
    if args.max_text_length:
        processor.max_text_length = args.max_text_length
    clip_length = config.vision_config.num_frames
    dataset = build_evaluation_dataset(
        spec, processor, clip_length, synthetic_root, lambda field: "--" + field.replace("_", "-")
    )
    with plain_loading():
        model = EVALUATION_HEADS[spec.kind].from_pretrained(args.model).to(accelerator.device).eval()
    single = {key: values[0] for key, values in settings.items()}
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)

    with settings_applied(model, spec, single) as spec:
        if grid:
            rows = run_sweep(accelerator, model, dataset, processor, spec, grid, args.repeats)
            if accelerator.is_main_process:
                record = {"task": spec.kind, "model": args.model, "fixed_settings": single, "num_samples": len(dataset),
                          "clip_length": clip_length, "num_clips": spec.num_clips, "rows": rows}
                write_json_atomically(output_dir / "sweep.json", record)
                table = sweep_table(rows)
                (output_dir / "sweep.md").write_text(table + "\n", encoding="utf-8")
                plot_sweep(rows, output_dir / "sweep.png")
                print(table)
                print(f"\nWrote {output_dir / 'sweep.json'}, {output_dir / 'sweep.md'}, {output_dir / 'sweep.png'}")
            return record if accelerator.is_main_process else {}
        record = evaluation_results(
            accelerator, model, dataset, processor, spec, model_name=args.model, synthetic_root=synthetic_root
        )
    if accelerator.is_main_process:
        write_json_atomically(output_dir / "results.json", record)
        print(results_table(record))
        print(f"\nWrote {output_dir / 'results.json'}")
    return record


if __name__ == "__main__":
    run_script(main)
