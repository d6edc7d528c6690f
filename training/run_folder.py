"""The output folder of a training run: who owns it, when a run continues in it and when it is refused, and the files
it writes so that a kill, a full disk or a power loss never leaves it unusable.

A run marks the folder it creates (`.svitt-run.json`, holding the run's fingerprint: the recipe as run, the starting
model, `--max-steps`, the seed, the number of processes, the package version) and holds a lock on it while it runs
(`.svitt-run.lock`, naming the host and process id). A later run into the same folder continues only when its
fingerprint is the same; a non-empty folder without the mark is never written into. Saved training states live in
`checkpoints/<name>-step-<N>/`; only folders of that naming are rotated or removed.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import json
import os
import re
import shutil
import socket
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, the run goes without one
    fcntl = None

MARKER = ".svitt-run.json"
LOCK = ".svitt-run.lock"
STATES_MARKER = ".svitt-states"
STATE_NAME = re.compile(r"^(?:\.tmp-)?.+-step-\d{7}$")
KEEP_STATES = 2  # the newest state and the one before it, in case the newest cannot be read
# What every run writes into its folder, besides the records its script names (`owned` of `claim_output_folder`).
MODEL_FILES = (
    "config.json", "generation_config.json", "model*.safetensors", "model.safetensors.index.json",
    "*processor_config.json", "tokenizer*.json", "vocab.txt", "special_tokens_map.json", "added_tokens.json",
)
RUN_FILES = ("recipe.yaml", "metrics.jsonl", "logs", "checkpoints", ".model", ".*.tmp", ".*.previous")
# What a run writes before it has done any work worth keeping: a run that stopped before saving anything is replaced.
NOT_WORK = ("recipe.yaml", "metrics.jsonl", "logs", "checkpoints", "pretrain", "finetune")
PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class RunFolderError(RuntimeError):
    """The output folder cannot take this run (not the run's, held by another process, or holding a different run);
    the message says why and what to do instead."""


# ----------------------------------------------------------------------------------------------------------------------
# Files written so that a kill never leaves half of one
# ----------------------------------------------------------------------------------------------------------------------


def fsync_path(path: Path) -> None:
    """Flush a file or a folder's entries to disk (a rename is durable only once both are)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except PermissionError:  # Windows opens no folders; its renames need no folder flush
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(folder: Path) -> None:
    """`fsync_path` every file and folder under `folder`, the folder last."""
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            fsync_path(Path(root) / name)
        fsync_path(Path(root))


def replace_durably(temporary: Path, final: Path) -> None:
    """Rename a complete, flushed `temporary` (file or folder) to `final`, then flush the parent folder's entries."""
    fsync_tree(temporary) if temporary.is_dir() else fsync_path(temporary)
    os.replace(temporary, final)
    fsync_path(final.parent)


def write_json_atomically(path: str | os.PathLike, data: Any, keep_previous: bool = False) -> None:
    """Write JSON to a temporary file, flush it and rename it into place (a kill never leaves half a file).
    `keep_previous` keeps the file it replaces as `.<name>.previous`, which `read_json_record` falls back to."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    if keep_previous and path.is_file():
        shutil.copy2(path, path.with_name(f".{path.name}.previous"))
    replace_durably(temporary, path)


def read_json_record(path: Path) -> Any | None:
    """A JSON record written by `write_json_atomically(..., keep_previous=True)`; when it is empty or cut (a disk that
    lost the write), the previous version, with a warning; `None` when there is neither."""
    candidates = [path, path.with_name(f".{path.name}.previous")]
    for candidate in candidates:
        if not candidate.is_file():
            continue
        try:
            return json.loads(candidate.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            warnings.warn(f"{candidate} is unreadable (empty or cut): it is ignored", stacklevel=2)
    return None


def trim_metrics_log(path: Path, resumed_step: int, completed_stages: int) -> None:
    """Drop what a stopped run logged after the point it resumes from (it is logged again). A last line cut by a kill
    or a full disk is dropped with a warning; an unreadable line before it is refused."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    kept = []
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                warnings.warn(f"{path}: the last line is cut (the run was stopped while writing it): dropped",
                              stacklevel=2)
                break
            raise RunFolderError(f"{path}, line {number}: not a JSON record (the log was edited or corrupted): fix "
                                 "or delete that line, then run again.") from None
        evaluation = any(key.startswith("eval/") for key in entry)
        if (entry.get("stage", 0) < completed_stages) if evaluation else (entry.get("step") or 0) <= resumed_step:
            kept.append(line)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    replace_durably(temporary, path)


def save_pretrained_atomically(model, processor, folder: Path, state_dict=None) -> None:
    """`save_pretrained` of the model and its processor into a temporary folder renamed to `folder` (main process).
    The processor saved decodes the model's clip length, whatever the processor used for training read."""
    processor = copy.deepcopy(processor)
    processor.video_processor.num_frames = model.config.vision_config.num_frames
    temporary = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    model.save_pretrained(temporary, state_dict=state_dict)
    processor.save_pretrained(temporary)
    shutil.rmtree(folder, ignore_errors=True)
    replace_durably(temporary, folder)


def publish_model_files(source: Path, target: Path) -> None:
    """Copy the files of a `save_pretrained` folder into `target` (a run's output folder, which then loads by its
    name), replacing older copies."""
    for item in source.iterdir():
        destination = target / item.name
        shutil.rmtree(destination) if destination.is_dir() else destination.unlink(missing_ok=True)
        shutil.copytree(item, destination) if item.is_dir() else shutil.copy2(item, destination)
        fsync_tree(destination) if destination.is_dir() else fsync_path(destination)
    fsync_path(target)


def record_recipe(output_dir: Path, recipe) -> None:
    """`recipe.yaml`: the recipe as it ran, with every override and default."""
    import yaml

    temporary = output_dir / ".recipe.yaml.tmp"
    temporary.write_text(yaml.safe_dump(recipe_values(recipe), sort_keys=False), encoding="utf-8")
    replace_durably(temporary, output_dir / "recipe.yaml")


def recipe_values(recipe) -> dict:
    """The recipe's fields as plain JSON-like values (tuples as lists), without the file it was read from."""
    values = {key: value for key, value in dataclasses.asdict(recipe).items() if key != "source"}
    return json.loads(json.dumps(values))


# ----------------------------------------------------------------------------------------------------------------------
# Saved training states
# ----------------------------------------------------------------------------------------------------------------------


def _own_states(checkpoint_dir: Path) -> list[Path]:
    if not checkpoint_dir.is_dir():
        return []
    return [folder for folder in checkpoint_dir.iterdir() if folder.is_dir() and STATE_NAME.match(folder.name)]


def _progress(folder: Path) -> dict | None:
    try:
        progress = json.loads((folder / "progress.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return progress if isinstance(progress, dict) and {"stage", "stage_step"} <= set(progress) else None


def save_state_atomically(accelerator, checkpoint_dir: Path, name: str, progress: dict) -> Path:
    """`accelerator.save_state` into a temporary folder that is flushed and renamed to `checkpoint_dir/name` when
    complete, with `progress.json` inside; then only the run's own older states beyond the newest `KEEP_STATES` are
    removed. Every process must call it."""
    temporary = checkpoint_dir / f".tmp-{name}"
    final = checkpoint_dir / name
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        if not checkpoint_dir.is_dir():
            checkpoint_dir.mkdir(parents=True)
            (checkpoint_dir / STATES_MARKER).write_text("saved training states of the run in the folder above\n")
        temporary.mkdir()  # here, not by every process's `save_state`: the other machines only add their parts
        if getattr(getattr(accelerator, "state", None), "deepspeed_plugin", None) is not None:
            from accelerate.utils import MODEL_NAME

            (temporary / MODEL_NAME).mkdir()  # DeepSpeed's folder of the ZeRO shards, which every process races to make
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary), safe_serialization=False)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomically(temporary / "progress.json", progress)
        shutil.rmtree(final, ignore_errors=True)
        replace_durably(temporary, final)
        complete = [(folder, _progress(folder)) for folder in _own_states(checkpoint_dir) if folder != final]
        complete.sort(key=lambda item: (item[1]["stage"], item[1]["stage_step"]) if item[1] else (-1, -1))
        for old, _ in complete[: max(0, len(complete) - (KEEP_STATES - 1))]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def latest_state(checkpoint_dir: Path) -> tuple[Path, dict] | None:
    """The newest complete saved state of the run and its progress, or `None`. A state whose `progress.json` cannot be
    read (cut by a lost write) is passed over, with a warning, for the one saved before it."""
    states = []
    for folder in _own_states(checkpoint_dir):
        if folder.name.startswith("."):
            continue
        progress = _progress(folder)
        if progress is None:
            warnings.warn(f"{folder}: progress.json is missing or unreadable; resuming from the state saved before "
                          "it", stacklevel=2)
            continue
        states.append(((progress["stage"], progress["stage_step"]), folder, progress))
    if not states:
        return None
    _, folder, progress = max(states, key=lambda item: item[0])
    return folder, progress


def remove_states(checkpoint_dir: Path) -> None:
    """At the end of a run: remove its saved states, and the folder when nothing else is left in it."""
    for folder in _own_states(checkpoint_dir):
        shutil.rmtree(folder, ignore_errors=True)
    (checkpoint_dir / STATES_MARKER).unlink(missing_ok=True)
    if checkpoint_dir.is_dir() and not any(checkpoint_dir.iterdir()):
        checkpoint_dir.rmdir()


# ----------------------------------------------------------------------------------------------------------------------
# Who owns the output folder
# ----------------------------------------------------------------------------------------------------------------------


def package_version() -> str:
    try:
        return metadata.version("svitt")
    except metadata.PackageNotFoundError:
        return "unknown"


def output_folder(given: str | None, recipe_name: str) -> Path:
    """`--output-dir`, or `outputs/<recipe name>`; a recipe name that would place it elsewhere is refused."""
    if given:
        return Path(given).resolve()
    if not PLAIN_NAME.match(recipe_name) or recipe_name in (".", ".."):
        raise RunFolderError(
            f"recipe '{recipe_name}', name: must be a plain folder name (letters, digits, '.', '_', '-'; no '/' or "
            "'..'): the default output folder is outputs/<name>. Rename the recipe or pass --output-dir."
        )
    return (Path("outputs") / recipe_name).resolve()


def run_fingerprint(script: str, recipe, *, model: str | None, max_steps: int | None) -> dict:
    """What determines a run's results, compared when a run continues in an existing folder."""
    values = recipe_values(recipe)
    values.pop("seed", None)
    values.get("model", {}).pop("checkpoint", None)
    if model is not None and Path(model).exists():
        model = str(Path(model).resolve())
    return {
        "script": script,
        "recipe": values,
        "model": model,
        "max_steps": max_steps,
        "seed": recipe.seed,
        "num_processes": int(os.environ.get("WORLD_SIZE", "1")),
        "svitt_version": package_version(),
    }


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        items = value.items()
    elif isinstance(value, list) and value and any(isinstance(item, (dict, list)) for item in value):
        items = ((str(index), item) for index, item in enumerate(value))
    else:
        return {prefix: value}
    flat = {}
    for key, item in items:
        flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def fingerprint_differences(saved: dict, current: dict) -> list[str]:
    """`field: <saved> (the run in the folder) != <current> (this run)` for every field that differs."""
    old, new = _flatten(saved), _flatten(current)
    missing = object()
    lines = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, missing), new.get(key, missing)
        if before != after:
            show = lambda value: "(absent)" if value is missing else json.dumps(value)  # noqa: E731
            lines.append(f"  {key}: {show(before)} in the folder's run, {show(after)} now")
    return lines


