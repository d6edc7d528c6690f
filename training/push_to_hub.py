"""Share an SViTT checkpoint on the Hugging Face Hub, with a model card generated from the run's own results.

    python training/push_to_hub.py CHECKPOINT_DIR REPO_ID [--revision R] [--create-pr] [--private] [--stages]
    python training/push_to_hub.py CHECKPOINT_DIR REPO_ID --local-dir DIR   # write the push-ready folder only

CHECKPOINT_DIR is a `save_pretrained` folder holding its processor: the output folder of `training/pretrain.py`
(the last stage at its root, `summary.json`, `curriculum.png`, one folder per curriculum stage), a fine-tuned or
evaluated model (`results.json`), or a converted checkpoint. The repository receives the weights (safetensors), the
config (with the full `auto_map`), the processor and tokenizer files, the model source files (so the repo loads with
`trust_remote_code=True`), the pictures the run drew (the curriculum plot, token-selection pictures), the run's
records (`summary.json`, `results.json`, `metrics.jsonl`, the recipe; local paths in them made relative to the run or
data folder) and a model card written from them: the training recipe and stages, a `model-index` holding only the
numbers the run measured, the pictures. `--stages` also uploads every curriculum stage into its own folder
(`stage-1-4f/`, ...), loadable with `subfolder=`.

The token comes from huggingface_hub's usual sources (`HF_TOKEN`, `hf auth login`): this script never reads it into
an argument, prints it, logs it or writes it anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, get_token

from modeling_svitt.configuration_svitt import SViTTConfig
from modeling_svitt.remote_code import copy_model_sources, model_auto_map
from svitt_tools.model_card import CardContent, format_metric, render_model_card

WEIGHT_PATTERNS = ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json")
# a processor saved whole, and a video processor saved on its own (now, and in the first format)
PROCESSOR_CONFIGS = ("processor_config.json", "video_preprocessor_config.json", "preprocessor_config.json")
PROCESSOR_FILES = (
    *PROCESSOR_CONFIGS,
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
    "added_tokens.json",
)
RUN_RECORDS = ("summary.json", "results.json", "metrics.jsonl", "recipe.yaml", "recipe.yml", "recipe.json")
_EVAL_RESULT_FIELDS = set(EvalResult.__dataclass_fields__)
_REQUIRED_EVAL_FIELDS = {"task_type", "dataset_type", "dataset_name", "metric_type", "metric_value"}


class CheckpointError(ValueError):
    """The checkpoint folder cannot be pushed as it is (missing files, unreadable records)."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"Cannot read {path}: {error}") from error


def check_checkpoint(folder: Path) -> SViTTConfig:
    """The folder's config, after checking it holds an SViTT model, its weights and its processor."""
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder.")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{folder} has no config.json: it is not a `save_pretrained` folder.")
    model_type = _read_json(config_file).get("model_type")
    if model_type != "svitt":
        raise CheckpointError(f"{config_file} describes a {model_type!r} model, not an SViTT checkpoint ('svitt').")
    if not any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        raise CheckpointError(f"{folder} has no weights (model.safetensors or its shards).")
    has_processor = any((folder / name).is_file() for name in PROCESSOR_CONFIGS)
    has_tokenizer = (folder / "tokenizer_config.json").is_file() and any(
        (folder / name).is_file() for name in ("tokenizer.json", "vocab.txt")
    )
    if not (has_processor and has_tokenizer):
        raise CheckpointError(
            f"{folder} has no processor (processor_config.json, tokenizer_config.json and tokenizer.json / vocab.txt):"
            " save it beside the model with `processor.save_pretrained(folder)` so the repo loads with AutoProcessor."
        )
    return SViTTConfig.from_pretrained(folder)


