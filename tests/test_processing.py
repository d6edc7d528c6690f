"""SViTTVideoProcessor (release transforms in torch) and SViTTProcessor (saving, Auto classes, remote code)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.python_subprocess import run_python
from helpers.bert_vocab import bert_vocab_dir
from test_video_io import write_index_video

from modeling_svitt.processing_svitt import (
    SViTTProcessor,
    SViTTVideoProcessor,
    random_resized_crop_box,
    register_processing_auto_classes,
)
from modeling_svitt.tokenization_svitt import SViTTTokenizer
from modeling_svitt.video_io import VideoDecodingError


@pytest.fixture(scope="module")
def tokenizer() -> SViTTTokenizer:
    return SViTTTokenizer.from_pretrained(bert_vocab_dir())


@pytest.fixture
def noise_video() -> torch.Tensor:
    """4 different random frames, uint8 (T, 3, H, W), 40 x 48."""
    return torch.randint(0, 256, (4, 3, 40, 48), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def release_eval_transform(frames: torch.Tensor, size: int) -> torch.Tensor:
    """The release's test transform as torchvision 0.11 ran it on uint8 tensors, written out by hand."""
    resized = F.interpolate(frames.float(), size=(size, size), mode="bicubic", align_corners=False)
    return (resized.round().clamp(0, 255) / 255 - 0.5) / 0.5


def test_eval_transform_matches_the_release(noise_video):
    processor = SViTTVideoProcessor(size=32)
    pixel_values = processor(noise_video).pixel_values
    assert pixel_values.shape == (1, 4, 3, 32, 32) and pixel_values.dtype == torch.float32
    torch.testing.assert_close(pixel_values[0], release_eval_transform(noise_video, 32), rtol=0, atol=1e-6)


def test_normalisation_maps_to_minus_one_one():
    video = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    video[1] = 255
    pixel_values = SViTTVideoProcessor(size=8)(video).pixel_values[0]
    assert torch.all(pixel_values[0] == -1) and torch.all(pixel_values[1] == 1)


def test_random_crop_is_the_same_for_every_frame(noise_video):
    processor = SViTTVideoProcessor(size=24, do_random_resized_crop=True, flip_probability=0.0)
    processor_flip = SViTTVideoProcessor(size=24, do_random_resized_crop=True, do_random_horizontal_flip=True)
    out = processor.process_video(noise_video, generator=torch.Generator().manual_seed(7))
    top, left, height, width = random_resized_crop_box(40, 48, generator=torch.Generator().manual_seed(7))
    assert (height, width) != (40, 48)
    for frame_in, frame_out in zip(noise_video, out):
        # each frame cropped on its own with the one box drawn for the clip
        expected = release_eval_transform(frame_in[None, :, top : top + height, left : left + width], 24)[0]
        torch.testing.assert_close(frame_out, expected, rtol=0, atol=1e-6)
    # identical input frames stay identical, flip or not
    same = noise_video[:1].expand(4, -1, -1, -1)
    for seed in range(5):
        clip = processor_flip.process_video(same, generator=torch.Generator().manual_seed(seed))
        assert all(torch.equal(clip[0], frame) for frame in clip[1:])


def test_flip_is_applied_to_the_whole_clip(noise_video):
    plain = SViTTVideoProcessor(size=16)(noise_video).pixel_values
    flipped = SViTTVideoProcessor(size=16, do_random_horizontal_flip=True, flip_probability=1.0)(noise_video)
    torch.testing.assert_close(flipped.pixel_values, plain.flip(-1), rtol=0, atol=0)
    never = SViTTVideoProcessor(size=16, do_random_horizontal_flip=True, flip_probability=0.0)(noise_video)
    torch.testing.assert_close(never.pixel_values, plain, rtol=0, atol=0)


