"""Gradient accumulation with exact contrastive batches (`ContrastiveCache`, `training.loop.accumulate_gradients`):
4 micro-batches of 2 train as one batch of 8, in one process and in two (gloo) processes gathering negatives; under
DeepSpeed with the configs' "auto" batch fields; in a `--max-steps` pretraining run. The processes skip a step
together when one of them could read nothing; the bad-sample budget is per process."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from accelerate.utils import DistributedType

from helpers import accumulation_worker as worker
from modeling_svitt import ContrastiveCache, SViTTForPreTraining
from modeling_svitt.losses import itc_loss
from helpers.tiny_configs import tiny_config
from helpers.tiny_recipe import pretrain_command, subprocess_env, write_tiny_recipe
from training.launch import make_accelerator
from training.data.readers import BadSampleTracker, TooManyBadSamplesError
from training.loop import accumulate_gradients, configure_deepspeed_batch
from training.recipe import RecipeError, load_recipe

TOLERANCE = dict(atol=1e-5, rtol=1e-5)


def assert_same_gradients(result: dict) -> None:
    torch.testing.assert_close(result["accumulated_loss"], result["whole_loss"], **TOLERANCE)
    accumulated, whole = result["accumulated"], result["whole"]
    assert accumulated.keys() == whole.keys()
    # both towers, their projections and the temperature get a gradient
    assert any("vision_model" in name for name in whole) and any("text_model" in name for name in whole)
    assert any(name.endswith("temperature") for name in whole)
    for name, gradient in whole.items():
        assert gradient.abs().sum() > 0, name
        torch.testing.assert_close(accumulated[name], gradient, **TOLERANCE, msg=name)


# ---------------------------------------------------------------------------------------------------------------------
# One process
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", worker.CONTRASTIVE_LOSSES)
def test_cached_contrastive_loss_and_gradients_equal_one_batch(loss):
    inputs = worker.batch(loss=loss)
    generator = torch.Generator().manual_seed(0)
    video, text = torch.randn(worker.BATCH, 6, generator=generator), torch.randn(worker.BATCH, 6, generator=generator)
    labels = {key: inputs.get(key) for key in ("verb_tags", "noun_tags", "video_ids")}

    def loss_of(video, text, match_ids, **kwargs):
        return itc_loss(F.normalize(video, dim=-1), F.normalize(text, dim=-1), 0.07, match_ids, loss_type=loss,
                        **kwargs)

    whole_video, whole_text = video.clone().requires_grad_(), text.clone().requires_grad_()
    whole = loss_of(whole_video, whole_text, inputs["match_ids"], **labels)
    whole.loss.backward()

    micro = worker.split({"video": video, "text": text, **inputs})
    cache = ContrastiveCache()
    for part in micro:
        cache.add(F.normalize(part["video"], dim=-1), F.normalize(part["text"], dim=-1), part["match_ids"],
                  verb_tags=part.get("verb_tags"), noun_tags=part.get("noun_tags"), video_ids=part["video_ids"])
    video_grads, text_grads, total = [], [], 0.0
    for index, part in enumerate(micro):
        part_video, part_text = part["video"].clone().requires_grad_(), part["text"].clone().requires_grad_()
        out = loss_of(part_video, part_text, part["match_ids"], cache=cache, micro_batch_index=index,
                      **{key: part.get(key) for key in labels})
        (out.loss / len(micro)).backward()  # what accumulation back-propagates: the mean of the micro-batches' losses
        total += out.loss.item() / len(micro)
        video_grads.append(part_video.grad)
        text_grads.append(part_text.grad)
        # the micro-batch's rows against every column; ITM negatives are drawn from its own columns
        assert out.logits_per_video.shape == (worker.MICRO_BATCH_SIZE, worker.BATCH)
        assert out.local_offset == index * worker.MICRO_BATCH_SIZE
    assert total == pytest.approx(whole.loss.item(), abs=1e-6)
    torch.testing.assert_close(torch.cat(video_grads), whole_video.grad, **TOLERANCE)
    torch.testing.assert_close(torch.cat(text_grads), whole_text.grad, **TOLERANCE)


def test_cache_refuses_labels_given_by_some_micro_batches_only():
    cache = ContrastiveCache()
    cache.add(torch.randn(2, 4), torch.randn(2, 4), torch.arange(2))
    with pytest.raises(ValueError, match="Micro-batch 1 gives `verb_tags` and micro-batch 0 does not"):
        cache.add(torch.randn(2, 4), torch.randn(2, 4), torch.arange(2), verb_tags=torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"`micro_batch_index` must be in \[0, 1\)"):
        itc_loss(torch.randn(2, 4), torch.randn(2, 4), 0.1, torch.arange(2), cache=cache, micro_batch_index=1)
    with pytest.raises(ValueError, match="together"):
        itc_loss(torch.randn(2, 4), torch.randn(2, 4), 0.1, cache=cache)


@pytest.fixture(scope="module")
def accelerator():
    return make_accelerator(log=False)


@pytest.mark.parametrize("loss", worker.CONTRASTIVE_LOSSES)
def test_four_micro_batches_of_two_train_as_one_batch_of_eight(accelerator, loss):
    model = worker.prepared_model(accelerator, worker.contrastive_config(loss))
    assert_same_gradients(worker.accumulated_and_whole(accelerator, model, worker.batch(loss=loss)))


def test_second_pass_replays_the_randomness_of_the_cached_pass(accelerator):
    """With random attention blocks and dropout, each micro-batch's second pass draws what its cached pass drew (both
    seeded alike), so the accumulated gradient is the gradient of the loss over every micro-batch's embeddings."""
    config = tiny_config(text={"hidden_dropout_prob": 0.2}, loss_weight_itm=0.0, loss_weight_mlm=0.0)
    model = worker.prepared_model(accelerator, config)
    micro_batches, seeds = worker.split(worker.batch()), [11, 12, 13, 14]
    accelerator.gradient_accumulation_steps = len(micro_batches)
    accumulate_gradients(accelerator, model, micro_batches, seeds)
    accumulated = worker.gradients(model)
    model.zero_grad(set_to_none=True)

    videos, texts = [], []
    for batch, seed in zip(micro_batches, seeds):
        torch.manual_seed(seed)
        towers = model(**batch, return_loss=False)
        videos.append(towers.video_embeds)
        texts.append(towers.text_embeds)
    match_ids = torch.cat([batch["match_ids"] for batch in micro_batches])
    model.svitt.contrastive(torch.cat(videos), torch.cat(texts), match_ids).loss.backward()
    expected = worker.gradients(model)
    model.zero_grad(set_to_none=True)
    assert accumulated.keys() == expected.keys()
    for name, gradient in expected.items():
        torch.testing.assert_close(accumulated[name], gradient, **TOLERANCE, msg=name)


