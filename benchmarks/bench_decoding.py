"""Decoding cost of a 4-frame clip from a 10-second and from a 10-minute video.

The reader seeks to the keyframe before each wanted frame, so taking 4 frames should cost about the same for both
lengths. For contrast the script also times a sequential decoder (`transformers.video_utils.load_video` with its PyAV
backend, which decodes every frame up to the last one it needs) and a full decode of each file.

    python benchmarks/bench_decoding.py [--size 128x96] [--fps 25] [--keyframe-seconds 2] [--repeats 7]

Videos are generated into a temporary folder (removed afterwards unless `--workdir` is given).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from modeling_svitt.video_io import probe_video, read_video, write_video


def moving_frames(num_frames: int, width: int, height: int):
    """A square sweeping over a gradient: cheap to draw, not trivially compressible."""
    rows, cols = np.mgrid[0:height, 0:width]
    background = np.stack([cols * 255 // width, rows * 255 // height, np.full_like(rows, 96)], axis=-1).astype(np.uint8)
    side = max(8, height // 6)
    for i in range(num_frames):
        frame = background.copy()
        top, left = (i * 3) % (height - side), (i * 5) % (width - side)
        frame[top : top + side, left : left + side] = (255 - i % 256, i % 256, 200)
        yield frame


def timed(function, repeats: int) -> float:
    """Median wall time in milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def sequential_reader():
    try:
        from transformers.video_utils import load_video
    except ImportError:
        return None

    def read(path: str, num_frames: int):
        return load_video(path, num_frames=num_frames, backend="pyav")

    return read


def full_decode(path: str) -> int:
    import av

    with av.open(path) as container:
        return sum(1 for _ in container.decode(video=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="128x96", help="WIDTHxHEIGHT of the generated videos")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--keyframe-seconds", type=float, default=2.0, help="seconds between keyframes")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--workdir", default=None, help="keep the generated videos here")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    torch.set_num_threads(1)

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="svitt-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    videos = {}
    for label, seconds in (("10 s", 10), ("10 min", 600)):
        path = workdir / f"video_{seconds}s.mp4"
        if not path.exists():
            start = time.perf_counter()
            num_frames = int(seconds * args.fps)
            write_video(
                path,
                moving_frames(num_frames, width, height),
                fps=args.fps,
                keyframe_interval=int(args.keyframe_seconds * args.fps),
                crf=23,
            )
            print(f"wrote {label} video ({num_frames} frames, {path.stat().st_size / 1e6:.1f} MB) in "
                  f"{time.perf_counter() - start:.1f} s")
        videos[label] = str(path)

    sequential = sequential_reader()
    rows = []
    for label, path in videos.items():
        metadata = probe_video(path)
        generator = torch.Generator().manual_seed(0)
        row = {
            "video": label,
            "frames": metadata.num_frames,
            "seek middle (ms)": timed(lambda: read_video(path, 4, "middle"), args.repeats),
            "seek rand (ms)": timed(lambda: read_video(path, 4, "rand", generator=generator), args.repeats),
            "seek 3x4 clips (ms)": timed(lambda: read_video(path, 4, "middle", num_clips=3), args.repeats),
        }
        if sequential is not None:
            row["sequential 4 (ms)"] = timed(lambda: sequential(path, 4), max(1, args.repeats // 3))
        row["decode all (ms)"] = timed(lambda: full_decode(path), 1)
        rows.append(row)

    columns = list(rows[0])
    print()
    print(" | ".join(f"{c:>20}" for c in columns))
    for row in rows:
        print(" | ".join(f"{row[c]:>20.1f}" if isinstance(row[c], float) else f"{row[c]:>20}" for c in columns))
    short, long = rows
    print()
    for key in ("seek middle (ms)", "seek rand (ms)", "seek 3x4 clips (ms)"):
        print(f"{key}: 10 min / 10 s = {long[key] / short[key]:.2f}x")
    if not args.workdir:
        for path in videos.values():
            Path(path).unlink()
        workdir.rmdir()


if __name__ == "__main__":
    main()
