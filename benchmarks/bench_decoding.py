"""`read_video` against one sequential pass, on files of several lengths, sizes and keyframe layouts.

For every file and sampling strategy the script times `read_video` and one sequential pass that takes the same
frames: PyAV decoding from the start (same decoder settings), converting each wanted frame to RGB as it passes and
stopping at the last one. The sequential pass is decoded once per file and timed frame by frame, so the cost for
each strategy (decoding up to its last frame, plus converting its own frames) comes from the same pass. Every frame
`read_video` returns is checked against the sequential pass, byte for byte.

    python benchmarks/bench_decoding.py [--files 4s-360p,20s-720p,60s-1080p,10min-720p] [--repeats 5]

Files are H.264 (libx264, `superfast`, B-frames) of a panning texture with a moving block, at 25 fps, with one
keyframe, a keyframe every 2 s or every 10 s. They are generated once and cached in `--cache-dir` (default: a
folder in the system's temporary directory), which the script only ever adds its own files to.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from modeling_svitt.video_io import probe_video, read_video

FPS = 25
SIZES = {"360p": (640, 360), "480p": (854, 480), "720p": (1280, 720), "1080p": (1920, 1080)}
LAYOUTS = {"one keyframe": None, "every 2 s": 2, "every 10 s": 10}
STRATEGIES = {
    "rand": ("rand", {}),
    "rand_release": ("rand_release", {}),
    "middle": ("middle", {}),
    "uniform": ("uniform", {}),
    "fps0.5": ("fps0.5", {}),
    "segment": ("middle", {"segment": (0.3, 0.6)}),  # a [start, end] segment, as fractions of the duration
    "3 clips": ("middle", {"num_clips": 3}),
}
# A 10-minute file with a single keyframe is not made: seeking cannot help there, and one pass costs minutes.
SKIPPED = {("10min", "one keyframe")}


def parse_file(spec: str) -> tuple[str, float, str]:
    """`4s-360p` / `10min-720p` -> (length label, seconds, size label)."""
    length, size = spec.split("-")
    seconds = float(length[:-3]) * 60 if length.endswith("min") else float(length.rstrip("s"))
    if size not in SIZES:
        raise ValueError(f"Unknown size {size!r} in {spec!r}; expected one of {list(SIZES)}.")
    return length, seconds, size


def textured_frames(num_frames: int, width: int, height: int):
    """A slowly panning texture (coarse shapes plus grain) with a moving block: motion the encoder must track."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (height // 16 + 2, width // 16 + 2, 3), dtype=np.uint8)
    texture = np.repeat(np.repeat(coarse, 16, axis=0), 16, axis=1)
    texture = (texture // 2 + rng.integers(0, 32, texture.shape, dtype=np.uint8)).astype(np.uint8)
    side = height // 6
    for i in range(num_frames):
        dy, dx = (i // 2) % 16, i % 16
        frame = texture[dy : dy + height, dx : dx + width].copy()
        top, left = (i * 3) % (height - side), (i * 5) % (width - side)
        frame[top : top + side, left : left + side] = (255 - i % 256, i % 256, 200)
        yield frame


def make_video(path: Path, seconds: float, width: int, height: int, keyframe_seconds: float | None) -> None:
    import av

    partial = path.with_suffix(".partial.mp4")
    with av.open(str(partial), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        interval = 1_000_000 if keyframe_seconds is None else int(keyframe_seconds * FPS)
        stream.options = {"g": str(interval), "keyint_min": str(interval), "sc_threshold": "0",
                          "preset": "superfast", "crf": "26"}
        for array in textured_frames(int(seconds * FPS), width, height):
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    partial.rename(path)  # a run cut short never leaves a file that looks complete


def now() -> np.ndarray:
    """(wall-clock, CPU) seconds. CPU time counts the work of every thread of this process (the decoder's too) and
    not the time spent waiting for a core, so it stays meaningful on a machine loaded by other work."""
    return np.array([time.perf_counter(), time.process_time()])


def sequential_pass(path: str, wanted: dict[str, list[float]]) -> tuple[dict[str, np.ndarray], dict[float, np.ndarray]]:
    """
    Decode the file once from the start. For each strategy (its target times), the (wall, CPU) seconds a sequential
    reader returning what `read_video` returns would spend: opening the file, decoding up to the frame on screen at
    its last target, converting its frames to RGB and stacking them into a `(T, 3, H, W)` tensor.
    Also returns the RGB frame on screen at every target, for the byte-for-byte check.
    """
    import av

    targets = sorted({t for times in wanted.values() for t in times})
    convert_cost, shown, done_at = {}, {}, {}
    previous, next_target = None, 0
    start = now()
    container = av.open(path)
    frames = container.decode(video=0)
    clock = now() - start
    while next_target < len(targets):
        start = now()
        frame = next(frames, None)
        clock += now() - start
        seconds = None if frame is None else float(frame.time)
        # every target before this frame's time is shown by the previous frame
        while next_target < len(targets) and (seconds is None or seconds > targets[next_target]):
            target = targets[next_target]
            start = now()
            shown[target] = (previous if previous is not None else frame).to_ndarray(format="rgb24")
            convert_cost[target] = now() - start
            done_at[target] = clock.copy()
            next_target += 1
        if frame is None:
            break
        previous = frame
    container.close()
    costs = {}
    for name, times in wanted.items():
        start = now()
        torch.from_numpy(np.stack([shown[t] for t in times])).permute(0, 3, 1, 2).contiguous()
        stacking = now() - start
        costs[name] = done_at[max(times)] + sum(convert_cost[t] for t in set(times)) + stacking
    return costs, shown


def read(path: str, sample: str, options: dict, duration: float):
    options = dict(options)
    if "segment" in options:
        low, high = options.pop("segment")
        options.update(start=low * duration, end=high * duration)
    return read_video(path, 4, sample, generator=torch.Generator().manual_seed(0), **options)


def bench_file(path: str, repeats: int) -> list[dict]:
    """Repeats alternate `read_video` (every strategy) and the sequential pass; each figure is the fastest repeat,
    the estimate of the cost least disturbed by other work on the machine."""
    duration = probe_video(path).duration
    read_times = {name: [] for name in STRATEGIES}
    sequential_times = {name: [] for name in STRATEGIES}
    for _ in range(repeats):
        decoded, wanted = {}, {}
        for name, (sample, options) in STRATEGIES.items():
            start = now()
            video = decoded[name] = read(path, sample, options, duration)
            read_times[name].append(now() - start)
            step = video.metadata.frame_step
            wanted[name] = [video.metadata.start_time + (i + 0.5) * step for i in video.frame_indices]
        costs, shown = sequential_pass(path, wanted)
        for name, cost in costs.items():
            sequential_times[name].append(cost)
    rows = []
    for name, video in decoded.items():
        flat = video.frames.reshape(-1, *video.frames.shape[-3:]).permute(0, 2, 3, 1).numpy()
        read_time, sequential = np.min(read_times[name], axis=0), np.min(sequential_times[name], axis=0)
        rows.append({
            "strategy": name,
            "frames": len(video.frame_indices),
            "read_video CPU (ms)": read_time[1] * 1000,
            "sequential CPU (ms)": sequential[1] * 1000,
            "CPU ratio": read_time[1] / sequential[1],
            "read_video wall (ms)": read_time[0] * 1000,
            "sequential wall (ms)": sequential[0] * 1000,
            "wall ratio": read_time[0] / sequential[0],
            "identical": all(np.array_equal(frame, shown[t]) for frame, t in zip(flat, wanted[name])),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", default="4s-360p,20s-720p,60s-1080p,10min-720p",
                        help="comma-separated LENGTH-SIZE (LENGTH like 4s or 10min; SIZE one of %s)" % list(SIZES))
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help=f"comma-separated, of {list(LAYOUTS)}")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per file and strategy (the fastest counts)")
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "svitt-bench-decoding"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)

    table = []
    for spec in args.files.split(","):
        length, seconds, size = parse_file(spec)
        for layout in args.layouts.split(","):
            if (length, layout) in SKIPPED:
                continue
            path = cache / f"{length}-{size}-{layout.replace(' ', '_')}.mp4"
            if not path.exists():
                start = time.perf_counter()
                make_video(path, seconds, *SIZES[size], LAYOUTS[layout])
                print(f"generated {path.name} in {time.perf_counter() - start:.0f} s", flush=True)
            # more repeats where a step takes milliseconds (noisy on a loaded machine), fewer where it takes seconds
            repeats = 3 * args.repeats if seconds <= 5 else args.repeats if seconds <= 30 else 2 if seconds <= 120 else 1
            for row in bench_file(str(path), repeats):
                row = {"file": f"{length} {size}", "keyframes": layout, **row}
                table.append(row)
                print(row, flush=True)

    columns = list(table[0])
    print("\n| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    for row in table:
        cells = [f"{row[c]:.1f}" if c.endswith("(ms)") else f"{row[c]:.2f}" if c.endswith("ratio") else str(row[c])
                 for c in columns]
        print("| " + " | ".join(cells) + " |")
    for key in ("CPU ratio", "wall ratio"):
        worst = max(table, key=lambda row: row[key])
        print(f"worst {key}: {worst[key]:.2f} ({worst['file']}, {worst['keyframes']}, {worst['strategy']})")


if __name__ == "__main__":
    main()
