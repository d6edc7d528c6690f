"""Pretraining throughput: clips per second of a full SViTT pretraining step, curriculum sparsity against none.

    python benchmarks/bench_pretrain.py                       # 4, 8 and 16 frames, batch 8, base size, CPU
    python benchmarks/bench_pretrain.py --frames 4 --batch 2 --iterations 1    # a quick check

One step is what a training loop does per batch: forward of both towers with ITC + ITM (hard negatives) + MLM,
backward, and an AdamW update, on a base-size `SViTTForPreTraining` (BEiT-B video tower, BERT-B text tower with
3 fusion layers, 32-token captions). "curriculum" uses the release's sparsity for the clip length (blocks of 56 with
1 local and 3 random blocks; keep 0.7 / 0.6 / 0.5 of the video tokens at 4 / 8 / 16 frames after layers 3/6/9);
"dense" turns both off. Each configuration runs in a fresh process (one warm-up step, median of the timed steps,
peak memory as resident growth over the built model and optimizer) and is appended to a JSON-lines file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import MIB, ResultStore, available_memory, describe, report, run_isolated, time_steps  # noqa: E402

KEEP_RATES = {4: 0.7, 8: 0.6, 16: 0.5}
KEY = ("sparsity", "frames", "batch", "threads")
RESULTS = Path(__file__).resolve().parent / "results"


def measure(spec: dict) -> dict:
    """Runs inside the child process."""
    import torch

    from modeling_svitt import SViTTConfig, SViTTForPreTraining

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    frames, batch = spec["frames"], spec["batch"]
    curriculum = spec["sparsity"] == "curriculum"
    config = SViTTConfig(
        vision_config={
            "num_frames": frames,
            "use_sparse_attention": curriculum,
            "token_keep_rate": KEEP_RATES.get(frames, 0.5) if curriculum else 1.0,
        }
    )
    model = SViTTForPreTraining._from_config(config, attn_implementation="sdpa").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch, frames, 3, 224, 224, generator=generator)
    input_ids = torch.randint(1000, 30000, (batch, 32), generator=generator)
    input_ids[:, 0] = config.text_config.cls_token_id
    attention_mask = torch.ones_like(input_ids)

    def step() -> None:
        loss = model(pixel_values=pixels, input_ids=input_ids, attention_mask=attention_mask).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return time_steps(step, spec["iterations"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=3, help="timed steps after the warm-up (median)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--time-cap", type=float, default=3600.0, help="seconds per configuration")
    parser.add_argument("--memory-cap", type=float, help="GiB resident per configuration (default: 85%% of available)")
    parser.add_argument("--results", type=Path, default=RESULTS / "pretrain.jsonl")
    parser.add_argument("--rerun", action="store_true", help="measure again what the results already hold")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        report(result=measure(json.loads(args.child)))
        return

    import torch

    store = ResultStore(args.results)
    stored = {} if args.rerun else store.latest(KEY)
    for frames in args.frames:
        for sparsity in ("curriculum", "dense"):
            spec = {
                "sparsity": sparsity,
                "frames": frames,
                "batch": args.batch,
                "threads": args.threads,
                "iterations": args.iterations,
            }
            if tuple(spec[field] for field in KEY) in stored:
                continue
            memory_cap = int(args.memory_cap * 2**30) if args.memory_cap else int(0.85 * available_memory())
            print(f"running {json.dumps(spec)}", flush=True)
            load_before = os.getloadavg()[0]
            result = run_isolated([__file__, "--child", json.dumps(spec)], args.time_cap, memory_cap)
            record = {
                **spec,
                **result,
                "load_before": load_before,
                "load_after": os.getloadavg()[0],
                "torch": torch.__version__,
                "date": time.strftime("%Y-%m-%d %H:%M"),
            }
            store.append(record)
            stored[tuple(spec[field] for field in KEY)] = record

    lines = [
        f"SViTTForPreTraining, base size, batch {args.batch}, ITC + ITM + MLM, forward + backward + AdamW, fp32, CPU "
        f"({args.threads} threads, torch {torch.__version__})",
        "",
        "| frames | keep | curriculum (clips/s) | dense (clips/s) | speed-up | curriculum memory (MiB) | dense memory (MiB) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for frames in args.frames:
        sparse, dense = (stored.get((sparsity, frames, args.batch, args.threads)) for sparsity in ("curriculum", "dense"))

        def throughput(record):
            ok = record is not None and record.get("status") == "ok"
            return f"{args.batch / record['seconds']:.3f}" if ok else describe(record)

        both = all(record is not None and record.get("status") == "ok" for record in (sparse, dense))
        speedup = f"{dense['seconds'] / sparse['seconds']:.2f}x" if both else ""
        lines.append(
            f"| {frames} | {KEEP_RATES.get(frames, 0.5)} | {throughput(sparse)} | {throughput(dense)} | {speedup} | "
            f"{describe(sparse, 'peak_bytes', MIB, 0)} | {describe(dense, 'peak_bytes', MIB, 0)} |"
        )
    table = "\n".join(lines)
    print(table)
    args.results.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
