"""Two "machines" on 127.0.0.1: each runs its own `accelerate launch --num_machines 2 --machine_rank R ...` (one
gloo process each), as a cluster's nodes do. They train into one shared output folder that only the global main
process writes; launches whose machines disagree (another seed, a folder the other machine does not see) are refused
on every machine; the SLURM example builds these commands from SLURM's variables."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import shutil

import pytest

from helpers.tiny_recipe import ROOT, subprocess_env, write_tiny_recipe

TIMEOUT = 420
CONFIGS = ROOT / "training" / "configs"
SLURM_SCRIPT = ROOT / "training" / "configs" / "slurm_multi_node.sh"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def machine_command(
    config: str, rank: int, port: int, probe: Path, recipe: Path, output_dir: Path, *extra: str
) -> list[str]:
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
        "--num_machines", "2", "--machine_rank", str(rank), "--num_processes", "2",
        "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
        str(ROOT / "tests" / "helpers" / "launch_probe.py"), str(probe),
        "--recipe", str(recipe), "--output-dir", str(output_dir), *extra,
    ]


def launch_two_machines(
    tmp_path: Path, config: str = "multi_node.yaml", extra: tuple[tuple[str, ...], ...] = ((), ()), outputs=None
):
    """Start machine 0 and machine 1 at once (each its own launcher, as on two nodes); their results."""
    recipe = write_tiny_recipe(tmp_path, stages=[{"num_frames": 2, "token_keep_rate": 0.75, "steps": 2}])
    outputs = outputs or (tmp_path / "run", tmp_path / "run")
    env = {**subprocess_env(tmp_path / "cache"), "PROBE_WRITES": "1"}
    port = free_port()
    machines = [
        subprocess.Popen(
            machine_command(config, rank, port, tmp_path / "probe", recipe, outputs[rank], *extra[rank]), env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for rank in (0, 1)
    ]
    results = []
    try:
        for machine in machines:
            stdout, stderr = machine.communicate(timeout=TIMEOUT)
            results.append((machine.returncode, stdout, stderr))
    finally:
        for machine in machines:
            machine.kill()
    return results


@pytest.mark.parametrize(
    "config, engine, own_parts",
    [
        ("multi_node.yaml", "MULTI_CPU", {"random_states_1.pkl"}),
        pytest.param(
            "multi_node_deepspeed.yaml",
            "DEEPSPEED",
            {"random_states_1.pkl", "zero_pp_rank_1_mp_rank_00_optim_states.pt"},
            marks=pytest.mark.skipif(shutil.which("g++") is None, reason="DeepSpeed builds its CPU op with g++"),
        ),
    ],
    ids=["ddp", "deepspeed"],
)
def test_two_machines_train_identically_into_one_folder_written_by_the_global_main_process_only(
    tmp_path, config, engine, own_parts
):
    results = launch_two_machines(tmp_path, config)
    for rank, (code, stdout, stderr) in enumerate(results):
        assert code == 0, f"machine {rank} failed:\n{stdout[-2000:]}\n{stderr[-5000:]}"
    probe, run_dir = tmp_path / "probe", tmp_path / "run"
    ranks = [json.loads((probe / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert [rank["num_processes"] for rank in ranks] == [2, 2]  # the launch checks accepted one 2-process run
    assert {rank["distributed_type"] for rank in ranks} == {engine}
    samples = [set(rank["samples"]) for rank in ranks]
    assert samples[0] and samples[1] and not samples[0] & samples[1]  # each machine trained on its own shard
    assert ranks[0]["weights"] == ranks[1]["weights"]

    from modeling_svitt import SViTTForPreTraining

    saved = SViTTForPreTraining.from_pretrained(run_dir)
    digest = sum(float(p.detach().double().sum()) for p in saved.parameters())
    assert digest == pytest.approx(ranks[0]["weights"], rel=1e-9)  # the folder holds the trained weights
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stages"][0]["steps"] == 2

    main_writes = json.loads((probe / "writes0.json").read_text())
    for record in ("recipe.yaml", "metrics.jsonl", "summary.json", "stage-1-2f"):
        assert any(record in write for write in main_writes), (record, main_writes)
    # machine 1's process is the main process of its machine, but writes nothing of the run folder: only its part of
    # each saved training state (its random generators; its ZeRO shard), which `save_state` asks of every process
    other_writes = json.loads((probe / "writes1.json").read_text())
    assert {Path(write.split(" ", 1)[1]).name for write in other_writes} == own_parts, other_writes
    for write in other_writes:
        event, path = write.split(" ", 1)
        assert event == "torch.save" and Path(path).parts[:2] == ("checkpoints", ".tmp-stage-1-2f-step-0000002")


@pytest.mark.parametrize(
    "extra, outputs, message",
    [
        (((), ("--seed", "1")), None, "seed is 1 there and 0 on process 0"),
        (((), ()), ("run", "elsewhere"), "does not see the output folder that process 0 writes"),
    ],
    ids=["another-seed", "folder-not-shared"],
)
def test_machines_that_disagree_are_refused_on_every_machine(tmp_path, extra, outputs, message):
    folders = tuple(tmp_path / name for name in outputs) if outputs else None
    results = launch_two_machines(tmp_path, extra=extra, outputs=folders)
    for rank, (code, stdout, stderr) in enumerate(results):
        assert code != 0, f"machine {rank} was not refused:\n{stdout[-2000:]}"
        assert "Refusing to train" in stderr and message in stderr, stderr[-5000:]
        assert "process 1 (on " in stderr  # names the process that differs, and its machine
    for folder in folders or (tmp_path / "run",):
        assert not (folder / "recipe.yaml").exists() and not (folder / "checkpoints").exists()


def test_slurm_example_starts_one_launcher_per_machine_with_its_rank_and_the_first_host(tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    # `srun` runs its command once per node, as SLURM does with one task per node; `scontrol` lists the hosts
    (fake_bin / "srun").write_text(
        '#!/bin/bash\nwhile [[ "$1" == -* ]]; do shift; done\n'
        'for node in $(seq 0 $((SLURM_NNODES - 1))); do SLURM_NODEID=$node SLURM_PROCID=$node "$@"; done\n'
    )
    (fake_bin / "scontrol").write_text('#!/bin/bash\n[ "$1 $2" = "show hostnames" ] && tr "," "\\n" <<< "$3"\n')
    (fake_bin / "accelerate").write_text('#!/bin/bash\necho "node $SLURM_NODEID: accelerate $*"\n')
    for tool in fake_bin.iterdir():
        tool.chmod(0o755)
    env = {
        **os.environ, "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}", "SLURM_NNODES": "3",
        "SLURM_JOB_NODELIST": "gpu-a,gpu-b,gpu-c", "SLURM_JOB_ID": "4242", "GPUS_PER_NODE": "4",
    }
    result = subprocess.run(
        ["bash", str(SLURM_SCRIPT), "training/pretrain.py", "--recipe", "svitt", "--output-dir", "/shared/svitt"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("node ")]
    assert len(lines) == 3
    for node, line in enumerate(lines):
        assert f"--machine_rank {node} " in line
        assert "--num_machines 3 --num_processes 12" in line
        assert "--main_process_ip gpu-a --main_process_port " in line
        assert "--config_file training/configs/multi_node.yaml " in line
        assert line.endswith("training/pretrain.py --recipe svitt --output-dir /shared/svitt")
    ports = {line.split("--main_process_port ")[1].split()[0] for line in lines}
    assert len(ports) == 1  # every machine meets the main process on the same port


def test_slurm_example_refuses_to_start_without_a_training_script(tmp_path):
    result = subprocess.run(["bash", str(SLURM_SCRIPT)], env={**os.environ, "SLURM_NNODES": "2"}, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "training/pretrain.py" in result.stderr


def test_starting_over_is_left_to_the_global_main_process(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import accelerate.utils

    from training.run_folder import LOCK, MARKER, claim_output_folder

    (tmp_path / MARKER).write_text(json.dumps({"fingerprint": {"seed": 0}, "finished": False}))
    for name in ("summary.json", "metrics.jsonl", "notes.txt"):
        (tmp_path / name).write_text("{}")
    for name in ("checkpoints/stage-1-step-0000002", "logs/pretrain"):
        (tmp_path / name).mkdir(parents=True)
    before = {path.name for path in tmp_path.iterdir()}
    # another process, on this machine or another: it would race the main one over the shared folder
    # the main process's answer, as the broadcast brings it: a new run, not finished
    monkeypatch.setattr(accelerate.utils, "broadcast_object_list", lambda objects: objects.__setitem__(0, (False, False)))
    claim_output_folder(SimpleNamespace(is_main_process=False, num_processes=2), tmp_path, {"seed": 1}, False,
                        ["summary.json"])
    assert {path.name for path in tmp_path.iterdir()} == before
    claim_output_folder(SimpleNamespace(is_main_process=True, num_processes=1), tmp_path, {"seed": 1}, False,
                        ["summary.json"])
    assert {path.name for path in tmp_path.iterdir()} - {MARKER, LOCK} == {"notes.txt"}  # what the run did not write
