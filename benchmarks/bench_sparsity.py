"""Speed and memory of the SViTT video tower: dense vs edge, node and edge+node sparsity.

    python benchmarks/bench_sparsity.py                      # 4, 8 and 16 frames, base model, CPU, fp32
    python benchmarks/bench_sparsity.py --frames 4 --iterations 1 --markdown table.md

For each clip length the same base-size tower (768 hidden, 12 layers, 224 px, batch 1) runs forward +
backward in four modes, each in a fresh process so its peak memory is its own:
- dense: sparsity off, attention through SDPA (the fastest dense attention here);
- edge: block-sparse attention (blocks of 56, 1 local + 3 random, [CLS] global), no pruning;
- node: dense attention, token pruning after layers 3/6/9;
- edge+node: both (the release's setting).
Keep rates follow the curriculum: 0.7 at 4 frames, 0.6 at 8, 0.5 at 16. Times are the median of the timed
iterations after one warm-up; peak memory is the growth of the resident set over the built model during the
steps. Ratios are dense / mode within this run, printed beside the analytic FLOP ratio. This compares SViTT with
its own dense path; `bench_peers.py` compares it with the models a user would pick instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import MIB, available_memory, report, run_isolated, time_steps  # noqa: E402

KEEP_RATES = {4: 0.7, 8: 0.6, 16: 0.5}
MODES = {
    "dense": {"use_sparse_attention": False, "prune": False},
    "edge": {"use_sparse_attention": True, "prune": False},
    "node": {"use_sparse_attention": False, "prune": True},
    "edge+node": {"use_sparse_attention": True, "prune": True},
}


def vision_config(frames: int, mode: str):
    from modeling_svitt import SViTTVisionConfig

    settings = MODES[mode]
    return SViTTVisionConfig(
        num_frames=frames,
        use_sparse_attention=settings["use_sparse_attention"],
        token_keep_rate=KEEP_RATES.get(frames, 0.5) if settings["prune"] else 1.0,
        drop_path_rate=0.0,  # stochastic depth would skip random layers and blur the timing
    )


def measure(frames: int, mode: str, iterations: int, threads: int) -> dict:
    """Runs inside the child process."""
    import torch

    from modeling_svitt import SViTTVisionModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = SViTTVisionModel._from_config(vision_config(frames, mode), attn_implementation="sdpa").train()
    pixels = torch.randn(1, frames, 3, 224, 224)

    def step() -> None:
        output = model(pixels)
        (output.last_hidden_state.mean() + output.pooler_output.mean()).backward()
        model.zero_grad(set_to_none=True)

    return time_steps(step, iterations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations after the warm-up")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--time-cap", type=float, default=1800.0, help="seconds per mode")
    parser.add_argument("--markdown", help="also write the table to this file")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        frames, mode, iterations, threads = args.child
        report(result=measure(int(frames), mode, int(iterations), int(threads)))
        return

    import torch

    from svitt_tools.compute_cost import video_tower_macs

    header = (
        f"SViTT video tower against its own dense path, base size, batch 1, fp32, forward+backward, CPU "
        f"({args.threads} threads, torch {torch.__version__})"
    )
    lines = [
        header,
        "",
        "| frames | mode | keep | time (s) | speed-up vs dense | analytic FLOP ratio | share of analytic | peak memory (MiB) | memory vs dense |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    print(header, flush=True)
    for frames in args.frames:
        results = {}
        dense_macs = video_tower_macs(vision_config(frames, "dense"))
        for mode in MODES:
            command = [__file__, "--child", str(frames), mode, str(args.iterations), str(args.threads)]
            results[mode] = result = run_isolated(command, args.time_cap, int(0.85 * available_memory()))
            config = vision_config(frames, mode)
            if result["status"] != "ok":
                row = f"| {frames} | {mode} | {config.token_keep_rate} | {result['status']}: {result['detail']} | | | | | |"
            else:
                dense = results["dense"]
                analytic = dense_macs / video_tower_macs(config)
                speedup = dense["seconds"] / result["seconds"] if "seconds" in dense else float("nan")
                memory = result["peak_bytes"] / dense["peak_bytes"] if "peak_bytes" in dense else float("nan")
                row = (
                    f"| {frames} | {mode} | {config.token_keep_rate} | {result['seconds']:.2f} | {speedup:.2f}x | "
                    f"{analytic:.2f}x | {speedup / analytic:.0%} | {result['peak_bytes'] / MIB:.0f} | {memory:.2f} |"
                )
            lines.append(row)
            print(row, flush=True)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