def check_not_model_folder(output_dir: Path, model: str | None) -> None:
    """The output folder may not be (or hold) the folder of the model the run starts from."""
    if model is None or not Path(model).exists():
        return
    model_dir = Path(model).resolve()
    if model_dir == output_dir or output_dir in model_dir.parents:
        raise RunFolderError(f"--output-dir {output_dir} is the folder of --model {model} (or holds it): the run "
                             "would overwrite the model it starts from. Choose another --output-dir.")


@dataclass
class RunFolder:
    """An output folder claimed by a run: `finished` when it already holds this run's results (nothing to do),
    `resumed` when it holds this run's unfinished state."""

    path: Path
    fingerprint: dict
    finished: bool = False
    resumed: bool = False
    _lock: IO | None = None

    def finished_note(self, results: str) -> str:
        return (f"{self.path} holds this run, finished: its model is there, its results in {self.path / results}. "
                "Nothing was run. --no-resume runs it again from the start; --output-dir writes it elsewhere.")

    def mark_finished(self, results: str) -> None:
        """Record that the run ended (`results`: the file holding its results); a later run of it says so."""
        write_json_atomically(self.path / MARKER, {"fingerprint": self.fingerprint, "finished": True,
                                                  "results": results})


_HELD_LOCKS: dict[Path, IO] = {}  # folder -> lock file, kept open until the process exits


