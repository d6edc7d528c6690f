"""SViTT against the video transformers a user would pick instead: time and memory per step, side by side.

    python benchmarks/bench_peers.py --quick          # 4 and 8 frames, batch 1: a check in a few minutes
    python benchmarks/bench_peers.py                  # the full grid (hours on 2 cores; resumes where it stopped)
    python benchmarks/bench_peers.py --models svitt-sparse --frames 64 128 --modes train --gradient-checkpointing
    python benchmarks/bench_peers.py --report-only    # rewrite table and plot from the stored results

Models, base size (768 wide, 12 layers, 224 px), fp32:
- svitt-sparse: the SViTT video tower with the release's sparsity for the clip length (blocks of 56 with 1 local
  and 3 random blocks; keep 0.7 / 0.6 / 0.5 of the tokens at 4 / 8 / 16 frames, 0.5 beyond, after layers 3/6/9);
- svitt-dense: the same tower with both sparsities off (attention through SDPA with the relative bias);
- videomae: `VideoMAEModel` with SDPA and tubelet size 1 (the same 196 tokens per frame, a plain ViT);
- timesformer: `TimesformerModel` with divided space-time attention.

Each configuration (model, frames, batch, training or inference) runs in a fresh process: one warm-up step, then
the median of `--iterations` timed steps (training: forward + backward of the mean output; inference: forward under
`inference_mode`). Peak memory is the growth of the resident set over the built model. A configuration that
exceeds `--time-cap` or `--memory-cap` is killed and reported as such; larger clips of that model are then skipped
and reported with the reason. Results are appended to a JSON-lines file: a later run skips what is stored.
The table gives the speed-up of svitt-sparse over every model and that speed-up as a share of the analytic FLOP
ratio (`svitt_tools.compute_cost`); the plot shows time and memory against clip length, log-log.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import MIB, ResultStore, available_memory, describe, report, run_isolated, time_steps  # noqa: E402

MODELS = ("svitt-sparse", "svitt-dense", "videomae", "timesformer")
KEEP_RATES = {4: 0.7, 8: 0.6, 16: 0.5}
KEY = ("model", "frames", "batch", "mode", "checkpointing", "threads")
RESULTS = Path(__file__).resolve().parent / "results"


def keep_rate(frames: int) -> float:
    return KEEP_RATES.get(frames, 0.5)


def model_config(model: str, frames: int):
    if model.startswith("svitt"):
        from modeling_svitt import SViTTVisionConfig

        sparse = model == "svitt-sparse"
        return SViTTVisionConfig(
            num_frames=frames,
            use_sparse_attention=sparse,
            token_keep_rate=keep_rate(frames) if sparse else 1.0,
            drop_path_rate=0.0,  # stochastic depth would skip random layers and blur the timing
        )
    if model == "videomae":
        from transformers import VideoMAEConfig

        return VideoMAEConfig(num_frames=frames, tubelet_size=1)
    if model == "timesformer":
        from transformers import TimesformerConfig

        return TimesformerConfig(num_frames=frames, attention_type="divided_space_time")
    raise ValueError(f"Unknown model {model!r}; choose from {MODELS}.")


def analytic_macs(model: str, frames: int) -> int:
    from svitt_tools.compute_cost import timesformer_macs, video_tower_macs, videomae_macs

    config = model_config(model, frames)
    if model.startswith("svitt"):
        return video_tower_macs(config)
    return videomae_macs(config) if model == "videomae" else timesformer_macs(config)


def measure(spec: dict) -> dict:
    """Runs inside the child process."""
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    config = model_config(spec["model"], spec["frames"])
    if spec["model"].startswith("svitt"):
        from modeling_svitt import SViTTVisionModel as model_class
    elif spec["model"] == "videomae":
        from transformers import VideoMAEModel as model_class
    else:
        from transformers import TimesformerModel as model_class
    attention = "eager" if spec["model"] == "timesformer" else "sdpa"  # TimeSformer has no SDPA path
    model = model_class._from_config(config, attn_implementation=attention)
    pixels = torch.randn(spec["batch"], spec["frames"], 3, 224, 224)

    if spec["mode"] == "train":
        model.train()
        if spec["checkpointing"]:
            model.gradient_checkpointing_enable()

        def step() -> None:
            output = model(pixel_values=pixels)
            loss = output.last_hidden_state.mean()
            if getattr(output, "pooler_output", None) is not None:
                loss = loss + output.pooler_output.mean()
            loss.backward()
            model.zero_grad(set_to_none=True)

    else:
        model.eval()

        def step() -> None:
            with torch.inference_mode():
                model(pixel_values=pixels)

    return time_steps(step, spec["iterations"])


def configurations(args) -> list[dict]:
    specs = []
    for batch in args.batch:
        for mode in args.modes:
            for model in args.models:
                for frames in args.frames:
                    specs.append(
                        {
                            "model": model,
                            "frames": frames,
                            "batch": batch,
                            "mode": mode,
                            "checkpointing": bool(args.gradient_checkpointing and mode == "train"),
                            "threads": args.threads,
                            "iterations": args.iterations,
                        }
                    )
    return specs


def run(args, store: ResultStore) -> None:
    import torch

    stored = {} if args.rerun else store.latest(KEY)
    for spec in configurations(args):
        key = tuple(spec[field] for field in KEY)
        if key in stored:
            continue
        smaller = [
            record
            for record in store.records()
            if all(record.get(field) == spec[field] for field in KEY if field != "frames")
            and record["frames"] < spec["frames"]
            and record["status"] in ("time cap", "out of memory")
        ]
        memory_cap = int(args.memory_cap * 2**30) if args.memory_cap else int(0.85 * available_memory())
        load_before = os.getloadavg()[0]
        if smaller:
            first = min(smaller, key=lambda record: record["frames"])
            result = {"status": first["status"], "detail": f"skipped ({first['status']} at {first['frames']} frames)"}
        else:
            print(f"running {json.dumps(spec)}", flush=True)
            result = run_isolated([__file__, "--child", json.dumps(spec)], args.time_cap, memory_cap)
        record = {
            **spec,
            **result,
            "gmacs": analytic_macs(spec["model"], spec["frames"]) / 1e9,
            "memory_cap_bytes": memory_cap,
            "load_before": load_before,
            "load_after": os.getloadavg()[0],
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "date": time.strftime("%Y-%m-%d %H:%M"),
        }
        store.append(record)
        stored[key] = record
        print(f"  -> {describe(record)} s, {describe(record, 'peak_bytes', MIB, 0)} MiB", flush=True)


def tables(args, store: ResultStore) -> str:
    records = store.latest(KEY)
    loads = [record.get(field) for record in records.values() for field in ("load_before", "load_after")]
    loads = [load for load in loads if load is not None]
    lines = [
        f"Base size, 224 px, fp32, CPU with {args.threads} threads; torch {next(iter(records.values()), {}).get('torch', '?')}.",
        f"1-minute load average during the runs: {min(loads, default=0):.1f} to {max(loads, default=0):.1f} "
        "(the benchmark's own process counts about the thread count).",
        "",
    ]
    checkpointing = bool(args.gradient_checkpointing)
    clock = "seconds" if args.clock == "wall" else "cpu_seconds"
    lines[-1:-1] = [f"Times are {'wall-clock' if args.clock == 'wall' else 'CPU'} seconds per step (median)."]
    for batch in args.batch:
        for mode in args.modes:
            ckpt = checkpointing and mode == "train"
            title = "forward + backward" if mode == "train" else "inference (forward)"
            lines += [
                f"### Batch {batch}, {title}{', gradient checkpointing' if ckpt else ''}",
                "",
                "| frames | model | time (s) | peak memory (MiB) | analytic GMACs / clip | svitt-sparse speed-up "
                "| analytic FLOP ratio | share of analytic | svitt-sparse memory / model's |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            ]
            for frames in args.frames:
                sparse = records.get(("svitt-sparse", frames, batch, mode, ckpt, args.threads))
                for model in args.models:
                    record = records.get((model, frames, batch, mode, ckpt, args.threads))
                    macs = analytic_macs(model, frames) / 1e9
                    cells = [str(frames), model, describe(record, clock), describe(record, "peak_bytes", MIB, 0)]
                    cells.append(f"{macs:.1f}")
                    if model == "svitt-sparse" or record is None or sparse is None:
                        cells += ["", "", "", ""]
                    else:
                        ratio = macs / (analytic_macs("svitt-sparse", frames) / 1e9)
                        both = record.get("status") == "ok" and sparse.get("status") == "ok"
                        if both:
                            speedup = record[clock] / sparse[clock]
                            memory = sparse["peak_bytes"] / record["peak_bytes"]
                            cells += [f"{speedup:.2f}x", f"{ratio:.2f}x", f"{speedup / ratio:.0%}", f"{memory:.2f}"]
                        else:
                            cells += ["", f"{ratio:.2f}x", "", ""]
                    lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def plot(args, store: ResultStore, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = store.latest(KEY)
    panels = [(batch, mode) for batch in args.batch for mode in args.modes]
    figure, axes = plt.subplots(len(panels), 2, figsize=(11, 3.6 * len(panels)), squeeze=False)
    for row, (batch, mode) in enumerate(panels):
        ckpt = bool(args.gradient_checkpointing) and mode == "train"
        clock = ("seconds", 1, "time per step (s)") if args.clock == "wall" else ("cpu_seconds", 1, "CPU time per step (s)")
        for column, (field, scale, label) in enumerate((clock, ("peak_bytes", MIB, "peak memory (MiB)"))):
            axis = axes[row][column]
            for model in args.models:
                points = [
                    (frames, record[field] / scale)
                    for frames in args.frames
                    if (record := records.get((model, frames, batch, mode, ckpt, args.threads)))
                    and record.get("status") == "ok"
                ]
                if points:
                    axis.plot(*zip(*points), marker="o", label=model)
            axis.set_xscale("log", base=2)
            axis.set_yscale("log")
            axis.set_xlabel("frames per clip")
            axis.set_ylabel(label)
            axis.set_title(f"batch {batch}, {'forward + backward' if mode == 'train' else 'inference'}")
            axis.grid(True, which="both", alpha=0.3)
            axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--modes", nargs="+", choices=("train", "inference"), default=["train", "inference"])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--iterations", type=int, default=3, help="timed steps after the warm-up (median)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--time-cap", type=float, default=1200.0, help="seconds per configuration, build included")
    parser.add_argument("--memory-cap", type=float, help="GiB resident per configuration (default: 85%% of available)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="training with checkpointed layers")
    parser.add_argument("--quick", action="store_true", help="4 and 8 frames, batch 1: checks the setup")
    parser.add_argument("--results", type=Path, help="JSON-lines results (default: benchmarks/results/peers*.jsonl)")
    parser.add_argument("--markdown", type=Path, help="table (default: next to the results, .md)")
    parser.add_argument("--plot", type=Path, help="log-log plot (default: next to the results, .png)")
    parser.add_argument("--rerun", action="store_true", help="measure again what the results already hold")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="table and plot from wall time (default) or CPU time (steadier with --threads 1 on a loaded machine)",
    )
    parser.add_argument("--report-only", action="store_true", help="only rewrite table and plot")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        report(result=measure(json.loads(args.child)))
        return
    if args.quick:
        args.frames, args.batch = [4, 8], [1]
    results = args.results or RESULTS / ("peers_quick.jsonl" if args.quick else "peers.jsonl")
    store = ResultStore(results)
    if not args.report_only:
        run(args, store)
    table = tables(args, store)
    print(table)
    (args.markdown or results.with_suffix(".md")).write_text(table + "\n")
    plot(args, store, args.plot or results.with_suffix(".png"))


if __name__ == "__main__":
    main()