def test_itm_and_mlm_stay_within_each_micro_batch(accelerator):
    model = worker.prepared_model(accelerator, tiny_config(vision={"num_random_blocks": 0}))
    micro_batches = worker.split(worker.batch())
    cache = ContrastiveCache()
    with torch.no_grad():
        for batch in micro_batches:
            towers = model(**batch, return_loss=False)
            cache.add(towers.video_embeds, towers.text_embeds, batch["match_ids"], video_ids=batch["video_ids"])
        out = model(**micro_batches[1], contrastive_cache=cache, micro_batch_index=1)
    size = worker.MICRO_BATCH_SIZE
    assert out.logits_per_text.shape == (size, worker.BATCH)
    assert out.mlm_logits.shape[0] == size and out.itm_labels.shape[0] <= 3 * size
    assert ((out.negative_video_indices >= 0) & (out.negative_video_indices < size)).all()


# ---------------------------------------------------------------------------------------------------------------------
# Two processes
# ---------------------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("accumulation")
    context = mp.start_processes(worker.run, args=(free_port(), str(folder)), nprocs=2, start_method="spawn",
                                 join=False)
    while not context.join(timeout=300):
        pass
    results = [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in range(2)]
    for result in results:
        assert "crash" not in result, result.get("crash")
    return results


@pytest.mark.parametrize("loss", worker.CONTRASTIVE_LOSSES)
def test_two_processes_gathering_negatives_accumulate_as_one_batch(two_processes, loss):
    for rank_results in two_processes:
        assert_same_gradients(rank_results[loss])
    # the synchronised gradients are the same on both processes
    first, second = (rank_results[loss]["accumulated"] for rank_results in two_processes)
    for name in first:
        torch.testing.assert_close(first[name], second[name])


def test_a_step_one_process_cannot_read_is_skipped_by_every_process(two_processes):
    runs = [rank_results["bad_batch"] for rank_results in two_processes]
    assert [run["steps"] for run in runs] == [3, 3]
    assert [run["skipped_steps"] for run in runs] == [1, 1]
    assert runs[0]["weights"] == runs[1]["weights"] and runs[0]["lr"] == runs[1]["lr"]


