"""Experiment trackers of the training scripts: `metrics.jsonl` always, and the `accelerate` trackers a run asks for
with `--report-to` (TensorBoard, Weights & Biases, MLflow, Trackio, ...), which get the recipe as the run's
hyper-parameters."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from accelerate.tracking import LOGGER_TYPE_TO_CLASS, GeneralTracker, get_available_trackers

# What `pip install` installs each of accelerate's trackers (where the package name differs from the tracker's).
PIP_PACKAGES = {"comet_ml": "comet-ml"}
TRACKER_LOGS = "logs"  # the output folder's sub-folder where trackers that write files write them


class JSONLinesTracker(GeneralTracker):
    """An accelerate tracker that appends every logged dictionary, with its step, as one line of `metrics.jsonl`."""

    name = "jsonl"
    requires_logging_directory = True

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        self.path = Path(path)

    @property
    def tracker(self):
        return self.path

    def store_init_configuration(self, values: dict) -> None:
        pass  # the recipe is in `recipe.yaml`

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, **values}) + "\n")


def tracker_names() -> list[str]:
    """The trackers `--report-to` takes besides `all` and `none`: accelerate's, installed or not."""
    return sorted(LOGGER_TYPE_TO_CLASS)


def resolve_report_to(values: Iterable[str]) -> list[str]:
    """The trackers to start for `--report-to` values (names, comma-separated lists, `all`: every installed tracker,
    `none`: only `metrics.jsonl`). Raises `ValueError` for an unknown name, or a tracker asked for by name whose
    package is not installed (with the `pip install` command), before anything runs."""
    names = [name.strip().lower() for value in values for name in value.split(",") if name.strip()]
    installed = [str(tracker) for tracker in get_available_trackers()]
    unknown = [name for name in names if name not in ("all", "none", *tracker_names())]
    if unknown:
        raise ValueError(
            f"--report-to {unknown[0]}: not a tracker; choose among all, none, {', '.join(tracker_names())}"
        )
    if "none" in names and len(set(names)) > 1:
        raise ValueError(f"--report-to none excludes the other trackers asked for: {', '.join(sorted(set(names)))}")
    missing = [name for name in names if name not in ("all", "none") and name not in installed]
    if missing:
        packages = " ".join(PIP_PACKAGES.get(name, name) for name in missing)
        raise ValueError(f"--report-to {', '.join(missing)}: not installed here; run `pip install {packages}`")
    chosen = installed if "all" in names else [name for name in names if name != "none"]
    return list(dict.fromkeys(chosen))


def tracker_loggers(output_dir: Path, report_to: Sequence[str]) -> list[Any]:
    """`log_with` of the accelerator: `metrics.jsonl` in `output_dir`, then the trackers of `report_to` (resolved)."""
    return [JSONLinesTracker(output_dir / "metrics.jsonl"), *report_to]


def flatten_hyperparameters(values: Any, prefix: str = "") -> dict[str, bool | int | float | str]:
    """Nested dictionaries, dataclasses and lists of them as one level of dotted keys (`stages.1.optimizer.lr`), with
    values every tracker takes: numbers, booleans and strings as they are, `None` as "null", lists of plain values and
    empty containers as their JSON text."""
    if dataclasses.is_dataclass(values) and not isinstance(values, type):
        values = dataclasses.asdict(values)
    nested = isinstance(values, dict) and values
    nested = nested or (isinstance(values, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in values))
    if not nested:
        if values is None:
            values = "null"
        elif isinstance(values, (dict, list, tuple)):
            values = json.dumps(values)
        elif not isinstance(values, (bool, int, float, str)):
            values = str(values)
        return {prefix: values}
    items = values.items() if isinstance(values, dict) else enumerate(values)
    flat: dict[str, bool | int | float | str] = {}
    for key, value in items:
        flat.update(flatten_hyperparameters(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


__all__ = [
    "JSONLinesTracker",
    "TRACKER_LOGS",
    "flatten_hyperparameters",
    "resolve_report_to",
    "tracker_loggers",
    "tracker_names",
]