def test_augmentation_is_reproducible_with_a_generator(noise_video):
    processor = SViTTVideoProcessor(size=16, do_random_resized_crop=True, do_random_horizontal_flip=True)
    first = processor(noise_video, generator=torch.Generator().manual_seed(3)).pixel_values
    again = processor(noise_video, generator=torch.Generator().manual_seed(3)).pixel_values
    other = processor(noise_video, generator=torch.Generator().manual_seed(4)).pixel_values
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_random_resized_crop_box_respects_its_ranges():
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, height, width = random_resized_crop_box(100, 120, generator=generator)
        assert 0 <= top <= 100 - height and 0 <= left <= 120 - width
        assert 0.5 - 0.03 <= height * width / 12000 <= 1.0
        assert 3 / 4 - 0.05 <= width / height <= 4 / 3 + 0.05
    # impossible scale: the fallback is the central box clamped to the ratio range
    assert random_resized_crop_box(100, 300, scale=(2.0, 3.0)) == (0, 83, 100, 133)


def test_input_layouts_give_the_same_pixels(noise_video):
    processor = SViTTVideoProcessor(size=16)
    reference = processor(noise_video).pixel_values
    channels_last = noise_video.permute(0, 2, 3, 1)
    for variant in (channels_last, channels_last.numpy(), [frame.numpy() for frame in channels_last], [noise_video]):
        torch.testing.assert_close(processor(variant).pixel_values, reference, rtol=0, atol=0)
    batch = processor([noise_video, channels_last.numpy()]).pixel_values
    assert batch.shape == (2, 4, 3, 16, 16)
    assert processor(torch.stack([noise_video] * 3)).pixel_values.shape == (3, 4, 3, 16, 16)
    image = processor(channels_last[0].numpy()).pixel_values  # a still image is a one-frame video
    assert image.shape == (1, 1, 3, 16, 16)
    clips = processor([torch.stack([noise_video, noise_video])]).pixel_values  # (K, T, ...) per video
    assert clips.shape == (1, 2, 4, 3, 16, 16)
    with pytest.raises(ValueError, match="same number of clips and frames"):
        processor([noise_video, noise_video[:2]])
    assert isinstance(processor(noise_video, return_tensors="np").pixel_values, np.ndarray)


def test_files_are_decoded_and_bad_files_named(tmp_path):
    path = write_index_video(tmp_path / "v.mp4", 30)
    processor = SViTTVideoProcessor(size=16, num_frames=3)
    assert processor([path, str(path)]).pixel_values.shape == (2, 3, 3, 16, 16)
    assert processor(path, num_clips=2).pixel_values.shape == (1, 2, 3, 3, 16, 16)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 1000)
    with pytest.raises(VideoDecodingError, match="broken.mp4"):
        processor([path, broken])


def test_unknown_arguments_are_rejected(noise_video):
    with pytest.raises(TypeError, match="do_random_crop"):
        SViTTVideoProcessor()(noise_video, do_random_crop=True)
    with pytest.raises(ValueError, match="interpolation"):
        SViTTVideoProcessor(interpolation="lanczos")


def test_video_processor_takes_videos_by_keyword_and_images_as_one_frame_videos(noise_video):
    processor = SViTTVideoProcessor(size=16)
    positional = processor(noise_video).pixel_values
    torch.testing.assert_close(processor(videos=noise_video).pixel_values, positional)
    frame = noise_video[0].permute(1, 2, 0).numpy()  # (H, W, C)
    assert processor(images=frame).pixel_values.shape == (1, 1, 3, 16, 16)
    with pytest.raises(ValueError, match="exactly one of `videos`, `images`"):
        processor(videos=noise_video, images=frame)


def test_processor_rejects_a_keyword_that_neither_part_accepts(tokenizer, noise_video):
    processor = _processor(tokenizer)
    # without text, a misspelled video option used to vanish into the unused tokenizer arguments
    for call in (
        lambda: processor(videos=noise_video, do_random_crop=True),
        lambda: processor(text="a", videos=noise_video, do_random_crop=True),
        lambda: processor(text="a", text_kwargs={"do_random_crop": True}),
    ):
        with pytest.raises(TypeError, match=r"unexpected arguments \['do_random_crop'\].*do_random_resized_crop"):
            call()


