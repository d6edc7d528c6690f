"""Runs `training/pretrain.py` (its arguments after the probe folder) and records, per process, which samples it
trained on and a digest of its weights when the stage is saved: what the launch tests compare across ranks. With
`PROBE_WRITES=1`, also every change it makes inside the output folder (files opened for writing, `torch.save`,
folders made, renames, removals), in `writes<rank>.json` at the end.

    accelerate launch --config_file ... tests/helpers/launch_probe.py PROBE_DIR --recipe ... --output-dir ...
"""

import json
import os
import sys
from pathlib import Path

import accelerate
import torch

from training import pretrain
from training.data import VideoTextCollator

probe_dir = Path(sys.argv[1])
samples: list[int] = []
original_collate = VideoTextCollator.collate
original_get_state_dict = accelerate.Accelerator.get_state_dict


def recording_collate(self, batch):
    samples.extend(int(sample["index"]) for sample in batch)
    return original_collate(self, batch)


def recording_get_state_dict(self, model, *args, **kwargs):
    unwrapped = self.unwrap_model(model)
    record = {
        "rank": self.process_index,
        "num_processes": self.num_processes,
        "distributed_type": self.distributed_type.name,
        "samples": samples,
        "weights": sum(float(p.detach().double().sum()) for p in unwrapped.parameters()),
    }
    probe_dir.mkdir(parents=True, exist_ok=True)
    (probe_dir / f"rank{self.process_index}.json").write_text(json.dumps(record))
    return original_get_state_dict(self, model, *args, **kwargs)


WRITING_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
output_dir = os.path.realpath(sys.argv[sys.argv.index("--output-dir") + 1])
writes: list[str] = []


def _inside_output(path) -> str | None:
    if not isinstance(path, (str, bytes, os.PathLike)):
        return None  # a file descriptor
    path = os.path.realpath(os.fsdecode(path))
    return os.path.relpath(path, output_dir) if (path + os.sep).startswith(output_dir + os.sep) else None


def record_writes(event: str, args) -> None:
    if event == "open":
        path, mode, flags = args
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & WRITING_FLAGS)
        changed = [path] if writing else []
    elif event == "os.mkdir":
        # `makedirs(exist_ok=True)` of an existing folder changes nothing
        changed = [args[0]] if not os.path.isdir(args[0]) else []
    elif event == "os.rename":  # also os.replace
        changed = list(args[:2])
    elif event == "shutil.copyfile":
        changed = [args[1]]
    elif event in ("os.remove", "os.rmdir", "shutil.rmtree"):
        changed = [args[0]]
    else:
        return
    for path in changed:
        relative = _inside_output(path)
        if relative is not None:
            writes.append(f"{event} {relative}")


original_torch_save = torch.save


def recording_torch_save(obj, f, *args, **kwargs):
    relative = _inside_output(f)
    if relative is not None:
        writes.append(f"torch.save {relative}")
    return original_torch_save(obj, f, *args, **kwargs)


VideoTextCollator.collate = recording_collate
accelerate.Accelerator.get_state_dict = recording_get_state_dict
if os.environ.get("PROBE_WRITES") == "1":
    sys.addaudithook(record_writes)
    torch.save = recording_torch_save
pretrain.main(sys.argv[2:])
if os.environ.get("PROBE_WRITES") == "1":
    rank = accelerate.PartialState().process_index
    (probe_dir / f"writes{rank}.json").write_text(json.dumps(writes))
