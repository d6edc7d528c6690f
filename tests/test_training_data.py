"""Training-data pieces of the pretraining script: the epoch sampler (resumable order, grouped hard negatives),
the synthetic set's reversed twins, and datasets that do not flip clips whose captions say left and right."""

from __future__ import annotations

import json

import torch

from training.data import EpochShuffleSampler, VideoCaptionDataset
from training.data.synthetic import SyntheticConfig, generate_synthetic_dataset


def test_epoch_sampler_order_depends_on_seed_and_epoch_only_and_keeps_groups_together():
    sampler = EpochShuffleSampler(12, seed=3, group_size=2)
    sampler.set_epoch(1)
    first = list(sampler)
    list(EpochShuffleSampler(12, seed=3, group_size=2))  # iterating another sampler changes nothing
    again = EpochShuffleSampler(12, seed=3, group_size=2)
    again.set_epoch(1)
    assert list(again) == first and sorted(first) == list(range(12))
    assert all(first[i] // 2 == first[i + 1] // 2 and first[i] % 2 == 0 for i in range(0, 12, 2))
    sampler.set_epoch(2)
    assert list(sampler) != first


def test_reversed_twins_follow_their_clips_with_the_reversed_caption(tmp_path):
    config = SyntheticConfig(seed=4, num_pretrain_clips=3, num_test_clips=2, num_ego_train_videos=1,
                             num_ego_test_videos=5, segments_per_ego_video=5, mcq_items_per_type=1,
                             reversed_twins=True)
    dataset = generate_synthetic_dataset(tmp_path / "set", config)
    rows = json.loads(dataset.pretrain.read_text())
    assert len(rows) == 6 and len(json.loads(dataset.qa_train.read_text())) == 3 * config.questions_per_clip
    for clip, twin in zip(rows[::2], rows[1::2]):
        assert twin["video"].endswith("_reversed.mp4") and (dataset.root / twin["video"]).is_file()
        first, second = clip["caption"].split(", then ") if ", then " in clip["caption"] else (None, None)
        if first is not None:  # "a X moves d1, then a Y moves d2" -> "a Y moves opposite(d2), then a X moves ..."
            assert twin["caption"].split(", then ")[1].split(" moves ")[0] == first.split(" moves ")[0]
    train = VideoCaptionDataset(dataset.pretrain, train=True, num_frames=4, horizontal_flip=False)
    frames = [train.read_clip(row["video"], torch.Generator().manual_seed(0)) for row in train.records[:2]]
    assert frames[0].shape == frames[1].shape and not torch.equal(frames[0], frames[1])


def test_training_clips_are_flipped_only_when_allowed(tmp_path, monkeypatch):
    config = SyntheticConfig(seed=4, num_pretrain_clips=2, num_test_clips=2, num_ego_train_videos=1,
                             num_ego_test_videos=5, segments_per_ego_video=5, mcq_items_per_type=1)
    dataset = generate_synthetic_dataset(tmp_path / "set", config)
    for allowed in (True, False):
        train = VideoCaptionDataset(dataset.pretrain, train=True, num_frames=4, horizontal_flip=allowed)
        calls = []
        original = train.video_processor.process_video
        monkeypatch.setattr(train.video_processor, "process_video",
                            lambda video, **kwargs: calls.append(kwargs) or original(video, **kwargs))
        train[0]
        assert calls[0]["do_random_horizontal_flip"] is allowed and calls[0]["do_random_resized_crop"] is True


def test_pretraining_opens_a_stage_data_when_the_stage_starts_and_releases_it_after(tmp_path, monkeypatch):
    import gc
    import weakref

    import training.pretrain as pretrain
    import training.run as run
    from helpers.tiny_recipe import write_tiny_recipe

    monkeypatch.setenv("SVITT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    opened = []  # (stage, weak reference) of every dataset opened, in order
    open_train_dataset = run.open_train_dataset

    def recording(recipe, index, *args, **kwargs):
        gc.collect()
        # a stage's training data is opened only while no other stage's is alive (the checks before the first step
        # open and drop each stage's in turn)
        assert [stage for stage, ref in opened if ref() is not None] == [], f"opening stage {index}"
        dataset = open_train_dataset(recipe, index, *args, **kwargs)
        opened.append((index, weakref.ref(dataset)))
        return dataset

    monkeypatch.setattr(run, "open_train_dataset", recording)
    recipe = write_tiny_recipe(tmp_path, stages=[
        {"num_frames": 2, "token_keep_rate": 0.75, "steps": 1}, {"num_frames": 2, "token_keep_rate": 0.5, "steps": 1},
    ])
    pretrain.main(["--recipe", str(recipe), "--output-dir", str(tmp_path / "out")])
    assert [stage for stage, _ in opened] == [0, 1, 0, 1]  # checked up front, then opened at each stage's start


def test_fine_tuning_and_pretraining_open_this_process_share_of_a_stage(tmp_path, monkeypatch):
    # Both scripts open a stage's data through the run skeleton, which passes the process's rank: a streamed stage
    # (shards) is split by rank, and fine-tuning used to open rank 0's share on every process.
    from types import SimpleNamespace

    import training.run as run

    opened = []
    monkeypatch.setattr(run, "open_train_dataset", lambda recipe, index, *args: opened.append((index, *args[-2:])))
    accelerator = SimpleNamespace(num_processes=4, process_index=3)
    training_run = run.TrainingRun(recipe=None, output_dir=tmp_path, accelerator=accelerator, folder=None,
                                   synthetic_root=None, processor=None, max_steps=None, started=0.0)
    training_run.open_train_dataset(1)
    assert opened == [(1, 4, 3)]
