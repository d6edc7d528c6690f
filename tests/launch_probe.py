"""Runs `training/pretrain.py` (its arguments after the probe folder) and records, per process, which samples it
trained on and a digest of its weights when the stage is saved: what the launch tests compare across ranks.

    accelerate launch --config_file ... tests/launch_probe.py PROBE_DIR --recipe ... --output-dir ...
"""

import json
import sys
from pathlib import Path

import accelerate

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


VideoTextCollator.collate = recording_collate
accelerate.Accelerator.get_state_dict = recording_get_state_dict
pretrain.main(sys.argv[2:])