def test_video_processor_save_load(tmp_path):
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor

    processor = SViTTVideoProcessor(size={"height": 20, "width": 30}, crop_scale=(0.3, 0.9), num_frames=8)
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "video_preprocessor_config.json").read_text())
    assert config["video_processor_type"] == "SViTTVideoProcessor" and config["num_frames"] == 8
    reloaded = SViTTVideoProcessor.from_pretrained(tmp_path)
    assert reloaded.to_dict() == processor.to_dict()
    assert SViTTVideoProcessor.from_pretrained(tmp_path, num_frames=4).num_frames == 4
    register_processing_auto_classes()
    assert AutoVideoProcessor.from_pretrained(tmp_path).to_dict() == processor.to_dict()


def test_a_video_processor_saved_in_the_first_format_loads(tmp_path):
    """Before it was a transformers video processor, it was saved as an image processor."""
    processor = SViTTVideoProcessor(size=20, num_frames=8)
    first_format = {**processor.to_dict(), "image_processor_type": "SViTTVideoProcessor"}
    del first_format["video_processor_type"]
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(first_format))
    assert SViTTVideoProcessor.from_pretrained(tmp_path).to_dict() == processor.to_dict()


def _processor(tokenizer) -> SViTTProcessor:
    return SViTTProcessor(SViTTVideoProcessor(size=16), tokenizer, max_text_length=8)


def test_processor_call(tokenizer, noise_video):
    processor = _processor(tokenizer)
    inputs = processor(text=["A red square moves left!", "b"], videos=[noise_video, noise_video])
    assert set(inputs) == {"input_ids", "attention_mask", "pixel_values"}
    assert inputs["input_ids"].shape == (2, 8) and inputs["pixel_values"].shape == (2, 4, 3, 16, 16)
    assert inputs["input_ids"][1].tolist() == [101, 1038, 0, 0, 0, 0, 0, 0]
    assert not (inputs["input_ids"] == tokenizer.sep_token_id).any()
    # keyword arguments go to the part they belong to
    routed = processor(text="a b c d", videos=noise_video, max_length=4, do_resize=False)
    assert routed["input_ids"].shape == (1, 4) and routed["pixel_values"].shape == (1, 4, 3, 40, 48)
    routed = processor(text="a", videos=noise_video, text_kwargs={"max_length": 3}, videos_kwargs={"size": 8})
    assert routed["input_ids"].shape == (1, 3) and routed["pixel_values"].shape[-1] == 8
    assert processor(text="a").keys() == {"input_ids", "attention_mask"}