def _copy_model_folder(source: Path, target: Path) -> None:
    """Weights, config, processor files and the package's model source (what `trust_remote_code` loads)."""
    target.mkdir(parents=True, exist_ok=True)
    for pattern in ("config.json",) + WEIGHT_PATTERNS + PROCESSOR_FILES:
        for path in source.glob(pattern):
            shutil.copyfile(path, target / path.name)
    config = _read_json(source / "config.json")
    if "auto_map" not in config:  # a config not written by SViTT's save_pretrained: the repo must name its classes
        config["auto_map"] = model_auto_map()
        (target / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    copy_model_sources(target)


def _stage_folders(run_dir: Path, summary: dict | None) -> list[Path]:
    if summary and summary.get("stages"):
        folders = [run_dir / stage["checkpoint"] for stage in summary["stages"] if stage.get("checkpoint")]
    else:
        folders = sorted(path for path in run_dir.glob("stage-*") if path.is_dir())
    if not folders:
        raise CheckpointError(f"--stages: {run_dir} has no curriculum stage folders (stage-<i>-<T>f/).")
    for folder in folders:
        if not folder.is_dir():
            raise CheckpointError(
                f"--stages: summary.json names the stage folder {folder.name}, but {folder} is missing."
            )
        check_checkpoint(folder)
    return folders


def _run_pictures(run_dir: Path, summary: dict | None) -> list[str]:
    """The pictures `pretrain.py` wrote (the curriculum plot, each stage's token selection), not any other picture a
    user keeps in the folder."""
    names = ["curriculum.png"] + [f"token_selection/{stage.get('name')}.png" for stage in (summary or {}).get("stages")
                                  or []]
    return [name for name in names if (run_dir / name).is_file()]


def _strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _replace_strings(value: Any, replacements: dict[str, str]) -> Any:
    if isinstance(value, str):
        return replacements.get(value, value)
    if isinstance(value, dict):
        return {key: _replace_strings(item, replacements) for key, item in value.items()}
    if isinstance(value, list):
        return [_replace_strings(item, replacements) for item in value]
    return value


def portable_paths(record: Any, run_dir: Path) -> Any:
    """`record` with every absolute local path made relative: to the run folder when inside it, else to the data
    root (the deepest folder holding all the other paths the record names), so no local path reaches the Hub."""
    run_root = Path(run_dir).resolve()
    replacements, outside = {}, {}
    for text in dict.fromkeys(text for text in _strings(record) if Path(text).is_absolute()):
        resolved = Path(text).resolve()
        if resolved == run_root or run_root in resolved.parents:
            replacements[text] = resolved.relative_to(run_root).as_posix()
        else:
            outside[text] = resolved
    if outside:
        data_root = Path(os.path.commonpath([path.parent for path in outside.values()]))
        for text, resolved in outside.items():
            # paths with nothing in common but the file system's root keep their names only
            replacements[text] = resolved.name if data_root == Path(data_root.anchor) else \
                resolved.relative_to(data_root).as_posix()
    return _replace_strings(record, replacements)


def _copy_record(source: Path, target: Path, run_dir: Path) -> None:
    """Copy a run record, with its local paths made relative (`portable_paths`); unchanged records keep their bytes."""
    if source.suffix not in (".json", ".yaml", ".yml"):
        shutil.copyfile(source, target)
        return
    import yaml

    text = source.read_text(encoding="utf-8")
    try:
        record = json.loads(text) if source.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise CheckpointError(f"Cannot read {source}: {error}") from error
    portable = portable_paths(record, run_dir)
    if portable == record:
        shutil.copyfile(source, target)
    elif source.suffix == ".json":
        target.write_text(json.dumps(portable, indent=1) + "\n", encoding="utf-8")
    else:
        target.write_text(yaml.safe_dump(portable, sort_keys=False), encoding="utf-8")


def _model_index(records: list[tuple[Path, dict]]) -> list[dict]:
    """The `model_index` entries of the run's summary and results files, checked and without repeats."""
    entries: list[dict] = []
    for path, record in records:
        for entry in record.get("model_index") or []:
            unknown = set(entry) - _EVAL_RESULT_FIELDS
            missing = _REQUIRED_EVAL_FIELDS - set(entry)
            if unknown or missing or not isinstance(entry.get("metric_value"), (int, float)):
                raise CheckpointError(
                    f"A model_index entry of {path} is not a set of huggingface_hub.EvalResult fields "
                    f"(unknown {sorted(unknown)}, missing {sorted(missing)}): {entry}"
                )
            if entry not in entries:
                entries.append(entry)
    return entries


def _training_section(summary: dict | None, stage_dirs: list[str], records: list[str]) -> str:
    if summary is None:
        return "The checkpoint folder holds no `summary.json`, so its training recipe is not recorded here."
    stages = summary.get("stages") or []
    metric_names = list(dict.fromkeys(name for stage in stages for name in (stage.get("metrics") or {})))
    gallery = summary.get("num_test_videos")
    chance = f" ({gallery} test videos, so chance R@1 is {100 / gallery:.1f}%)" if gallery else ""
    lines = [
        f"Trained with the `{summary.get('recipe', '?')}` recipe of `training/pretrain.py`, through {len(stages)} "
        "curriculum stage(s); each stage starts from the previous one's weights with the relative position bias "
        f"resampled to its clip length. Measured on the run's own evaluation split after each stage{chance}:",
        "",
        "| stage | frames | keep rate | train time | clips / s | " + " | ".join(metric_names) + " |",
        "| --- " * (5 + len(metric_names)) + "|",
    ]
    for stage in stages:
        metrics = stage.get("metrics") or {}
        cells = [format_metric(name, metrics[name]) if name in metrics else "" for name in metric_names]
        row = [
            stage.get("name", ""),
            stage.get("num_frames", ""),
            stage.get("token_keep_rate", ""),
            f"{stage.get('train_seconds', 0):.0f} s",
            f"{stage.get('clips_per_second', 0):.1f}",
            *cells,
        ]
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    if stage_dirs:
        lines += [
            "",
            f"Every stage is in its own folder of this repository ({', '.join(f'`{name}`' for name in stage_dirs)}); "
            "load one with `from_pretrained(repo_id, subfolder=...)`. The root holds the last stage.",
        ]
    lines += ["", "The run's records are in this repository: " + ", ".join(f"`{name}`" for name in records) + "."]
    return "\n".join(lines)


def _evaluation_note(results: list[tuple[str, dict]], has_entries: bool) -> str:
    lines = []
    if not has_entries:
        lines.append(
            "No evaluation was recorded for these weights (no `model_index` in `summary.json` or `results.json`), so "
            "the card carries no evaluation numbers. Evaluate with `training/evaluate.py` and push again."
        )
    for name, record in results:
        dataset, sparsity = record.get("dataset") or {}, record.get("sparsity") or {}
        lines.append(
            f"- `{name}`: {record.get('task', '?')} on {dataset.get('name', '?')} ({dataset.get('split', '?')}), "
            f"{record.get('num_frames', '?')} frames per video in {record.get('num_clips', '?')} clip(s) of "
            f"{record.get('clip_length', '?')} frames ({record.get('clip_aggregation', '?')} over clips), "
            f"token keep rate {sparsity.get('token_keep_rate', '?')}, "
            f"fusion keep rate {sparsity.get('fusion_token_keep_rate', '?')}."
        )
    return "\n".join(lines)


def _picture_caption(path: str) -> str:
    if Path(path).name == "curriculum.png":
        return "Training curriculum: losses with the stage boundaries, and the metrics after each stage"
    if re.search(r"token|select|keep|kept|prun", path.lower()):
        return f"Tokens kept by node sparsity (`{path}`)"
    return f"`{path}`"


def build_run_card(
    config: SViTTConfig,
    repo_id: str,
    summary: dict | None,
    results: list[tuple[str, dict]],
    entries: list[dict],
    pictures: list[str],
    stage_dirs: list[str],
    records: list[str],
) -> ModelCard:
    """The model card of a run: its summary, its results (named as in the repo), their `model_index` entries, its
    pictures, stage folders and records."""
    recipe = (summary or {}).get("recipe")
    content = CardContent(
        title=repo_id.split("/")[-1],
        load_name=repo_id,
        origin=f"Trained with this package (`{recipe}` recipe)." if recipe else "A checkpoint saved by this package.",
        training=_training_section(summary, stage_dirs, records),
        eval_results=entries,
        evaluation_note=_evaluation_note(results, bool(entries)),
        pictures=[(path, _picture_caption(path)) for path in pictures],
        show_reported=recipe in ("svitt", "svitt-ego"),
    )
    return render_model_card(config, content)


def prepare_push_folder(
    checkpoint_dir: str | Path,
    output_dir: str | Path,
    repo_id: str,
    *,
    stages: bool = False,
    results_files: list[str | Path] = (),
) -> Path:
    """Write everything the Hub repo of `checkpoint_dir` will hold into `output_dir` (no network)."""
    run_dir, output = Path(checkpoint_dir), Path(output_dir)
    config = check_checkpoint(run_dir)
    if output.resolve() == run_dir.resolve():
        raise CheckpointError("The push-ready folder must not be the checkpoint folder itself.")
    if output.exists() and any(output.iterdir()):
        raise CheckpointError(f"{output} exists and is not empty; choose another folder.")
    summary = _read_json(run_dir / "summary.json") if (run_dir / "summary.json").is_file() else None
    stage_dirs = _stage_folders(run_dir, summary) if stages else []
    # the run's records keep their names; results written elsewhere become results-<i>.json
    records = {name: run_dir / name for name in RUN_RECORDS if (run_dir / name).is_file()}
    for index, path in enumerate(map(Path, results_files), start=1):
        if not path.is_file():
            raise CheckpointError(f"--results {path}: no such file.")
        records[f"results-{index}.json"] = path
    results = [(name, _read_json(path)) for name, path in records.items() if name.startswith("results")]
    measured = [(run_dir / "summary.json", summary)] if summary else []
    entries = _model_index(measured + [(records[name], record) for name, record in results])
    pictures = _run_pictures(run_dir, summary)

    _copy_model_folder(run_dir, output)
    for name, path in records.items():
        _copy_record(path, output / name, run_dir)
    for picture in pictures:
        (output / picture).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run_dir / picture, output / picture)
    stage_names = [stage_dir.relative_to(run_dir).as_posix() for stage_dir in stage_dirs]
    for name in stage_names:
        _copy_model_folder(run_dir / name, output / name)
    card = build_run_card(config, repo_id, summary, results, entries, pictures, stage_names, list(records))
    card.save(output / "README.md")
    return output


