"""Video and text preprocessing for SViTT, in plain torch (no torchvision, no Pillow).

[`SViTTVideoProcessor`] reproduces the release's transforms, applied to a whole clip at once so that
every frame gets the same crop and flip:

* training: random resized crop (scale 0.5-1, ratio 3/4-4/3, bicubic) then horizontal flip with probability 0.5;
* evaluation: resize to 224 x 224 (aspect ratio not kept, no crop);
* then `/ 255` and normalisation with mean 0.5 and std 0.5 (values in [-1, 1], the BEiT convention).

The release resized `uint8` tensors with torchvision 0.11: bicubic without antialiasing, rounded back to `uint8`
before scaling. The defaults (`antialias=False`, rounding for `uint8` input) keep that bit-for-bit behaviour.

[`SViTTProcessor`] pairs it with [`SViTTTokenizer`] and the release's text settings (`[CLS] tokens` without
`[SEP]`, padding to `max_length`, caption cleaning).
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin, VideosKwargs
from transformers.utils import logging
from transformers.video_processing_utils import VideoProcessorMixin

from .tokenization_svitt import SViTTTokenizer
from .video_io import CLIP_LAYOUTS, SAMPLING_STRATEGIES, DecodedVideo, is_sampling_strategy, read_video

logger = logging.get_logger(__name__)

INTERPOLATION_MODES = ("bicubic", "bilinear", "nearest")
CHANNEL_COUNTS = (1, 3, 4)


def _as_pair(value, name: str) -> tuple[float, float]:
    pair = tuple(float(v) for v in value)
    if len(pair) != 2 or pair[0] > pair[1]:
        raise ValueError(f"`{name}` must be an increasing pair (low, high), got {value!r}.")
    return pair


def _as_size(size) -> dict[str, int]:
    if isinstance(size, int):
        pair = {"height": size, "width": size}
    elif isinstance(size, dict) and {"height", "width"} <= set(size):
        pair = {"height": int(size["height"]), "width": int(size["width"])}
    elif isinstance(size, (list, tuple)) and len(size) == 2:
        pair = {"height": int(size[0]), "width": int(size[1])}
    else:
        raise ValueError(f"`size` must be an int, (height, width) or {{'height': h, 'width': w}}, got {size!r}.")
    if min(pair.values()) < 1:
        raise ValueError(f"`size` must be positive (the output frame size in pixels), got {size!r}.")
    return pair


def _check_channel_values(name: str, values, positive: bool = False) -> None:
    array = np.atleast_1d(np.asarray(values, dtype=float))
    if not np.isfinite(array).all() or (positive and not (array > 0).all()):
        kind = "positive finite numbers" if positive else "finite numbers"
        raise ValueError(f"`{name}` must be {kind} (one per RGB channel, or one for all), got {values!r}.")


def _image_or_grayscale_clip(video: torch.Tensor) -> torch.Tensor:
    """A 3-D input as `(T, ..., H, W)` frames: one image `(H, W, C)` or `(C, H, W)` (C = 3, as torchvision stores an
    image; a one-frame video), else a grayscale clip `(T, H, W)`."""
    first, last = video.shape[0], video.shape[-1]
    if last in CHANNEL_COUNTS or first in (1, 3):
        return video[None]
    if first == 4:
        raise ValueError(
            f"A video of shape {tuple(video.shape)} is ambiguous: one RGBA image with its channels first, or a "
            "grayscale clip of 4 frames. Give grayscale frames a channel axis, (T, H, W, 1) or (T, 1, H, W), and an "
            "RGBA image as (H, W, 4)."
        )
    return video[:, None]


def _warn_if_already_rescaled(video: torch.Tensor) -> None:
    # The heuristic of transformers' image processors: float pixels within [0, 1] were most likely scaled already.
    if video.is_floating_point() and video.numel() and video.min() >= 0 and video.max() <= 1:
        logger.warning_once(
            "It looks like you are trying to rescale already rescaled frames: float pixel values in [0, 1] are "
            "multiplied by `rescale_factor` (1/255) again. Pass `do_rescale=False` if they are already in [0, 1], "
            "or give uint8 frames in [0, 255]."
        )


def random_resized_crop_box(
    height: int,
    width: int,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """
    Draw the crop box of a random resized crop (the algorithm of torchvision's `RandomResizedCrop`).

    Up to ten times, draw an area fraction uniformly in `scale` and an aspect ratio log-uniformly in `ratio`, and
    accept the box if it fits; otherwise fall back to the largest central box whose aspect ratio is within `ratio`.

    Returns:
        `(top, left, crop_height, crop_width)`.
    """
    area = height * width
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        draws = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * draws[0])
        aspect = math.exp(log_low + (log_high - log_low) * draws[1])
        crop_width = int(round(math.sqrt(target_area * aspect)))
        crop_height = int(round(math.sqrt(target_area / aspect)))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = int(torch.randint(0, height - crop_height + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - crop_width + 1, (1,), generator=generator))
            return top, left, crop_height, crop_width
    in_ratio = width / height
    if in_ratio < ratio[0]:
        crop_width, crop_height = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        crop_height, crop_width = height, int(round(height * ratio[1]))
    else:
        crop_height, crop_width = height, width
    return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width


class SViTTVideoProcessorKwargs(VideosKwargs, total=False):
    """Arguments of [`SViTTVideoProcessor`] beyond the common video-processor ones."""

    interpolation: str | None
    antialias: bool | None
    do_random_resized_crop: bool | None
    crop_scale: list[float] | tuple[float, float] | None
    crop_ratio: list[float] | tuple[float, float] | None
    do_random_horizontal_flip: bool | None
    flip_probability: float | None
    num_frames: int | None
    frame_sampling: str | None
    num_clips: int | None
    clip_layout: str | None


class SViTTVideoProcessor(VideoProcessorMixin):
    r"""
    Turns videos into `pixel_values (batch, frames, 3, height, width)` the way the SViTT release did, with torch only.

    Videos can be given as files (decoded with [`read_video`], sampling `num_frames` frames with `frame_sampling`),
    as [`DecodedVideo`] objects, or as frames: a `(T, H, W, C)` / `(T, C, H, W)` array or tensor (C = 1, 3 or 4;
    alpha is dropped), a grayscale `(T, H, W)` clip, a list of `(H, W, C)` or `(H, W)` frames, or a single image
    `(H, W, C)`, `(3, H, W)` or `(H, W)` (a one-frame video). A `(4, H, W)` input is refused as ambiguous (an RGBA
    image or four grayscale frames). A batch is a list of those, or a 5-D array.
    `uint8` input is expected in [0, 255]; float input is rescaled by `rescale_factor` too unless `do_rescale=False`
    (float input already in [0, 1] gets a warning, as `transformers` image processors give).
    A video holding several clips `(K, T, C, H, W)` (test-time ensembling) gives `pixel_values (B, K, T, 3, H, W)`.

    Every random choice (crop box, flip) is drawn once per video and applied to all its frames and clips.

    It is a transformers video processor (`VideoProcessorMixin`: saved as `video_preprocessor_config.json`, loaded by
    `AutoVideoProcessor`) that needs neither torchvision nor Pillow: transformers' `BaseVideoProcessor` requires
    torchvision, so the transforms are written here in torch.

    Args:
        do_resize (`bool`, defaults to `True`): resize frames to `size` (evaluation transform).
        size (`dict[str, int]`, defaults to `{"height": 224, "width": 224}`): output frame size.
        interpolation (`str`, defaults to `"bicubic"`): `bicubic`, `bilinear` or `nearest`.
        antialias (`bool`, defaults to `False`): antialias when downscaling; `False` matches the release.
        do_random_resized_crop (`bool`, defaults to `False`): training transform; crop a random box (the same for
            every frame) and resize it to `size`. Replaces the plain resize.
        crop_scale (`tuple[float, float]`, defaults to `(0.5, 1.0)`): area fraction range of the random crop.
        crop_ratio (`tuple[float, float]`, defaults to `(3/4, 4/3)`): aspect ratio range of the random crop.
        do_random_horizontal_flip (`bool`, defaults to `False`): training transform; flip the whole clip.
        flip_probability (`float`, defaults to 0.5): probability of the flip.
        do_rescale (`bool`, defaults to `True`), rescale_factor (`float`, defaults to `1/255`): scale pixel values.
        do_normalize (`bool`, defaults to `True`), image_mean, image_std (defaults to 0.5 each): normalisation.
        num_frames (`int`, defaults to 4): frames per clip when decoding files.
        frame_sampling (`str`, defaults to `"middle"`): sampling strategy when decoding files (`rand` for training).
        num_clips (`int`, *optional*): clips per video when decoding files (test-time ensembling).
        clip_layout (`str`, defaults to `"consecutive"`): how the clips are cut, see [`split_clips`].
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = SViTTVideoProcessorKwargs
    # Transform parameters that a call may override; also the keys saved with the processor.
    _call_kwargs = (
        "do_resize",
        "size",
        "interpolation",
        "antialias",
        "do_random_resized_crop",
        "crop_scale",
        "crop_ratio",
        "do_random_horizontal_flip",
        "flip_probability",
        "do_rescale",
        "rescale_factor",
        "do_normalize",
        "image_mean",
        "image_std",
        "num_frames",
        "frame_sampling",
        "num_clips",
        "clip_layout",
    )

    def __init__(
        self,
        do_resize: bool = True,
        size: dict[str, int] | int | None = None,
        interpolation: str = "bicubic",
        antialias: bool = False,
        do_random_resized_crop: bool = False,
        crop_scale: Sequence[float] = (0.5, 1.0),
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        do_random_horizontal_flip: bool = False,
        flip_probability: float = 0.5,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | Sequence[float] = (0.5, 0.5, 0.5),
        image_std: float | Sequence[float] = (0.5, 0.5, 0.5),
        num_frames: int = 4,
        frame_sampling: str = "middle",
        num_clips: int | None = None,
        clip_layout: str = "consecutive",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.do_resize = do_resize
        self.size = _as_size(224 if size is None else size)
        self.interpolation = interpolation
        self.antialias = antialias
        self.do_random_resized_crop = do_random_resized_crop
        self.crop_scale = list(_as_pair(crop_scale, "crop_scale"))
        self.crop_ratio = list(_as_pair(crop_ratio, "crop_ratio"))
        self.do_random_horizontal_flip = do_random_horizontal_flip
        self.flip_probability = flip_probability
        self.do_rescale = do_rescale
        self.rescale_factor = rescale_factor
        self.do_normalize = do_normalize
        self.image_mean = [float(v) for v in np.broadcast_to(np.asarray(image_mean, dtype=float), (3,))]
        self.image_std = [float(v) for v in np.broadcast_to(np.asarray(image_std, dtype=float), (3,))]
        self.num_frames = num_frames
        self.frame_sampling = frame_sampling
        self.num_clips = num_clips
        self.clip_layout = clip_layout
        self._check(self.__dict__)

    @staticmethod
    def _check(options: dict[str, Any]) -> None:
        if options["interpolation"] not in INTERPOLATION_MODES:
            raise ValueError(f"`interpolation` must be one of {INTERPOLATION_MODES}, got {options['interpolation']!r}.")
        if not is_sampling_strategy(options["frame_sampling"]):
            raise ValueError(
                f"`frame_sampling` must be one of {SAMPLING_STRATEGIES}, got {options['frame_sampling']!r}."
            )
        if options["clip_layout"] not in CLIP_LAYOUTS:
            raise ValueError(f"`clip_layout` must be one of {CLIP_LAYOUTS}, got {options['clip_layout']!r}.")
        if not 0.0 <= options["flip_probability"] <= 1.0:
            raise ValueError(f"`flip_probability` must be in [0, 1], got {options['flip_probability']}.")
        _check_channel_values("image_mean", options["image_mean"])
        _check_channel_values("image_std", options["image_std"], positive=True)
        _check_channel_values("rescale_factor", options["rescale_factor"], positive=True)

    @classmethod
    def get_video_processor_dict(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """transformers' `get_video_processor_dict`, also reading a processor folder saved before the video processor
        had its own name (`"image_processor"` in `processor_config.json`)."""
        try:
            return super().get_video_processor_dict(pretrained_model_name_or_path, **kwargs)
        except OSError as missing:
            try:
                processor_dict, kwargs = SViTTProcessor.get_processor_dict(pretrained_model_name_or_path, **kwargs)
            except OSError:
                raise missing from None
            if not isinstance(processor_dict.get("video_processor"), dict):
                raise missing
            return processor_dict["video_processor"], kwargs

    def to_dict(self) -> dict[str, Any]:
        output = {key: getattr(self, key) for key in self._call_kwargs}
        output["video_processor_type"] = type(self).__name__
        if getattr(self, "auto_map", None) is not None:
            output["auto_map"] = self.auto_map
        return output

    # ----------------------------------------------------------------------------------------------------------------
    # Inputs

    def _load(self, video, options: dict[str, Any], generator: torch.Generator | None) -> torch.Tensor:
        """One video as a tensor `(..., T, C, H, W)`, decoding it first when it is a file."""
        if isinstance(video, (str, os.PathLike)):
            video = read_video(
                video,
                options["num_frames"],
                options["frame_sampling"],
                num_clips=options["num_clips"],
                clip_layout=options["clip_layout"],
                generator=generator,
            )
        if isinstance(video, DecodedVideo):
            return video.frames
        if isinstance(video, (list, tuple)):
            frames = [torch.as_tensor(np.asarray(frame)) if not torch.is_tensor(frame) else frame for frame in video]
            if not frames:
                raise ValueError("Got an empty list of frames.")
            stacked = torch.stack(frames)
            return self._channels_first(stacked[:, None] if stacked.ndim == 3 else stacked)  # (H, W) frames: gray
        if isinstance(video, np.ndarray):
            video = torch.from_numpy(np.ascontiguousarray(video))
        if not torch.is_tensor(video):
            raise TypeError(
                f"Cannot read a video from {type(video).__name__}; expected a file path, a DecodedVideo, "
                "frames as a numpy array / torch tensor, or a list of frames."
            )
        if video.ndim == 2:  # one grayscale image
            video = video[None, None]
        elif video.ndim == 3:
            video = _image_or_grayscale_clip(video)
        if video.ndim < 4:
            raise ValueError(f"A video must have at least 2 dimensions (H, W), got shape {tuple(video.shape)}.")
        return self._channels_first(video)

    @staticmethod
    def _channels_first(video: torch.Tensor) -> torch.Tensor:
        channels = CHANNEL_COUNTS
        if video.shape[-3] in channels and video.shape[-1] not in channels:
            pass
        elif video.shape[-1] in channels:
            video = video.movedim(-1, -3)
        else:
            raise ValueError(
                f"Cannot find the channel axis of a video of shape {tuple(video.shape)}: expected 1, 3 or 4 channels "
                "first (T, C, H, W) or last (T, H, W, C)."
            )
        if video.shape[-3] == 1:
            video = video.expand(*video.shape[:-3], 3, *video.shape[-2:])
        elif video.shape[-3] == 4:  # RGBA: drop alpha
            video = video[..., :3, :, :]
        return video

    def _split_batch(self, videos) -> list:
        """A list of videos from whatever the caller passed (one video or a batch)."""
        if isinstance(videos, (str, os.PathLike, DecodedVideo)):
            return [videos]
        if isinstance(videos, (np.ndarray, torch.Tensor)):
            if videos.ndim >= 5:  # (B, T, ...) or (B, K, T, ...)
                return list(videos)
            return [videos]
        if isinstance(videos, (list, tuple)):
            if not videos:
                raise ValueError("Got an empty batch of videos.")
            first = videos[0]
            # A list of 2-D/3-D arrays is the frames of one video; anything else is a batch.
            if isinstance(first, (np.ndarray, torch.Tensor)) and first.ndim in (2, 3):
                return [list(videos)]
            return list(videos)
        raise TypeError(f"Cannot read videos from {type(videos).__name__}.")

    # ----------------------------------------------------------------------------------------------------------------
    # Transforms

    def _resize(self, frames: torch.Tensor, size: dict[str, int], options: dict[str, Any]) -> torch.Tensor:
        target = (size["height"], size["width"])
        if tuple(frames.shape[-2:]) == target:
            return frames
        mode = options["interpolation"]
        return F.interpolate(
            frames,
            size=target,
            mode=mode,
            align_corners=False if mode != "nearest" else None,
            antialias=bool(options["antialias"]) and mode != "nearest",
        )

    def _transform(self, video: torch.Tensor, options: dict[str, Any], generator: torch.Generator | None):
        if options["do_rescale"]:
            _warn_if_already_rescaled(video)
        leading = video.shape[:-3]
        is_uint8 = video.dtype == torch.uint8
        frames = video.reshape(-1, *video.shape[-3:])
        size = _as_size(options["size"])
        height, width = frames.shape[-2:]

        if options["do_random_resized_crop"]:
            top, left, crop_height, crop_width = random_resized_crop_box(
                height, width, _as_pair(options["crop_scale"], "crop_scale"),
                _as_pair(options["crop_ratio"], "crop_ratio"), generator,
            )
            # crop before converting, so only the kept pixels are turned into floats
            frames = frames[..., top : top + crop_height, left : left + crop_width]
        frames = frames.to(torch.float32)
        if options["do_random_resized_crop"] or options["do_resize"]:
            frames = self._resize(frames, size, options)
        if is_uint8:
            # torchvision resized uint8 tensors back to uint8: keep that rounding for parity.
            frames = frames.round().clamp(0, 255)

        if options["do_random_horizontal_flip"]:
            if torch.rand(1, generator=generator).item() < options["flip_probability"]:
                frames = frames.flip(-1)

        if options["do_rescale"]:
            frames = frames * options["rescale_factor"]
        if options["do_normalize"]:
            mean = torch.as_tensor(options["image_mean"], dtype=frames.dtype).reshape(-1, 1, 1)
            std = torch.as_tensor(options["image_std"], dtype=frames.dtype).reshape(-1, 1, 1)
            frames = (frames - mean) / std
        return frames.reshape(*leading, *frames.shape[-3:])

    def _options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        unknown = set(kwargs) - set(self._call_kwargs)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected arguments {sorted(unknown)}.")
        options = {key: kwargs.get(key, getattr(self, key)) for key in self._call_kwargs}
        self._check(options)
        return options

    def __call__(self, videos=None, images=None, **kwargs) -> BatchFeature:
        """[`~SViTTVideoProcessor.preprocess`] of `videos` (also accepted positionally), or of `images` (still images,
        as one-frame videos, for callers of the image-processor API)."""
        if (videos is None) == (images is None):
            raise ValueError(f"{type(self).__name__} needs exactly one of `videos`, `images`.")
        return self.preprocess(videos if videos is not None else images, **kwargs)

    def process_video(self, video, generator: torch.Generator | None = None, **kwargs) -> torch.Tensor:
        """
        Preprocess a single video (no batch axis), e.g. inside a dataset's `__getitem__`.

        Args:
            video: a file path, a [`DecodedVideo`], frames as an array/tensor, or a list of frames.
            generator (`torch.Generator`, *optional*): randomness for frame sampling, crop and flip.
            **kwargs: constructor arguments to override for this call.

        Returns:
            `torch.Tensor`: `(T, 3, H, W)` float frames (`(K, T, 3, H, W)` for a multi-clip video).
        """
        options = self._options(kwargs)
        return self._transform(self._load(video, options, generator), options, generator)

    def preprocess(
        self,
        videos,
        generator: torch.Generator | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """
        Preprocess one video or a batch of videos.

        Args:
            videos: file paths, [`DecodedVideo`] objects, frame arrays/tensors or lists of frames (see the class
                docstring); one video or a list of them.
            generator (`torch.Generator`, *optional*): randomness for frame sampling, crop and flip (reproducible
                augmentation).
            return_tensors (`str`, *optional*, defaults to `"pt"`): `"pt"` or `"np"`.
            **kwargs: any constructor argument, to override it for this call (e.g. `do_random_resized_crop=True`).

        Returns:
            [`BatchFeature`] with `pixel_values` of shape `(B, T, 3, H, W)` (or `(B, K, T, 3, H, W)` for multi-clip
            videos).

        Raises:
            [`VideoDecodingError`]: a video file cannot be decoded; the message names the file.
        """
        options = self._options(kwargs)
        processed = [
            self._transform(self._load(video, options, generator), options, generator)
            for video in self._split_batch(videos)
        ]
        shapes = {tuple(video.shape) for video in processed}
        if len(shapes) > 1:
            raise ValueError(
                f"Videos of one batch must have the same number of clips and frames after processing, got shapes "
                f"{sorted(shapes)}."
            )
        return BatchFeature(data={"pixel_values": torch.stack(processed)}, tensor_type=return_tensors)


class SViTTProcessor(ProcessorMixin):
    r"""
    Pairs [`SViTTVideoProcessor`] with [`SViTTTokenizer`].

    Text gets the release's settings by default: cleaned with `pre_text`, `[CLS] tokens` without `[SEP]`, truncated
    and padded to `max_text_length`. Keyword arguments that belong to the video processor (e.g.
    `do_random_resized_crop`, `num_frames`) go to it, those of the tokenizer (e.g. `max_length`, `padding`) to the
    tokenizer, and any other raises a `TypeError` naming it. `text_kwargs=` / `videos_kwargs=` dictionaries are
    accepted as in other transformers processors.

    Args:
        video_processor ([`SViTTVideoProcessor`]): the video processor.
        tokenizer ([`SViTTTokenizer`]): the tokenizer.
        max_text_length (`int`, defaults to 32): text length (pretraining 32; MSRVTT/DiDeMo 64, Charades 48, SSv2
            and QA questions 25 in the release).
        max_answer_length (`int`, defaults to 5): length of the answers encoded by [`~SViTTProcessor.encode_answers`].

    Example:

    ```python
    >>> processor = SViTTProcessor.from_pretrained("path/to/svitt")
    >>> inputs = processor(text=["a red square moves left"], videos=["clip.mp4"])
    >>> inputs["pixel_values"].shape, inputs["input_ids"].shape
    (torch.Size([1, 4, 3, 224, 224]), torch.Size([1, 32]))
    ```
    """

    def __init__(
        self,
        video_processor: SViTTVideoProcessor | None = None,
        tokenizer: SViTTTokenizer | None = None,
        max_text_length: int = 32,
        max_answer_length: int = 5,
        **kwargs,
    ):
        self.max_text_length = max_text_length
        self.max_answer_length = max_answer_length
        super().__init__(video_processor, tokenizer, **kwargs)

    def check_argument_for_proper_class(self, argument_name: str, argument: Any):
        # Public behaviour this fixes: `SViTTProcessor(video_processor, tokenizer)` and every `from_pretrained` must
        # work without torchvision (and Pillow), where the base looks the video-processor class up through
        # `transformers.VIDEO_PROCESSOR_MAPPING`, a placeholder that fails
        # (tests/test_processing.py::test_the_processor_is_built_and_loaded_without_pillow_or_torchvision).
        if argument_name == "video_processor":
            if not isinstance(argument, VideoProcessorMixin):
                raise TypeError(
                    f"Received a {type(argument).__name__} for argument video_processor, but a video processor such "
                    "as SViTTVideoProcessor was expected."
                )
            return VideoProcessorMixin
        return super().check_argument_for_proper_class(argument_name, argument)

    @classmethod
    def get_processor_dict(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """transformers' `get_processor_dict`, reading folders saved before the video processor had its own name
        (`"image_processor"` in `processor_config.json`) as the current format."""
        processor_dict, kwargs = super().get_processor_dict(pretrained_model_name_or_path, **kwargs)
        return _upgrade_processor_dict(processor_dict), kwargs

    def _tokenizer_arguments(self) -> set[str]:
        parameters = inspect.signature(self.tokenizer.__call__).parameters.values()
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return {parameter.name for parameter in parameters if parameter.kind in named} - {"text", "self"}

    def _split_kwargs(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Route every keyword to the video processor or the tokenizer; one that neither accepts is an error (a
        misspelled video option must not silently do nothing)."""
        text_kwargs = dict(kwargs.pop("text_kwargs", None) or {})
        video_kwargs = dict(kwargs.pop("videos_kwargs", None) or {})
        video_kwargs.update(kwargs.pop("images_kwargs", None) or {})
        video_arguments = set(self.video_processor._call_kwargs) | {"generator"}
        text_arguments = self._tokenizer_arguments()
        unknown = sorted((set(kwargs) | set(text_kwargs)) - video_arguments - text_arguments)
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unexpected arguments {unknown}. Video arguments: "
                f"{sorted(video_arguments)}; text arguments: {sorted(text_arguments)}."
            )
        for key, value in kwargs.items():
            if key in video_arguments:
                video_kwargs[key] = value
            else:
                text_kwargs[key] = value
        return text_kwargs, video_kwargs

    def __call__(
        self,
        text: str | list[str] | None = None,
        videos=None,
        images=None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """
        Prepare texts and/or videos for the model.

        Args:
            text (`str` or `list[str]`, *optional*): captions or questions.
            videos (*optional*): anything [`SViTTVideoProcessor`] accepts (files, frames, batches).
            images (*optional*): still images, processed as one-frame videos.
            return_tensors (`str`, *optional*, defaults to `"pt"`).
            **kwargs: video-processor or tokenizer arguments (see the class docstring).

        Returns:
            [`BatchFeature`] with `input_ids`, `attention_mask` (when `text` is given) and `pixel_values` (when videos
            or images are given).
        """
        if text is None and videos is None and images is None:
            raise ValueError(f"{type(self).__name__} needs `text`, `videos` or `images`.")
        if videos is not None and images is not None:
            raise ValueError("Pass either `videos` or `images`, not both.")
        text_kwargs, video_kwargs = self._split_kwargs(dict(kwargs))
        data: dict[str, Any] = {}
        if text is not None:
            defaults = {"padding": "max_length", "truncation": True, "max_length": self.max_text_length}
            text_kwargs = {**defaults, **text_kwargs}
            data.update(self.tokenizer(text, return_tensors=return_tensors, **text_kwargs))
        visual = videos if videos is not None else images
        if visual is not None:
            data.update(self.video_processor(visual, return_tensors=return_tensors, **video_kwargs))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def encode_answers(
        self, answers: str | list[str], max_length: int | None = None, return_tensors: str | None = "pt"
    ) -> BatchFeature:
        """
        Tokenize candidate or ground-truth answers for the QA answer decoder as the release does (see
        [`SViTTTokenizer.encode_answers`]), `max_answer_length` tokens by default.

        Returns:
            [`BatchFeature`] with `answer_input_ids` and `answer_attention_mask`.
        """
        encoded = self.tokenizer.encode_answers(answers, max_length or self.max_answer_length, return_tensors)
        return BatchFeature(
            data={
                "answer_input_ids": encoded["input_ids"],
                "answer_attention_mask": encoded["attention_mask"],
            },
            tensor_type=return_tensors,
        )

    @property
    def model_input_names(self) -> list[str]:
        return list(dict.fromkeys(self.tokenizer.model_input_names + self.video_processor.model_input_names))


def _upgrade_processor_dict(processor_dict: dict[str, Any]) -> dict[str, Any]:
    """A `processor_config.json` of the first format (the video processor under `"image_processor"`, typed and
    auto-mapped as an image processor) in the current one; other dictionaries are returned as they are."""
    legacy = processor_dict.get("image_processor")
    if not isinstance(legacy, dict) or "video_processor" in processor_dict:
        return processor_dict
    video_processor = dict(legacy)
    processor_type = video_processor.pop("image_processor_type", None)
    if processor_type is not None and processor_type != SViTTVideoProcessor.__name__:
        raise ValueError(
            f"`processor_config.json` holds a {processor_type} under `image_processor`, but SViTTProcessor takes an "
            f"{SViTTVideoProcessor.__name__}: save the folder again with an SViTTProcessor, or load its parts "
            "separately."
        )
    video_processor["video_processor_type"] = SViTTVideoProcessor.__name__
    auto_map = dict(video_processor.get("auto_map") or {})
    if "AutoImageProcessor" in auto_map:
        auto_map["AutoVideoProcessor"] = auto_map.pop("AutoImageProcessor")
        video_processor["auto_map"] = auto_map
    upgraded = {key: value for key, value in processor_dict.items() if key != "image_processor"}
    upgraded["video_processor"] = video_processor
    return upgraded


def register_processing_auto_classes() -> None:
    """
    Register the tokenizer, video processor and processor with the Auto classes (for `SViTTConfig`) and for Hub
    remote code (`save_pretrained` then writes their `auto_map` entries and copies this module's files).
    """
    from transformers import AutoProcessor, AutoTokenizer

    # The public `transformers.AutoVideoProcessor` is a placeholder that demands torchvision; the real class is here.
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor

    from .configuration_svitt import SViTTConfig

    AutoTokenizer.register(SViTTConfig, tokenizer_class=SViTTTokenizer, exist_ok=True)
    # The processor has no backend dependency: serve it whichever backend transformers asks for.
    AutoVideoProcessor.register(
        SViTTConfig,
        video_processor_classes={"torchvision": SViTTVideoProcessor, "pil": SViTTVideoProcessor},
        exist_ok=True,
    )
    AutoProcessor.register(SViTTConfig, SViTTProcessor, exist_ok=True)
    SViTTTokenizer.register_for_auto_class("AutoTokenizer")
    SViTTVideoProcessor.register_for_auto_class("AutoVideoProcessor")
    SViTTProcessor.register_for_auto_class("AutoProcessor")


__all__ = ["SViTTProcessor", "SViTTVideoProcessor", "random_resized_crop_box", "register_processing_auto_classes"]
