"""Real multi-process training on CPU: every head under DDP (gloo) without unused parameters; the pretraining
script under `accelerate launch` with DeepSpeed ZeRO-2 and with DDP; a launch that would silently train
unsynchronised copies refused."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from helpers import ddp_heads_worker
from helpers.tiny_recipe import ROOT, subprocess_env, write_tiny_recipe

TIMEOUT = 420


def test_every_head_trains_under_ddp_without_unused_parameters(tmp_path):
    mp.start_processes(
        ddp_heads_worker.run, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, start_method="spawn"
    )
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    for rank_results in results:
        assert "crash" not in rank_results, rank_results.get("crash")
        for name, _, _, _, freeze in ddp_heads_worker.cases():
            if freeze:
                assert rank_results[name] == {"ok": True, "same_weights": True}, (name, rank_results[name])
        # without freezing, DDP finds the parameters the contrastive forward leaves unused
        control = rank_results["model-not-frozen"]
        assert not control["ok"] and "were not used in producing loss" in control["error"], control


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(tmp_path, config: str, *extra, env_extra=None, check=True):
    probe = tmp_path / "probe"
    recipe = write_tiny_recipe(tmp_path, stages=[{"num_frames": 2, "token_keep_rate": 0.75, "steps": 2}])
    env = subprocess_env(tmp_path / "cache")
    env.update(env_extra or {})
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "training" / "configs" / config),
        "--main_process_port", str(free_port()), str(ROOT / "tests" / "helpers" / "launch_probe.py"), str(probe),
        "--recipe", str(recipe), "--output-dir", str(tmp_path / "run"), *extra,
    ]
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    if check and result.returncode != 0:
        raise AssertionError(f"launch failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return probe, result


def check_two_ranks(probe, run_dir, engine: str):
    ranks = [json.loads((probe / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert [rank["num_processes"] for rank in ranks] == [2, 2]
    assert {rank["distributed_type"] for rank in ranks} == {engine}
    samples = [set(rank["samples"]) for rank in ranks]
    assert samples[0] and samples[1] and not samples[0] & samples[1]  # disjoint shards
    assert ranks[0]["weights"] == ranks[1]["weights"]  # identical weights after the steps
    from modeling_svitt import SViTTForPreTraining

    model = SViTTForPreTraining.from_pretrained(run_dir / "stage-1-2f")
    digest = sum(float(p.detach().double().sum()) for p in model.parameters())
    assert digest == pytest.approx(ranks[0]["weights"], rel=1e-9)  # the saved folder holds the trained weights


@pytest.mark.skipif(shutil.which("g++") is None, reason="DeepSpeed builds its CPU communication op with g++")
def test_deepspeed_zero2_two_processes_disjoint_shards_identical_weights_reloadable_stage(tmp_path):
    probe, _ = launch(tmp_path, "deepspeed_zero2.yaml")
    check_two_ranks(probe, tmp_path / "run", "DEEPSPEED")


def test_ddp_launch_two_cpu_processes_and_sharded_evaluation_equals_one_process(tmp_path, monkeypatch):
    probe, _ = launch(tmp_path, "ddp.yaml")
    run_dir = tmp_path / "run"
    check_two_ranks(probe, run_dir, "MULTI_CPU")
    # the two processes evaluated shards (videos, ITM pairs) and gathered them: one process gets the same numbers
    from training.launch import make_accelerator
    from training.evaluation_loops import evaluate_checkpoint
    from training.data.synthetic import SyntheticConfig, generate_synthetic_dataset
    from training.recipe import load_recipe
    from helpers.tiny_recipe import TINY_SYNTHETIC

    monkeypatch.setenv("SVITT_CACHE_DIR", str(tmp_path / "cache"))
    synthetic = generate_synthetic_dataset(config=SyntheticConfig(**TINY_SYNTHETIC)).root
    recipe = load_recipe(tmp_path / "tiny.yaml")
    metrics = evaluate_checkpoint(make_accelerator(log=False), run_dir / "stage-1-2f", recipe.evaluation, synthetic)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert metrics.pop("num_test_videos") == summary["num_test_videos"]
    assert metrics == pytest.approx(summary["stages"][0]["metrics"], abs=1e-6)


def test_deepspeed_switched_off_by_a_cpu_flag_is_refused(tmp_path):
    _, result = launch(tmp_path, "deepspeed_zero2.yaml", env_extra={"ACCELERATE_USE_CPU": "true"}, check=False)
    assert result.returncode != 0
    assert "Refusing to train" in result.stderr and "DeepSpeed was requested" in result.stderr
    assert not (tmp_path / "run" / "stage-1-2f").exists()


def test_two_processes_refuse_a_folder_that_is_not_the_runs_together(tmp_path):
    user_folder = tmp_path / "run"
    user_folder.mkdir()
    (user_folder / "notes.txt").write_text("mine")
    _, result = launch(tmp_path, "ddp.yaml", check=False)  # the main process refuses; the other must not wait forever
    assert result.returncode != 0
    assert result.stderr.count("is not empty and was not created by a training run") >= 2  # both processes say why
    assert [path.name for path in user_folder.iterdir()] == ["notes.txt"]