def _take_lock(folder: Path) -> IO:
    earlier = _HELD_LOCKS.pop(folder, None)
    if earlier is not None:  # a run this process made earlier (runs in one process follow one another)
        earlier.close()
    handle = open(folder / LOCK, "a+", encoding="utf-8")
    try:
        if fcntl is None:
            warnings.warn(f"no file locks on this system: nothing stops a second run into {folder}", stacklevel=2)
        else:
            # a POSIX record lock, not `flock`: it belongs to this process alone, so data-loader workers forked from
            # it do not keep it after a kill (a requeued run would be refused until they noticed)
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunFolderError(f"{folder} is in use by another run ({holder}): two runs in one folder would delete "
                             "each other's saved states. Wait for it to end, stop it, or choose another "
                             "--output-dir.") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"host {socket.gethostname()}, pid {os.getpid()}\n")
    handle.flush()
    _HELD_LOCKS[folder] = handle
    return handle


def _holds_work(folder: Path, owned: Sequence[str]) -> bool:
    """Whether an earlier run left anything worth keeping: a saved state, a model, a record (not only its recipe and
    the log of steps it did not save)."""
    if _own_states(folder / "checkpoints"):
        return True
    for item in folder.iterdir():
        if item.name.startswith(".") or any(fnmatch.fnmatchcase(item.name, name) for name in NOT_WORK):
            continue
        if any(fnmatch.fnmatchcase(item.name, pattern) for pattern in owned):
            return True
    return False


