"""What a run reports: `summary.json` (with `model_index` entries for a model card), the stage table printed at the
end, and `curriculum.png` (loss curves with the stage boundaries, and the evaluation metrics stage by stage). All
of it comes from what the run recorded."""

from __future__ import annotations

import json
from pathlib import Path

# Metrics shown first in the table and the plot when present; fractions are printed as percentages.
HEADLINE_METRICS = (
    "t2v_r1",
    "t2v_r5",
    "v2t_r1",
    "temporal_probe_accuracy",
    "temporal_probe_itc_accuracy",
    "egomcq_inter_accuracy",
    "egomcq_intra_accuracy",
)
RANK_METRICS = ("t2v_median_rank", "t2v_mean_rank", "v2t_median_rank", "v2t_mean_rank")


# metric -> (task_type, task_name, metric_type, metric_name) of a `huggingface_hub.EvalResult`
MODEL_INDEX_METRICS = {
    "t2v_r1": ("text-to-video-retrieval", "Text-to-video retrieval", "recall", "R@1 (text-to-video)"),
    "t2v_r5": ("text-to-video-retrieval", "Text-to-video retrieval", "recall", "R@5 (text-to-video)"),
    "t2v_r10": ("text-to-video-retrieval", "Text-to-video retrieval", "recall", "R@10 (text-to-video)"),
    "v2t_r1": ("text-to-video-retrieval", "Text-to-video retrieval", "recall", "R@1 (video-to-text)"),
    "temporal_probe_accuracy": ("text-to-video-retrieval", "Text-to-video retrieval", "accuracy",
                                "Temporal probe accuracy"),
    "egomcq_inter_accuracy": ("multiple-choice", "EgoMCQ", "accuracy", "Inter-video accuracy"),
    "egomcq_intra_accuracy": ("multiple-choice", "EgoMCQ", "accuracy", "Intra-video accuracy"),
}
SUMMARY_STAGE_KEYS = ("name", "num_frames", "token_keep_rate", "checkpoint", "steps", "final_loss", "train_seconds",
                      "clips_per_second", "metrics")


def summary_record(recipe, run_state: dict) -> dict:
    """`summary.json`: the recipe, the size of the retrieval gallery (`num_test_videos`), per stage what it is and what
    it scored, and `model_index` entries (percentages) for the last stage's headline metrics."""
    stages = run_state["stages"]
    model_index = []
    if stages:
        datasets = {spec.kind: Path(spec.annotations).stem.replace("{synthetic}/", "") for spec in recipe.evaluation}
        synthetic = recipe.synthetic is not None
        for key, (task_type, task_name, metric_type, metric_name) in MODEL_INDEX_METRICS.items():
            if key not in stages[-1]["metrics"]:
                continue
            dataset = datasets.get("egomcq" if key.startswith("egomcq") else "retrieval", "evaluation")
            model_index.append(dict(
                task_type=task_type, task_name=task_name,
                dataset_type="synthetic-temporal" if synthetic else dataset,
                dataset_name=f"Synthetic temporal ({dataset})" if synthetic else dataset, dataset_split="test",
                metric_type=metric_type, metric_name=metric_name,
                metric_value=round(100 * stages[-1]["metrics"][key], 4), metric_config=None,
            ))
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


def plot_curriculum(metrics_path: str | Path, run_state: dict, output: str | Path) -> Path:
    """`curriculum.png`: the training losses against the global step, a line at every stage boundary (labelled with
    the stage's clip length and keep rate), and the headline metrics after every stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        curves.text(middle, 1.01, f"{stage['num_frames']}f, keep {stage['token_keep_rate']:g}",
                    transform=curves.get_xaxis_transform(), ha="center", va="bottom", fontsize=8)
        start = stage["end_step"]
    curves.set_xlabel("optimiser step")
    curves.set_ylabel("loss")
    curves.legend(loc="upper right", fontsize=8)
    curves.set_title("training losses by stage", pad=16)

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
    output = Path(output)
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return output