def push_run_to_hub(
    checkpoint_dir: str | Path,
    repo_id: str,
    *,
    revision: str | None = None,
    create_pr: bool = False,
    private: bool | None = None,
    stages: bool = False,
    results_files: list[str | Path] = (),
    commit_message: str | None = None,
):
    """Upload a checkpoint folder and its generated card in one commit; returns huggingface_hub's `CommitInfo`.

    `pretrain.py --push-to-hub REPO_ID` calls this on its output folder at the end of the run.
    """
    if create_pr and revision is not None:
        raise CheckpointError("--create-pr opens a pull request against the main branch; it cannot take --revision.")
    if get_token() is None:
        raise CheckpointError("No Hugging Face token found: run `hf auth login` or set HF_TOKEN, then push again.")
    api = HfApi(library_name="svitt")
    with tempfile.TemporaryDirectory(prefix="svitt-push-") as folder:
        prepare_push_folder(checkpoint_dir, folder, repo_id, stages=stages, results_files=results_files)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision is not None and not revision.startswith("refs/pr/"):  # an existing pull request's ref is kept
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            revision=revision,
            create_pr=create_pr,
            commit_message=commit_message or f"Upload SViTT checkpoint {Path(checkpoint_dir).name}",
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint_dir", help="a save_pretrained folder with its processor (e.g. a training run)")
    parser.add_argument("repo_id", help="the Hub repository, `user/name` (also the name the card's examples load)")
    parser.add_argument("--revision", help="branch to push to (created if missing)")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--stages", action="store_true", help="also upload every curriculum stage to its folder")
    parser.add_argument(
        "--results",
        action="append",
        default=[],
        metavar="FILE",
        help="a results.json written elsewhere by evaluate.py / finetune.py (repeatable)",
    )
    parser.add_argument("--commit-message", help="the commit message")
    parser.add_argument("--local-dir", metavar="DIR", help="write the push-ready folder to DIR and upload nothing")
    args = parser.parse_args(argv)

    try:
        if args.local_dir:
            prepare_push_folder(
                args.checkpoint_dir, args.local_dir, args.repo_id, stages=args.stages, results_files=args.results
            )
            print(
                f"Wrote the push-ready folder {args.local_dir}: AutoModel.from_pretrained({args.local_dir!r}) loads it."
            )
            return
        commit = push_run_to_hub(
            args.checkpoint_dir,
            args.repo_id,
            revision=args.revision,
            create_pr=args.create_pr,
            private=args.private or None,
            stages=args.stages,
            results_files=args.results,
            commit_message=args.commit_message,
        )
    except CheckpointError as error:
        parser.exit(2, f"error: {error}\n")
    print(f"Pushed {args.checkpoint_dir} to {commit.pr_url or commit.commit_url}")


if __name__ == "__main__":
    main()