def test_encode_answers(tokenizer):
    answers = _processor(tokenizer).encode_answers(["Yes", "a very long answer indeed"])
    assert answers["answer_input_ids"].tolist() == [[101, 2748, 102, 0, 0], [101, 1037, 2200, 2146, 3437]]
    assert answers["answer_attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]


def test_processor_save_load_and_auto_processor(tokenizer, noise_video, tmp_path):
    from transformers import AutoProcessor
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor

    register_processing_auto_classes()
    processor = _processor(tokenizer)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    # where transformers' processors keep a video processor: its own entry, typed and auto-mapped as one
    assert "image_processor" not in saved and saved["video_processor"]["video_processor_type"] == "SViTTVideoProcessor"
    assert saved["video_processor"]["auto_map"]["AutoVideoProcessor"] == "processing_svitt.SViTTVideoProcessor"
    assert SViTTProcessor.get_attributes() == ["video_processor", "tokenizer"]
    for loaded in (SViTTProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is SViTTProcessor and loaded.max_text_length == 8
        assert loaded.video_processor.to_dict() == processor.video_processor.to_dict()
        expected = processor(text="a dog", videos=noise_video)
        actual = loaded(text="a dog", videos=noise_video)
        assert all(torch.equal(expected[key], actual[key]) for key in expected)
    assert type(AutoVideoProcessor.from_pretrained(tmp_path)) is SViTTVideoProcessor


def _first_format(folder) -> None:
    """Rewrite a saved processor as the first format did: the video processor under `image_processor`, typed and
    auto-mapped as an image processor."""
    path = folder / "processor_config.json"
    saved = json.loads(path.read_text())
    video_processor = saved.pop("video_processor")
    video_processor["image_processor_type"] = video_processor.pop("video_processor_type")
    video_processor["auto_map"]["AutoImageProcessor"] = video_processor["auto_map"].pop("AutoVideoProcessor")
    path.write_text(json.dumps({**saved, "image_processor": video_processor}))


def test_a_processor_saved_in_the_first_format_loads(tokenizer, noise_video, tmp_path):
    from transformers import AutoProcessor

    register_processing_auto_classes()
    processor = _processor(tokenizer)
    processor.save_pretrained(tmp_path)
    _first_format(tmp_path)
    for loaded in (
        SViTTProcessor.from_pretrained(tmp_path),
        AutoProcessor.from_pretrained(tmp_path),
    ):
        assert loaded.video_processor.to_dict() == processor.video_processor.to_dict()
        assert torch.equal(loaded(videos=noise_video).pixel_values, processor(videos=noise_video).pixel_values)
    assert SViTTVideoProcessor.from_pretrained(tmp_path).to_dict() == processor.video_processor.to_dict()
    # saved again, it is in the current format
    SViTTProcessor.from_pretrained(tmp_path).save_pretrained(tmp_path / "again")
    assert "video_processor" in json.loads((tmp_path / "again" / "processor_config.json").read_text())


def test_a_first_format_folder_holding_another_image_processor_is_refused(tokenizer, tmp_path):
    _processor(tokenizer).save_pretrained(tmp_path)
    _first_format(tmp_path)
    path = tmp_path / "processor_config.json"
    saved = json.loads(path.read_text())
    saved["image_processor"]["image_processor_type"] = "CLIPImageProcessor"
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="holds a CLIPImageProcessor under `image_processor`"):
        SViTTProcessor.from_pretrained(tmp_path)


def test_remote_code_processor_loads_without_the_package(tokenizer, tmp_path):
    register_processing_auto_classes()
    saved = tmp_path / "saved"
    _processor(tokenizer).save_pretrained(saved)
    shipped = ("processing_svitt.py", "tokenization_svitt.py", "video_io.py", "video_container.py", "video_seeking.py")
    for name in shipped:
        assert (saved / name).is_file()
    hub_copy = tmp_path / "elsewhere" / "svitt-processor"
    shutil.copytree(saved, hub_copy)
    script = """
        import numpy as np
        from transformers import AutoProcessor, AutoTokenizer
        from transformers.models.auto.video_processing_auto import AutoVideoProcessor
        processor = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
        out = processor(text="A red square!", videos=np.zeros((4, 20, 20, 3), np.uint8))
        tokenizer = AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True)
        video_processor = AutoVideoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
        assert tokenizer("A red square!").input_ids == [101, 1037, 2417, 2675], tokenizer("A red square!").input_ids
        assert type(video_processor).__name__ == "SViTTVideoProcessor" and video_processor.size["height"] == 16
        print(type(processor).__name__, type(processor.tokenizer).__name__, type(processor.video_processor).__name__)
        print(out["input_ids"].tolist(), tuple(out["pixel_values"].shape))
        """
    env = dict(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"))
    result = run_python(script, str(hub_copy), env=env, cwd=tmp_path / "elsewhere", with_package=False)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[-2] == "SViTTProcessor SViTTTokenizer SViTTVideoProcessor"
    assert lines[-1] == "[[101, 1037, 2417, 2675, 0, 0, 0, 0]] (1, 4, 3, 16, 16)"


def test_float_frames_already_in_zero_one_warn_and_do_rescale_false_is_honoured(noise_video):
    import logging as std_logging

    from transformers.testing_utils import CaptureLogger

    from modeling_svitt.processing_svitt import logger

    std_logging.Logger.warning_once.cache_clear()  # the warning is given once per process
    processor = SViTTVideoProcessor(size=(40, 48))  # the frames' own size: no resize
    scaled = noise_video.float() / 255
    with CaptureLogger(logger) as captured:
        twice = processor(scaled).pixel_values
    assert "already rescaled" in captured.out and "do_rescale=False" in captured.out
    reference = processor(noise_video).pixel_values
    assert twice.max() < -0.99  # rescaled again: every pixel near -1, the silent wrong answer the warning names
    once = processor(scaled, do_rescale=False).pixel_values
    torch.testing.assert_close(once, reference, rtol=0, atol=1e-5)
    std_logging.Logger.warning_once.cache_clear()
    with CaptureLogger(logger) as captured:
        processor(noise_video.float())  # floats in [0, 255]: nothing to say
        processor(scaled, do_rescale=False)
    assert captured.out == ""


def test_grayscale_clips_are_read_as_frames_not_as_one_rgba_image(noise_video):
    processor = SViTTVideoProcessor(size=16)
    gray = noise_video[:, 0]  # (T, H, W)
    as_rgb = processor(gray[:, None].expand(-1, 3, -1, -1)).pixel_values
    five = torch.cat([gray, gray[:1]])  # 5 frames: unambiguous
    assert processor(five).pixel_values.shape == (1, 5, 3, 16, 16)
    torch.testing.assert_close(processor(five).pixel_values[:, :4], as_rgb, rtol=0, atol=0)
    torch.testing.assert_close(processor([frame.numpy() for frame in gray]).pixel_values, as_rgb, rtol=0, atol=0)
    assert processor(gray[0]).pixel_values.shape == (1, 1, 3, 16, 16)  # one (H, W) image
    with pytest.raises(ValueError, match=r"ambiguous.*\(T, H, W, 1\)"):
        processor(gray)  # (4, H, W): an RGBA image, or four grayscale frames
    torch.testing.assert_close(processor(gray[..., None]).pixel_values, as_rgb, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"size": 0}, "`size` must be positive"),
        ({"size": {"height": -1, "width": 8}}, "`size` must be positive"),
        ({"image_std": [0.5, float("nan"), 0.5]}, "`image_std` must be positive finite numbers"),
        ({"image_std": -0.5}, "`image_std` must be positive finite numbers"),
        ({"image_mean": [float("nan")] * 3}, "`image_mean` must be finite numbers"),
        ({"frame_sampling": "bogus"}, "`frame_sampling` must be one of"),
    ],
)
def test_impossible_transform_settings_name_the_field(noise_video, kwargs, field):
    with pytest.raises(ValueError, match=field):
        SViTTVideoProcessor(**kwargs)
    with pytest.raises(ValueError, match=field):  # also as a call-time override
        SViTTVideoProcessor(size=8)(noise_video, **kwargs)