# ---------------------------------------------------------------------------------------------------------------------
# The bad-sample budget, the recipe field, DeepSpeed's batch fields, a run
# ---------------------------------------------------------------------------------------------------------------------


def test_bad_sample_budget_counts_against_what_this_process_reads():
    error = OSError("corrupt.mp4")
    single = BadSampleTracker(100, max_bad_fraction=0.1, name="set")
    single.record_success(99)
    for index in range(10):
        single.record(index, error)  # 10 of 100 allowed for one process

    shared = BadSampleTracker(100, max_bad_fraction=0.1, name="set")
    shared.set_num_readers(2)  # this process reads 50 samples an epoch: 5 may fail
    shared.record_success(99)
    for index in range(5):
        shared.record(index, error)
    with pytest.raises(TooManyBadSamplesError, match=r"6 of the 50 samples of set \(what this process read"):
        shared.record(5, error)

    later = BadSampleTracker(100, max_bad_fraction=0.1, name="set")
    later.set_num_readers(2)
    for index in range(20, 90):
        later.record_success(index)  # 70 samples read over several epochs: 7 may fail
    for index in range(7):
        later.record(index, error)
    with pytest.raises(TooManyBadSamplesError, match="8 of the 78 samples"):
        later.record(7, error)


def test_recipe_refuses_a_bad_accumulation_count(tmp_path):
    recipe = write_tiny_recipe(tmp_path)
    accumulated = load_recipe(str(recipe), ["stages.*.gradient_accumulation_steps=3"])
    assert [stage.gradient_accumulation_steps for stage in accumulated.stages] == [3, 3]
    with pytest.raises(RecipeError, match=r"stages\.0\.gradient_accumulation_steps: must be a positive integer"):
        load_recipe(str(recipe), ["stages.0.gradient_accumulation_steps=0"])


def test_deepspeed_auto_batch_fields_take_every_stage_s_values():
    def deepspeed_accelerator(config):
        plugin = SimpleNamespace(deepspeed_config=config)
        return SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, num_processes=2,
                               state=SimpleNamespace(deepspeed_plugin=plugin))

    config = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto"}
    accelerator = deepspeed_accelerator(config)
    configure_deepspeed_batch(accelerator, 8, 4, "stages.0")
    assert config == {"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 4, "train_batch_size": 64}
    configure_deepspeed_batch(accelerator, 4, 2, "stages.1")  # "auto" again, although the first stage filled it
    assert config == {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2, "train_batch_size": 16}

    fixed = deepspeed_accelerator({"gradient_accumulation_steps": 1})
    with pytest.raises(RecipeError, match='stages.0: the DeepSpeed config sets gradient_accumulation_steps=1, but '
                                          'this stage runs 4 .*"auto"'):
        configure_deepspeed_batch(fixed, 8, 4, "stages.0")


@pytest.mark.skipif(shutil.which("g++") is None, reason="DeepSpeed builds its CPU communication op with g++")
def test_deepspeed_zero2_two_processes_accumulate(tmp_path):
    from test_distributed_training import launch

    probe, _ = launch(tmp_path, "deepspeed_zero2.yaml", "--set", "stages.*.gradient_accumulation_steps=2",
                      "--set", "stages.*.batch_size=2")
    ranks = [json.loads((probe / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert ranks[0]["weights"] == ranks[1]["weights"]
    model = SViTTForPreTraining.from_pretrained(tmp_path / "run" / "stage-1-2f")
    digest = sum(float(p.detach().double().sum()) for p in model.parameters())
    assert digest == pytest.approx(ranks[0]["weights"], rel=1e-9)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [record["stage_step"] for record in logged if "loss" in record] == [1, 2]


def test_pretraining_run_with_gradient_accumulation(tmp_path):
    recipe = write_tiny_recipe(tmp_path, stages=[{"num_frames": 2, "token_keep_rate": 0.75, "steps": 3,
                                                  "gradient_accumulation_steps": 2}])
    output = tmp_path / "run"
    command = pretrain_command(recipe, output, "--max-steps", "2")
    result = subprocess.run(command, env=subprocess_env(tmp_path / "cache"), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-5000:]
    stage = json.loads((output / "summary.json").read_text())["stages"][0]
    assert stage["steps"] == 2
    logged = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    steps = [record for record in logged if "loss" in record]
    assert [record["stage_step"] for record in steps] == [1, 2]
    assert all(record["loss_itc"] > 0 for record in steps)
    assert stage["clips_per_second"] > 0
