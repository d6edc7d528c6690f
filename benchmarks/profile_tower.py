"""Where the time of one step of the SViTT video tower goes, by operator family (`torch.profiler`, CPU).

    python benchmarks/profile_tower.py [--frames 8] [--batch 1] [--modes train inference] [--top 20]

The model is the one `bench_peers.py` times as `svitt-sparse` (base size, 224 px, fp32, the release's sparsity for
the clip length). One warm-up step, then one profiled step. Operators are grouped into families (products, the
sparse path's gathers and scatters, softmax, copies, ...) by their names; the table gives each family's share of the
step's self CPU time, then the `--top` operators.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_peers import model_config  # noqa: E402

# First matching family wins; names are ATen operator names.
FAMILIES = (
    ("products (linear, matmul, bmm)", ("addmm", "aten::mm", "bmm", "matmul", "linear", "baddbmm")),
    ("sparse-path gathers / scatters", ("index_select", "index_add", "index_put", "aten::index", "gather", "scatter")),
    ("softmax and its backward", ("softmax", "_softmax", "log_softmax")),
    ("token pruning (top-k, sort)", ("topk", "sort", "argsort")),
    ("layer norm", ("layer_norm",)),
    ("GELU", ("gelu",)),
    ("copies, padding, concatenation", ("copy_", "cat", "pad", "clone", "contiguous", "constant_pad", "new_zeros",
                                        "zeros", "fill_", "empty")),
    ("elementwise arithmetic and reductions", ("add", "sub", "mul", "div", "exp", "sum", "mean", "where", "neg")),
)


def family(name: str) -> str:
    for label, keys in FAMILIES:
        if any(key in name for key in keys):
            return label
    return "other"


def profile_step(frames: int, batch: int, mode: str, top: int) -> str:
    from modeling_svitt import SViTTVisionModel

    torch.manual_seed(0)
    model = SViTTVisionModel._from_config(model_config("svitt-sparse", frames), attn_implementation="sdpa")
    pixels = torch.randn(batch, frames, 3, 224, 224)
    model.train(mode == "train")

    def step() -> None:
        if mode == "train":
            output = model(pixel_values=pixels)
            (output.last_hidden_state.mean() + output.pooler_output.mean()).backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode():
                model(pixel_values=pixels)

    step()  # warm-up
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        step()
    events = [event for event in profiler.key_averages() if event.self_cpu_time_total > 0]
    total = sum(event.self_cpu_time_total for event in events)
    by_family = defaultdict(float)
    for event in events:
        by_family[family(event.key)] += event.self_cpu_time_total
    lines = [f"### {frames} frames, batch {batch}, {mode}: {total / 1e6:.2f} s of operator self time", ""]
    lines += ["| family | seconds | share |", "| --- | --- | --- |"]
    for label, micros in sorted(by_family.items(), key=lambda item: -item[1]):
        lines.append(f"| {label} | {micros / 1e6:.3f} | {micros / total:.1%} |")
    lines += ["", "| operator | calls | self seconds | share |", "| --- | --- | --- | --- |"]
    for event in sorted(events, key=lambda event: -event.self_cpu_time_total)[:top]:
        lines.append(
            f"| `{event.key}` | {event.count} | {event.self_cpu_time_total / 1e6:.3f} | "
            f"{event.self_cpu_time_total / total:.1%} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[8])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--modes", nargs="+", choices=("train", "inference"), default=["train", "inference"])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for frames in args.frames:
        for mode in args.modes:
            print(profile_step(frames, args.batch, mode, args.top), flush=True)


if __name__ == "__main__":
    main()
