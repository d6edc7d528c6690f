"""Runs `training/evaluate.py` once per entry of a JSON mapping `{name: arguments}`, each into `OUTPUT/<name>`, and
saves per process (`OUTPUT/rank<r>.pt`) what the first gathering of every evaluation saw: the dataset indices this
process evaluated itself, and the gathered, de-duplicated rows (indices, then the per-sample outputs: video features,
QA predictions, EgoMCQ logits). The launch test compares them with one process.

    accelerate launch --config_file training/configs/ddp.yaml tests/helpers/evaluate_probe.py OUTPUT '{"retrieval": [...]}'
"""

import json
import sys
from pathlib import Path

import torch

from training import evaluate, evaluation_loops


def record_first_gathering(into: dict, name: list[str]):
    """Wrap `evaluation_loops._gathered_unique` to keep, per evaluation `name[0]`, its first call's local indices and
    result."""
    original = evaluation_loops._gathered_unique

    def recording(accelerator, index, *values):
        result = original(accelerator, index, *values)
        into.setdefault(name[0], {"local": sorted(set(index.tolist())), "gathered": result})
        return result

    evaluation_loops._gathered_unique = recording


if __name__ == "__main__":
    output, runs = Path(sys.argv[1]), json.loads(sys.argv[2])
    seen, current = {}, [""]
    record_first_gathering(seen, current)
    for name, arguments in runs.items():
        current[0] = name
        evaluate.main(arguments + ["--output-dir", str(output / name)])
    torch.save(seen, output / f"rank{evaluate.make_accelerator(log=False).process_index}.pt")
