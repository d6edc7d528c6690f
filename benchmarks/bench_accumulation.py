"""Peak memory of gradient accumulation with exact contrastive batches: 4 accumulated micro-batches of 2 against one
batch of 2 (what the accumulation must stay close to) and one batch of 8 (what it replaces).

    python benchmarks/bench_accumulation.py                   # small model, CPU: peak resident-set growth
    python benchmarks/bench_accumulation.py --size base --iterations 1 --configurations "batch 2" "4 x 2 accumulated"

One step is `training.loop.accumulate_gradients` (ITC + ITM + MLM of `SViTTForPreTraining`; with 4 micro-batches the
embeddings of all of them are first computed without gradient and cached, then each runs with gradient against the
cache) followed by an AdamW update, on the release's base-size SViTT (`--size base`) or a small one (6-layer, 256-wide
towers and BERT's vocabulary), with 8 frames of 224 px, sparse attention and token dropping as in the release's 8-frame
stage and 32-token captions. Each configuration runs in a fresh process:
peak memory is the growth of the resident set over the built model and optimizer (so it includes the gradients and
AdamW's moments, allocated by the first step), or on a GPU the peak of `torch.cuda.max_memory_allocated` over the
same point. Speed is recorded but not reported: the machine these figures come from is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import (  # noqa: E402
    MIB,
    ResultStore,
    available_memory,
    describe,
    report,
    resident_memory,
    run_isolated,
    time_steps,
)

# name: (micro-batch, micro-batches per step); "without cache" accumulates as plain gradient accumulation would (each
# micro-batch contrasted only against itself), to show what the cache itself costs
CONFIGURATIONS = {"batch 2": (2, 1), "4 x 2 accumulated": (2, 4), "4 x 2 accumulated without cache": (2, 4),
                  "batch 8": (8, 1)}
KEY = ("size", "configuration", "device", "threads")
RESULTS = Path(__file__).resolve().parent / "results"


def build_model(size: str, device: str):
    import torch

    from modeling_svitt import SViTTConfig, SViTTForPreTraining

    if size == "base":  # the release's model at its 8-frame stage
        config = SViTTConfig(vision_config={"num_frames": 8, "token_keep_rate": 0.6})
        torch.manual_seed(0)
        return SViTTForPreTraining._from_config(config, attn_implementation="sdpa").to(device).train()
    config = SViTTConfig(
        vision_config=dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=4, intermediate_size=1024,
                           image_size=224, patch_size=16, num_frames=8, attention_block_size=56, num_local_blocks=1,
                           num_random_blocks=1, token_keep_rate=0.6, token_drop_layers=[1, 3]),
        text_config=dict(hidden_size=256, num_hidden_layers=6, fusion_layer=4, num_attention_heads=4,
                         intermediate_size=1024, encoder_width=256),
        embed_dim=128,
    )
    torch.manual_seed(0)
    return SViTTForPreTraining(config).to(device).train()


def measure(spec: dict) -> dict:
    """Runs inside the child process."""
    import torch

    from training import loop
    from training.launch import make_accelerator

    if spec["configuration"].endswith("without cache"):
        loop.takes_contrastive_cache = lambda model: False

    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    micro_batch, count = CONFIGURATIONS[spec["configuration"]]
    accelerator = make_accelerator(log=False, mixed_precision="no")
    accelerator.gradient_accumulation_steps = count
    model = build_model(spec["size"], device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    micro_batches = []
    for index in range(count):
        input_ids = torch.randint(1000, 30000, (micro_batch, 32), generator=generator)
        input_ids[:, 0] = model.config.text_config.cls_token_id
        micro_batches.append({
            "pixel_values": torch.randn(micro_batch, 8, 3, 224, 224, generator=generator).to(device),
            "input_ids": input_ids.to(device),
            "attention_mask": torch.ones_like(input_ids).to(device),
            "match_ids": torch.arange(micro_batch, device=device) + index * micro_batch,
        })

    def step() -> None:
        loop.accumulate_gradients(accelerator, model, micro_batches, seeds=list(range(count)))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device == "cuda":
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        result = time_steps(step, spec["iterations"])
        result["peak_bytes"] = torch.cuda.max_memory_allocated() - baseline
        return result
    resident = resident_memory()  # the process with the model and optimizer built, before any step
    return {**time_steps(step, spec["iterations"]), "resident_before_bytes": resident}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=("small", "base"))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--configurations", nargs="+", default=list(CONFIGURATIONS), choices=list(CONFIGURATIONS))
    parser.add_argument("--iterations", type=int, default=2, help="measured steps after the warm-up")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--time-cap", type=float, default=1800.0, help="seconds per configuration")
    parser.add_argument("--results", type=Path, default=RESULTS / "accumulation.jsonl")
    parser.add_argument("--rerun", action="store_true", help="measure again what the results already hold")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        report(result=measure(json.loads(args.child)))
        return

    import torch

    store = ResultStore(args.results)
    stored = {} if args.rerun else store.latest(KEY)
    for name in args.configurations:
        spec = {"size": args.size, "configuration": name, "device": args.device, "threads": args.threads,
                "iterations": args.iterations}
        key = tuple(spec[field] for field in KEY)
        if key in stored:
            continue
        print(f"running {json.dumps(spec)}", flush=True)
        load_before = os.getloadavg()[0]
        result = run_isolated([__file__, "--child", json.dumps(spec)], args.time_cap, int(0.85 * available_memory()))
        record = {**spec, **result, "load_before": load_before, "load_after": os.getloadavg()[0],
                  "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M")}
        store.append(record)
        stored[key] = record

    records = {name: stored.get((args.size, name, args.device, args.threads)) for name in args.configurations}
    reference = records.get("batch 2")
    lines = [
        f"Peak memory of one training step (ITC + ITM + MLM, AdamW), {args.size} SViTT, 8 frames of 224 px, "
        f"{args.device} "
        f"({'resident-set growth' if args.device == 'cpu' else 'max_memory_allocated'}, torch {torch.__version__})",
        "",
        "| configuration | clips per step | peak memory (MiB) | vs batch 2 | whole process peak (MiB) | vs batch 2 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]

    def whole(record):  # the process's peak resident set, model and optimizer included (CPU runs that recorded it)
        ok = record is not None and record.get("status") == "ok" and "resident_before_bytes" in record
        return record["resident_before_bytes"] + record["peak_bytes"] if ok else None

    for name in args.configurations:
        (micro_batch, count), record = CONFIGURATIONS[name], records[name]
        ok = all(r is not None and r.get("status") == "ok" for r in (record, reference))
        ratio = f"{record['peak_bytes'] / reference['peak_bytes']:.2f}x" if ok else ""
        both = whole(record) is not None and whole(reference) is not None
        process = f"{whole(record) / MIB:.0f} | {whole(record) / whole(reference):.2f}x" if both else " | "
        peak = describe(record, "peak_bytes", MIB, 0)
        lines.append(f"| {name} | {micro_batch * count} | {peak} | {ratio} | {process} |")
    table = "\n".join(lines)
    print(table)
    args.results.with_name(f"{args.results.stem}_{args.size}_{args.device}.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
