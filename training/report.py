"""What runs report: `summary.json` of a pretraining run and `results.json` of an evaluation (both with
`model_index` entries for a model card), the tables printed at the end, `curriculum.png` (loss curves with the stage
boundaries, and the evaluation metrics stage by stage) and the sweep table and plot (each metric against measured
seconds per video and the analytic cost of the video tower). All of it comes from what the run recorded."""

from __future__ import annotations

import importlib.metadata
import json
import platform
from pathlib import Path
from typing import Any

from svitt_tools.model_card import format_metric, is_rank_metric

# Metrics shown first in the table and the plot when present; fractions are printed as percentages.
HEADLINE_METRICS = (
    "t2v_r1",
    "t2v_r5",
    "v2t_r1",
    "temporal_probe_accuracy",
    "temporal_probe_itc_accuracy",
    "qa_accuracy",
    "egomcq_inter_accuracy",
    "egomcq_intra_accuracy",
)


# metric -> (task_type, task_name, metric_type, metric_name) of a `huggingface_hub.EvalResult`
MODEL_INDEX_METRICS = {
    "t2v_r1": ("text-to-video-retrieval", "Text-to-video retrieval", "recall", "R@1 (text-to-video)"),
    "t2v_r5": ("text-to-video-retrieval", "Text-to-video retrieval", "recall", "R@5 (text-to-video)"),
    "t2v_r10": ("text-to-video-retrieval", "Text-to-video retrieval", "recall", "R@10 (text-to-video)"),
    "v2t_r1": ("text-to-video-retrieval", "Text-to-video retrieval", "recall", "R@1 (video-to-text)"),
    "temporal_probe_accuracy": ("text-to-video-retrieval", "Text-to-video retrieval", "accuracy",
                                "Temporal probe accuracy"),
    "qa_accuracy": ("video-question-answering", "Video question answering", "accuracy", "Accuracy"),
    "egomcq_inter_accuracy": ("multiple-choice", "EgoMCQ", "accuracy", "Inter-video accuracy"),
    "egomcq_intra_accuracy": ("multiple-choice", "EgoMCQ", "accuracy", "Intra-video accuracy"),
}
SUMMARY_STAGE_KEYS = ("name", "num_frames", "token_keep_rate", "checkpoint", "steps", "final_loss", "train_seconds",
                      "clips_per_second", "metrics")


def metric_kind(name: str) -> str:
    """The evaluation task (`retrieval`, `qa`, `multiple_choice`) a metric comes from (EgoMCQ's are `egomcq_*`)."""
    return "multiple_choice" if name.startswith("egomcq") else "qa" if name.startswith("qa_") else "retrieval"


def dataset_description(spec, synthetic: bool) -> tuple[str, str, str]:
    """`(dataset_type, dataset_name, split)` of an evaluation spec: its own names, else from the annotation file."""
    stem = Path(spec.annotations).stem
    if spec.dataset_type or spec.dataset_name:
        return spec.dataset_type or stem, spec.dataset_name or spec.dataset_type, spec.split
    if synthetic:
        return "synthetic-temporal", f"Synthetic temporal ({stem})", spec.split
    return stem, stem, spec.split


def model_index_entries(
    metrics: dict[str, Any], dataset_type: str, dataset_name: str, dataset_split: str = "test",
    metric_config: str | None = None,
) -> list[dict]:
    """`huggingface_hub.EvalResult` keyword arguments (values in percent) for the headline metrics in `metrics`."""
    entries = []
    for key, (task_type, task_name, metric_type, metric_name) in MODEL_INDEX_METRICS.items():
        if isinstance(metrics.get(key), (int, float)):
            entries.append(dict(
                task_type=task_type, task_name=task_name, dataset_type=dataset_type, dataset_name=dataset_name,
                dataset_split=dataset_split, metric_type=metric_type, metric_name=metric_name,
                metric_value=round(100 * metrics[key], 4), metric_config=metric_config,
            ))
    return entries


def summary_record(recipe, run_state: dict) -> dict:
    """`summary.json`: the recipe, the size of the retrieval gallery (`num_test_videos`), per stage what it is and what
    it scored, and `model_index` entries (percentages) for the last stage's headline metrics."""
    stages = run_state["stages"]
    model_index = []
    if stages:
        metrics = stages[-1]["metrics"]
        for spec in recipe.evaluation:
            own = {key: value for key, value in metrics.items() if metric_kind(key) == spec.kind}
            model_index += model_index_entries(own, *dataset_description(spec, recipe.synthetic is not None))
    return {
        "recipe": recipe.name,
        "seed": recipe.seed,
        "num_test_videos": run_state.get("num_test_videos"),
        "stages": [{key: record[key] for key in SUMMARY_STAGE_KEYS} for record in stages],
        "model_index": model_index,
    }


def _headline(stages: list[dict]) -> list[str]:
    present = {key for stage in stages for key in stage["metrics"]}
    return [key for key in HEADLINE_METRICS if key in present]