def test_the_processor_is_built_and_loaded_without_pillow_or_torchvision(tmp_path):
    """What `SViTTProcessor.check_argument_for_proper_class` is there for: transformers' video-processor classes are
    placeholders that demand torchvision (its image-processor classes demand Pillow); a video model needs neither."""
    script = f"""
        import sys
        sys.modules["PIL"] = None  # importing Pillow fails, as where it is not installed
        sys.modules["torchvision"] = None
        from transformers import AutoProcessor
        from modeling_svitt import SViTTProcessor, SViTTTokenizer, SViTTVideoProcessor
        tokenizer = SViTTTokenizer.from_pretrained({bert_vocab_dir()!r})
        SViTTProcessor(SViTTVideoProcessor(size=16), tokenizer).save_pretrained(sys.argv[1])
        for load in (SViTTProcessor.from_pretrained, AutoProcessor.from_pretrained):
            processor = load(sys.argv[1])
            print(type(processor.video_processor).__name__, processor.video_processor.size["height"])
        try:
            SViTTProcessor(tokenizer, tokenizer)
        except TypeError as error:
            print("refused:", error)
        """
    result = run_python(script, str(tmp_path / "saved"), env=dict(HF_HUB_OFFLINE="1"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[:2] == ["SViTTVideoProcessor 16", "SViTTVideoProcessor 16"]
    assert lines[2].startswith("refused: Received a SViTTTokenizer for argument video_processor")