def _clear(folder: Path, owned: Sequence[str]) -> None:
    """Remove what a run of this kind wrote into `folder` (names matching `owned`), nothing else."""
    for item in folder.iterdir():
        if item.name in (MARKER, LOCK) or not any(fnmatch.fnmatchcase(item.name, pattern) for pattern in owned):
            continue
        if item.name == "checkpoints":  # a user may keep things there too
            remove_states(item)
            continue
        shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()


def _claim(folder: Path, fingerprint: dict, resume: bool | None, owned: Sequence[str]) -> RunFolder:
    """The main process's part of `claim_output_folder`."""
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"--output-dir {folder} is a file, not a folder. Choose another --output-dir.")
    marker = folder / MARKER
    if folder.is_dir() and not marker.is_file() and any(item.name != LOCK for item in folder.iterdir()):
        raise RunFolderError(
            f"{folder} is not empty and was not created by a training run of this package (it has no {MARKER}): "
            "nothing in it is deleted or overwritten. Choose another --output-dir (or empty this one yourself)."
        )
    folder.mkdir(parents=True, exist_ok=True)
    run = RunFolder(folder, fingerprint, _lock=_take_lock(folder))
    record = read_json_record(marker) if marker.is_file() else None
    if marker.is_file() and not isinstance(record, dict) and resume is not False:
        raise RunFolderError(f"{marker} is unreadable, so whose run {folder} holds is unknown: pass --no-resume to "
                             "start over in it, or choose another --output-dir.")
    if marker.is_file() and (resume is False or not isinstance(record, dict)
                             or not record.get("finished") and not _holds_work(folder, owned)):
        _clear(folder, owned)
        record = None
    if record is None:
        write_json_atomically(marker, {"fingerprint": fingerprint, "finished": False})
        return run
    differences = fingerprint_differences(record.get("fingerprint", {}), fingerprint)
    if differences:
        earlier = (f"It is finished (its results: {folder / record['results']}); "
                   if record.get("finished") and record.get("results") else "Run the same command as before to "
                   "continue it, ")
        raise RunFolderError(
            f"{folder} holds a different {'finished' if record.get('finished') else 'unfinished'} run; this one "
            "differs in:\n" + "\n".join(differences) + f"\n{earlier}pass --no-resume to discard it and start over "
            "there, or choose another --output-dir."
        )
    run.finished = bool(record.get("finished"))
    run.resumed = not run.finished
    return run


def claim_output_folder(
    accelerator, folder: Path, fingerprint: dict, resume: bool | None, owned: Sequence[str]
) -> RunFolder:
    """Take the output folder for a run, on the main process, and tell every process the outcome.

    A new or empty folder is marked as the run's; a folder holding the same run (same fingerprint) continues, or is
    `finished`; a folder holding another run, another process's lock, or files of someone else is refused
    ([`RunFolderError`] on every process). `resume=False` (`--no-resume`) first removes what an earlier run wrote
    (the names in `owned`, with `RUN_FILES` and `MODEL_FILES`). The main process keeps the lock until it exits.
    """
    from accelerate.utils import broadcast_object_list

    owned = (*owned, *RUN_FILES, *MODEL_FILES)
    outcome: list[Any] = [None]
    run = None
    if accelerator.is_main_process:
        try:
            run = _claim(folder, fingerprint, resume, owned)
            outcome = [(run.finished, run.resumed)]
        except RunFolderError as error:
            outcome = [str(error)]
    if accelerator.num_processes > 1:
        broadcast_object_list(outcome)
    if isinstance(outcome[0], str):
        raise RunFolderError(outcome[0])
    return run or RunFolder(folder, fingerprint, finished=outcome[0][0], resumed=outcome[0][1])


__all__ = [
    "RunFolder", "RunFolderError", "check_not_model_folder", "claim_output_folder", "fingerprint_differences",
    "latest_state", "output_folder", "publish_model_files", "read_json_record", "record_recipe", "remove_states",
    "run_fingerprint", "save_pretrained_atomically", "save_state_atomically", "trim_metrics_log",
    "write_json_atomically",
]