def summary_table(run_state: dict) -> str:
    """A Markdown table with one row per stage: clip length, keep rate, time, throughput and headline metrics."""
    stages = run_state["stages"]
    metrics = _headline(stages)
    header = ["stage", "frames", "keep", "steps", "train s", "clips/s", "final loss"] + metrics
    rows = [header, ["---"] * len(header)]
    for stage in stages:
        row = [
            stage["name"],
            str(stage["num_frames"]),
            f"{stage['token_keep_rate']:g}",
            str(stage["steps"]),
            f"{stage['train_seconds']:.0f}",
            f"{stage['clips_per_second']:.1f}" if stage.get("clips_per_second") else "-",
            f"{stage['final_loss']:.3f}" if stage.get("final_loss") is not None else "-",
        ]
        row += [f"{100 * stage['metrics'][key]:.1f}%" if key in stage["metrics"] else "-" for key in metrics]
        rows.append(row)
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    if run_state.get("num_test_videos"):
        count = run_state["num_test_videos"]
        lines.append(f"\n{count} test videos: chance R@1 = {100 / count:.1f}%, temporal probe chance = 50%.")
    return "\n".join(lines)


def _read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _pyplot():
    """matplotlib's pyplot drawing off screen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, output: str | Path) -> Path:
    output = Path(output)
    figure.savefig(output, dpi=110)
    _pyplot().close(figure)
    return output


def plot_curriculum(metrics_path: str | Path, run_state: dict, output: str | Path) -> Path:
    """`curriculum.png`: the training losses against the global step, a line at every stage boundary (labelled with
    the stage's clip length and keep rate), and the headline metrics after every stage."""
    plt = _pyplot()

    entries = [entry for entry in _read_log(Path(metrics_path)) if "loss" in entry]
    stages = run_state["stages"]
    figure, (curves, scores) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    for key, label in (("loss", "total"), ("loss_itc", "ITC"), ("loss_itm", "ITM"), ("loss_mlm", "MLM")):
        points = [(entry["step"], entry[key]) for entry in entries if key in entry]
        if points:
            curves.plot(*zip(*points), label=label, linewidth=1.5 if key == "loss" else 1.0)
    start = 0
    for stage in stages:
        curves.axvline(stage["end_step"], color="grey", linestyle="--", linewidth=0.8)
        middle = (start + stage["end_step"]) / 2
        # two short lines: a stage of a few steps is narrow, and one-line labels of neighbours would overlap
        curves.text(middle, 1.01, f"{stage['num_frames']}f\nkeep {stage['token_keep_rate']:g}",
                    transform=curves.get_xaxis_transform(), ha="center", va="bottom", fontsize=8)
        start = stage["end_step"]
    curves.set_xlabel("optimiser step")
    curves.set_ylabel("loss")
    curves.legend(loc="upper right", fontsize=8)
    curves.set_title("training losses by stage", pad=28)

    names = _headline(stages)
    positions = range(1, len(stages) + 1)
    for key in names:
        scores.plot(positions, [100 * stage["metrics"].get(key, float("nan")) for stage in stages], marker="o",
                    label=key)
    count = run_state.get("num_test_videos")
    if count:
        scores.axhline(100 / count, color="grey", linestyle=":", linewidth=0.8, label="chance R@1")
    scores.set_xticks(list(positions), [f"{s['num_frames']}f\nkeep {s['token_keep_rate']:g}" for s in stages])
    scores.set_ylabel("%")
    scores.set_ylim(0, 100)
    scores.legend(fontsize=7, loc="best")
    scores.set_title("zero-shot evaluation after each stage")
    figure.tight_layout()
    return _save(figure, output)


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation results and sweeps
# ----------------------------------------------------------------------------------------------------------------------

SPARSITY_FIELDS = {
    "vision_config": ("use_sparse_attention", "attention_block_size", "num_local_blocks", "num_random_blocks",
                      "token_keep_rate", "token_drop_layers", "token_keep_strategy", "prune_after_mlp"),
    "text_config": ("fusion_token_keep_rate", "fusion_token_drop_layers", "fusion_token_keep_strategy"),
}


def sparsity_settings(config) -> dict[str, Any]:
    """The edge and node sparsity settings of a model config, flat."""
    return {name: getattr(getattr(config, part), name) for part, names in SPARSITY_FIELDS.items() for name in names}


def library_versions() -> dict[str, str]:
    versions = {}
    for name in ("svitt", "torch", "transformers", "accelerate"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["python"] = platform.python_version()
    return versions


def results_record(
    *, spec, model: str, config, metrics: dict[str, float], num_samples: int, synthetic: bool,
    files: list[str], media_root: str | None, video_tower_gmacs: float,
) -> dict[str, Any]:
    """`results.json` of an evaluation: what was evaluated (model, data files, frames, clips, sparsity, protocol),
    what it scored, the library versions, and `model_index` entries for a model card."""
    clip_length = config.vision_config.num_frames
    dataset_type, dataset_name, split = dataset_description(spec, synthetic)
    setting = (
        f"{clip_length * spec.num_clips} frames ({spec.num_clips} clip(s) of {clip_length}, {spec.clip_aggregation}), "
        f"token keep {config.vision_config.token_keep_rate:g}, "
        f"fusion keep {config.text_config.fusion_token_keep_rate:g}"
    )
    protocol = {"k": spec.k}
    if spec.kind == "retrieval":
        protocol.update(use_itm=spec.use_itm, paragraphs=spec.is_paragraph_retrieval,
                        multi_video_captions=spec.has_multi_vision_gt)
    if spec.kind == "qa":
        protocol["qa_scoring"] = spec.qa_scoring
    return {
        "task": spec.kind,
        "model": model,
        "dataset": {"name": dataset_name, "type": dataset_type, "split": split, "annotations": files,
                    "media_root": media_root},
        "num_samples": num_samples,
        "num_frames": clip_length * spec.num_clips,
        "clip_length": clip_length,
        "num_clips": spec.num_clips,
        "clip_aggregation": spec.clip_aggregation,
        "protocol": protocol,
        "sparsity": sparsity_settings(config),
        "video_tower_gmacs_per_video": round(video_tower_gmacs, 6),
        "metrics": metrics,
        "versions": library_versions(),
        "model_index": model_index_entries(metrics, dataset_type, dataset_name, split, setting),
    }


def results_table(record: dict[str, Any]) -> str:
    """A Markdown table of an evaluation's metrics, under a line saying what was evaluated."""
    dataset = record["dataset"]
    lines = [
        f"{record['task']} on {dataset['name']} ({dataset['split']}, {record['num_samples']} samples), "
        f"{record['num_frames']} frames per video in {record['num_clips']} clip(s), model {record['model']}",
        "",
        "| metric | value |",
        "| --- | --- |",
    ]
    lines += [f"| {name} | {format_metric(name, value)} |" for name, value in record["metrics"].items()]
    return "\n".join(lines)


def _sweep_metrics(rows: list[dict], names: tuple[str, ...] = HEADLINE_METRICS) -> list[str]:
    present = list(rows[0]["metrics"])
    return [name for name in names if name in present] or present


def sweep_table(rows: list[dict]) -> str:
    """A Markdown table with one row per grid point: its settings, the video tower's analytic GMACs and the measured
    seconds per video, and the metrics."""
    settings = list(rows[0]["settings"])
    metrics = _sweep_metrics(rows) if len(rows[0]["metrics"]) > 6 else list(rows[0]["metrics"])
    header = settings + ["GMACs / video", "s / video"] + metrics
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = [str(row["settings"][name]) for name in settings]
        cells += [f"{row['video_tower_gmacs']:.4g}", f"{row['seconds_per_video']:.4f}"]
        cells += [format_metric(name, row["metrics"].get(name, "-")) for name in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# the metrics a sweep plot shows, when present (one row of panels each)
SWEEP_PLOT_METRICS = ("t2v_r1", "v2t_r1", "temporal_probe_accuracy", "qa_accuracy", "egomcq_inter_accuracy",
                      "egomcq_intra_accuracy")


def plot_sweep(rows: list[dict], output: str | Path) -> Path:
    """`sweep.png`: the headline metrics (one row of panels each) against the measured seconds per video (left) and
    the video tower's analytic GMACs per video (right). The last swept setting picks the colour of a point (one line
    per value); the point is labelled with the values of the other settings."""
    plt = _pyplot()
    metrics = _sweep_metrics(rows, SWEEP_PLOT_METRICS)
    keys = list(rows[0]["settings"])
    series_key, label_keys = keys[-1], keys[:-1]
    series: dict[str, list[dict]] = {}
    for row in rows:
        series.setdefault(f"{series_key}={row['settings'][series_key]}", []).append(row)
    figure, axes = plt.subplots(len(metrics), 2, figsize=(11, 3.4 * len(metrics)), squeeze=False)
    for axis_row, name in zip(axes, metrics):
        scale = 1 if is_rank_metric(name) else 100
        for axis, key, xlabel in zip(axis_row, ("seconds_per_video", "video_tower_gmacs"),
                                     ("measured seconds per video", "video tower GMACs per video (analytic)")):
            for label, members in series.items():
                members = sorted(members, key=lambda row: row[key])
                xs = [row[key] for row in members]
                ys = [scale * row["metrics"][name] for row in members]
                # the analytic cost orders the points; measured times are noisy, so they are not joined
                axis.plot(xs, ys, marker="o", label=label, linestyle="-" if key == "video_tower_gmacs" else "none")
                for x, y, row in zip(xs, ys, members):
                    text = ", ".join(str(row["settings"][other]) for other in label_keys)
                    axis.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
            axis.set_xlabel(xlabel)
            axis.set_ylabel(name + (" (%)" if scale == 100 else ""))
            axis.grid(alpha=0.3)
        axis_row[0].legend(fontsize=7, loc="best")
    caption = f"points labelled by {', '.join(label_keys)}" if label_keys else ""
    figure.suptitle(f"inference-time sparsity sweep (one loaded model, the same decoded videos) {caption}".strip())
    figure.tight_layout()
    return _save(figure, output)
