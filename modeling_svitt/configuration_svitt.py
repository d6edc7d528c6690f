"""SViTT model configuration.

Defaults reproduce the authors' release (stage 1 of the temporal sparse expansion curriculum:
BEiT-base video tower on 4 frames with block-sparse attention and token pruning, BERT-base text
tower with 3 fusion layers).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Iterable

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

TOKEN_KEEP_STRATEGIES = ("cls_attn", "random")
FUSION_TOKEN_KEEP_STRATEGIES = ("cls_attn", "avg_attn", "random")
SPARSE_ATTENTION_BACKENDS = ("gather", "dense_masked")
TEMPORAL_INTERPOLATION_MODES = ("nearest", "linear")
CONTRASTIVE_LOSSES = ("infonce", "egonce")
EGONCE_POSITIVE_RULES = ("verb_and_noun", "verb_or_noun", "verb", "noun")
MULTIPLE_CHOICE_SCORINGS = ("itc", "itm")


def _check_keep_rate(name: str, value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"`{name}` must be in (0, 1], got {value}.")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")


def _check_heads(hidden_size: int, num_attention_heads: int) -> None:
    if num_attention_heads < 1 or hidden_size % num_attention_heads:
        raise ValueError(
            f"`hidden_size` ({hidden_size}) must be divisible by `num_attention_heads` ({num_attention_heads})."
        )


def _check_layers(name: str, layers, num_layers: int, what: str) -> None:
    for layer in layers:
        if not 0 <= layer < num_layers:
            raise ValueError(f"`{name}` contains {layer}, but the {what} has layers 0..{num_layers - 1}.")
    if len(set(layers)) != len(layers):
        raise ValueError(f"`{name}` lists a layer twice: {list(layers)}.")


@strict
class SViTTVisionConfig(PreTrainedConfig):
    r"""
    Configuration of [`SViTTVisionModel`], the sparse spatio-temporal BEiT video tower.

    Args:
        num_frames (`int`, defaults to 4): frames per clip; sizes the 3-D relative position bias table.
        image_size, patch_size, num_channels: frame geometry; every frame is patchified on its own.
        num_global_tokens (`int`, defaults to 1): learnable [CLS] tokens; every query attends to them and
            they attend to every token. Only the first drives token pruning and nothing else.
        layer_scale_init_value (`float`, defaults to 0.1): BEiT layer-scale init (0 disables layer scale).
        drop_path_rate (`float`, defaults to 0.1): stochastic depth, linearly increasing over the layers.
        use_sparse_attention (`bool`, defaults to `True`): edge sparsity. Patch queries attend to their
            local block window, `num_random_blocks` random blocks and the global tokens; global queries attend
            to everything. `False` gives dense attention (the release's `sparse_random_attn=None`).
        attention_block_size (`int`, defaults to 56): tokens per block, over the current (kept) sequence.
        num_local_blocks (`int`, defaults to 1): odd width of the cyclic local window of blocks around each
            query block (1 = its own block). Wider windows are implemented as intended; the release's own
            implementation of them is broken, so they cannot reproduce it.
        num_random_blocks (`int`, defaults to 3): random key blocks per query block, drawn once per layer and
            forward, shared by batch and heads. Clamped to the blocks that exist; never a duplicate key.
        sparse_attention_backend (`str`, defaults to `"gather"`): `"gather"` computes only the kept blocks;
            `"dense_masked"` is the masked dense reference the fast path is tested against.
        mask_padded_keys (`bool`, defaults to `False`): the release leaves the zero-padded slots of the last
            partial block in the softmax (each adds `exp(bias[token->cls])` to the denominator). `True` masks
            them (the fix); converted checkpoints then shift slightly.
        deterministic_eval (`bool`, defaults to `True`): in eval mode, the random blocks of every layer are drawn
            from a counter-based hash of `random_block_seed` and the layer index (the same on every device and for
            every batch, and traceable by `torch.compile`), so the same input gives the same output (the heads' ITM
            negatives and MLM masks come from a generator seeded with `random_block_seed`). `False` draws fresh
            patterns at evaluation too, as the release does.
        random_block_seed (`int`, defaults to 0): seed of the evaluation patterns.
        token_keep_rate (`float`, defaults to 0.7): node sparsity; fraction of patch tokens kept
            (`ceil(rate * n)`) at each drop layer. 1 disables pruning.
        token_keep_strategy (`str`, defaults to `"cls_attn"`): `"cls_attn"` keeps the tokens with the highest
            head-mean attention from the first [CLS]; `"random"` keeps a random subset.
        token_drop_layers (`list[int]`, defaults to `[3, 6, 9]`): 0-based layers after which tokens are pruned.
        prune_after_mlp (`bool`, defaults to `True`): the release prunes on the layer output (after the
            feed-forward). `False` prunes between attention and feed-forward, as drawn in the paper, which also
            spares the feed-forward of the dropped tokens.
        temporal_bias_interpolation (`str`, defaults to `"nearest"`): how the relative-bias table is resampled
            when the number of frames changes (`"nearest"` as the release, or `"linear"`).
    """

    model_type = "svitt_vision_model"
    base_config_key = "vision_config"
    # read by the forward pass at run time and shaping no weight: a built model changes them with `set_sparsity`
    runtime_fields = (
        "use_sparse_attention", "attention_block_size", "num_local_blocks", "num_random_blocks",
        "sparse_attention_backend", "mask_padded_keys", "deterministic_eval", "random_block_seed", "token_keep_rate",
        "token_keep_strategy", "token_drop_layers", "prune_after_mlp",
    )

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    num_frames: int = 4
    num_global_tokens: int = 1
    layer_scale_init_value: float | int = 0.1
    drop_path_rate: float | int = 0.1
    use_sparse_attention: bool = True
    attention_block_size: int = 56
    num_local_blocks: int = 1
    num_random_blocks: int = 3
    sparse_attention_backend: str = "gather"
    mask_padded_keys: bool = False
    deterministic_eval: bool = True
    random_block_seed: int = 0
    token_keep_rate: float | int = 0.7
    token_keep_strategy: str = "cls_attn"
    token_drop_layers: list[int] | tuple[int, ...] = (3, 6, 9)
    prune_after_mlp: bool = True
    temporal_bias_interpolation: str = "nearest"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.token_drop_layers = [int(layer) for layer in self.token_drop_layers]
        self.validate_architecture()

    def validate_architecture(self) -> None:
        _check_heads(self.hidden_size, self.num_attention_heads)
        if self.patch_size < 1 or self.image_size % self.patch_size:
            raise ValueError(
                f"`image_size` ({self.image_size}) must be a positive multiple of `patch_size` ({self.patch_size})."
            )
        if self.num_frames < 1:
            raise ValueError(f"`num_frames` must be >= 1, got {self.num_frames}.")
        if self.num_global_tokens < 1:
            raise ValueError(f"`num_global_tokens` must be >= 1, got {self.num_global_tokens}.")
        if self.attention_block_size < 1:
            raise ValueError(f"`attention_block_size` must be >= 1, got {self.attention_block_size}.")
        if self.num_local_blocks < 1 or self.num_local_blocks % 2 == 0:
            raise ValueError(
                f"`num_local_blocks` must be a positive odd number (a window centred on the query block), "
                f"got {self.num_local_blocks}."
            )
        if self.num_random_blocks < 0:
            raise ValueError(f"`num_random_blocks` must be >= 0, got {self.num_random_blocks}.")
        _check_choice("sparse_attention_backend", self.sparse_attention_backend, SPARSE_ATTENTION_BACKENDS)
        _check_keep_rate("token_keep_rate", self.token_keep_rate)
        _check_choice("token_keep_strategy", self.token_keep_strategy, TOKEN_KEEP_STRATEGIES)
        if self.token_keep_rate < 1.0:
            _check_layers("token_drop_layers", self.token_drop_layers, self.num_hidden_layers, "video tower")
        _check_choice("temporal_bias_interpolation", self.temporal_bias_interpolation, TEMPORAL_INTERPOLATION_MODES)
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"`drop_path_rate` must be in [0, 1), got {self.drop_path_rate}.")

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def patches_per_frame(self) -> int:
        return self.patches_per_side**2

    @property
    def num_patch_tokens(self) -> int:
        return self.num_frames * self.patches_per_frame

    @property
    def prunes_tokens(self) -> bool:
        return self.token_keep_rate < 1.0 and len(self.token_drop_layers) > 0


@strict
class SViTTTextConfig(PreTrainedConfig):
    r"""
    Configuration of [`SViTTTextModel`]: a BERT whose first `fusion_layer` layers encode text and whose
    remaining layers ("fusion layers") add cross-attention to the video tokens.

    Args:
        fusion_layer (`int`, defaults to 9): index of the first fusion layer (= number of text-only layers).
        encoder_width (`int`, defaults to 768): width of the video tokens the fusion layers attend to.
        fusion_token_keep_rate (`float`, defaults to 1.0): text-guided video token selection in the fusion
            layers (paper's S_M). 1 disables it, as in the released code, which never enabled it.
        fusion_token_drop_layers (`list[int]`, defaults to `[0]`): fusion layers, counted from the first
            fusion layer, after whose cross-attention video tokens are selected.
        fusion_token_keep_strategy (`str`, defaults to `"cls_attn"`): score video tokens by the text [CLS]
            query's head-mean cross-attention (`"cls_attn"`), the mean over real text queries (`"avg_attn"`),
            or at random.
        cls_token_id, sep_token_id, mask_token_id: special ids of the tokenizer (bert-base-uncased).
    """

    model_type = "svitt_text_model"
    base_config_key = "text_config"
    runtime_fields = ("fusion_token_keep_rate", "fusion_token_drop_layers", "fusion_token_keep_strategy")

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    cls_token_id: int = 101
    sep_token_id: int = 102
    mask_token_id: int = 103
    fusion_layer: int = 9
    encoder_width: int = 768
    fusion_token_keep_rate: float | int = 1.0
    fusion_token_drop_layers: list[int] | tuple[int, ...] = (0,)
    fusion_token_keep_strategy: str = "cls_attn"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.fusion_token_drop_layers = [int(layer) for layer in self.fusion_token_drop_layers]
        self.validate_architecture()

    def validate_architecture(self) -> None:
        _check_heads(self.hidden_size, self.num_attention_heads)
        if not 0 <= self.fusion_layer <= self.num_hidden_layers:
            raise ValueError(
                f"`fusion_layer` ({self.fusion_layer}) must be between 0 and `num_hidden_layers` "
                f"({self.num_hidden_layers}): it is the number of text-only layers."
            )
        _check_keep_rate("fusion_token_keep_rate", self.fusion_token_keep_rate)
        _check_choice("fusion_token_keep_strategy", self.fusion_token_keep_strategy, FUSION_TOKEN_KEEP_STRATEGIES)
        if self.fusion_token_keep_rate < 1.0:
            _check_layers(
                "fusion_token_drop_layers", self.fusion_token_drop_layers, self.num_fusion_layers, "fusion stack"
            )

    @property
    def num_fusion_layers(self) -> int:
        return self.num_hidden_layers - self.fusion_layer


@strict
class SViTTAnswerDecoderConfig(SViTTTextConfig):
    r"""
    Configuration of the answer decoder of [`SViTTForVideoQuestionAnswering`]: the fields of [`SViTTTextConfig`], for a
    text tower whose every layer has causal self-attention and cross-attention to the question states
    (`fusion_layer=0`, `encoder_width` = the text width).

    A class of its own, with its own `base_config_key`, so that `SViTTAnswerDecoderConfig.from_pretrained(folder)`
    returns the decoder's config of a saved composite model (as `SViTTTextConfig.from_pretrained` returns its text
    tower's), and `attn_implementation` / `dtype` requested for `answer_decoder_config` reach the decoder. Folders saved
    before it existed, which tag this sub-config `svitt_text_model`, load unchanged.
    """

    model_type = "svitt_answer_decoder"
    base_config_key = "answer_decoder_config"
    runtime_fields = ()  # the decoder cross-attends to the question states, never selects among them

    @classmethod
    def get_config_dict(cls, *args, **kwargs) -> tuple[dict, dict]:
        config_dict, kwargs = super().get_config_dict(*args, **kwargs)
        decoder = config_dict.get(cls.base_config_key)
        if isinstance(decoder, dict) and decoder.get("model_type") == SViTTTextConfig.model_type:
            # a folder saved before this class existed: its decoder is this class's, under the text tower's tag
            config_dict = {**config_dict, cls.base_config_key: {**decoder, "model_type": cls.model_type}}
        return config_dict, kwargs

    @classmethod
    def from_text_config(cls, config: SViTTTextConfig) -> SViTTAnswerDecoderConfig:
        """The same fields in this class (e.g. a decoder config built as a `SViTTTextConfig` by older code)."""
        values = config.to_dict()
        for key in _SAVED_METADATA:
            values.pop(key, None)
        return cls(**values)


# Keys `to_dict` adds to a config's fields, which a config of another class must not inherit.
_SAVED_METADATA = ("model_type", "transformers_version", "architectures", "auto_map", "_name_or_path")


@strict
class SViTTConfig(PreTrainedConfig):
    r"""
    Configuration of [`SViTTModel`] and its task heads.

    Args:
        vision_config (`dict` or [`SViTTVisionConfig`]): the video tower.
        text_config (`dict` or [`SViTTTextConfig`]): the text and fusion tower. Its `encoder_width` (the width of
            the video tokens the fusion layers read) is set to `vision_config.hidden_size` unless given.
        embed_dim (`int`, defaults to 256): shared video-text embedding size (ITC).
        temperature (`float`, defaults to 0.07): initial contrastive temperature (learnable).
        temperature_min, temperature_max: the temperature is clamped to this range in every training forward.
        contrastive_loss (`str`, defaults to `"infonce"`): `"infonce"` (multi-positive ITC, SViTT) or
            `"egonce"` (action-aware positives and scene-aware negatives, SViTT-Ego).
        loss_weight_itc, loss_weight_itm, loss_weight_mlm: weights of the pretraining losses.
        mlm_probability (`float`, defaults to 0.5): masking rate of MLM.
        itm_hard_negatives (`bool`, defaults to `True`): draw ITM negatives from the similarity distribution
            (otherwise uniformly among non-positives).
        gather_negatives_across_processes (`bool`, defaults to `False`): ITC negatives from all processes
            (the release uses the per-process batch only).
        egonce_positive_rule (`str`, defaults to `"verb_and_noun"`): which shared tags make an EgoNCE positive:
            a verb and a noun (EgoVLP's rule), either (`"verb_or_noun"`), or only one kind.
        multiple_choice_scoring (`str`, defaults to `"itc"`): how [`SViTTForMultipleChoice`] scores a clip
            (ITC similarity, as EgoMCQ is evaluated, or the ITM head).
        answer_decoder_config (`dict` or [`SViTTAnswerDecoderConfig`], *optional*): the answer decoder of
            [`SViTTForVideoQuestionAnswering`]: a text tower whose every layer has causal self-attention and
            cross-attention to the question states (`fusion_layer=0`, `encoder_width` = the text width). By default
            it is the text config with as many layers as there are fusion layers (3 in the release), which is what
            the decoder is initialised from. A sub-config like the towers', so `attn_implementation` and `dtype`
            reach the decoder.
        answer_decoder_num_layers (`int`, *optional*): shorthand that sets `answer_decoder_config.num_hidden_layers`
            (e.g. `from_pretrained(..., answer_decoder_num_layers=2)`).
        tie_word_embeddings (`bool`, defaults to `True`): tie the MLM / answer-decoder output layer to the word
            embeddings, as the release does.
    """

    model_type = "svitt"
    # the multiple-choice head's scoring: ITC alone or the fusion layers, a cost / accuracy choice like sparsity
    runtime_fields = ("multiple_choice_scoring",)
    sub_configs_defaults = {
        "vision_config": SViTTVisionConfig,
        "text_config": SViTTTextConfig,
        "answer_decoder_config": SubConfigSpec(SViTTAnswerDecoderConfig, optional=True),  # None: no fusion layers
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    answer_decoder_config: dict | PreTrainedConfig | None = None
    embed_dim: int = 256
    temperature: float = 0.07
    temperature_min: float = 0.001
    temperature_max: float = 0.5
    contrastive_loss: str = "infonce"
    loss_weight_itc: float | int = 1.0
    loss_weight_itm: float | int = 1.0
    loss_weight_mlm: float | int = 1.0
    mlm_probability: float = 0.5
    itm_hard_negatives: bool = True
    gather_negatives_across_processes: bool = False
    egonce_positive_rule: str = "verb_and_noun"
    multiple_choice_scoring: str = "itc"
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        if self.vision_config is None:
            self.vision_config = SViTTVisionConfig()
        elif isinstance(self.vision_config, dict):
            self.vision_config = SViTTVisionConfig(**self.vision_config)
        encoder_width_given = True
        if self.text_config is None:
            self.text_config, encoder_width_given = SViTTTextConfig(), False
        elif isinstance(self.text_config, dict):
            encoder_width_given = "encoder_width" in self.text_config
            self.text_config = SViTTTextConfig(**self.text_config)
        else:  # a config object cannot tell a default from a choice: its default value counts as not given
            encoder_width_given = self.text_config.encoder_width != SViTTTextConfig.encoder_width
        if not encoder_width_given:
            # the fusion layers attend to the video tokens: their width is the video tower's
            self.text_config.encoder_width = self.vision_config.hidden_size
        if self.answer_decoder_config is None and self.text_config.num_fusion_layers > 0:
            self.answer_decoder_config = answer_decoder_config_from_text(self.text_config)
        elif isinstance(self.answer_decoder_config, dict):
            # the tag of folders saved before the decoder had a class of its own (`svitt_text_model`) is not a field
            values = {key: value for key, value in self.answer_decoder_config.items() if key != "model_type"}
            self.answer_decoder_config = SViTTAnswerDecoderConfig(**values)
        elif isinstance(self.answer_decoder_config, SViTTTextConfig) and not isinstance(
            self.answer_decoder_config, SViTTAnswerDecoderConfig
        ):
            self.answer_decoder_config = SViTTAnswerDecoderConfig.from_text_config(self.answer_decoder_config)
        super().__post_init__(**kwargs)  # sets `answer_decoder_num_layers` when given
        self.validate_architecture()

    @property
    def answer_decoder_num_layers(self) -> int | None:
        return None if self.answer_decoder_config is None else self.answer_decoder_config.num_hidden_layers

    @answer_decoder_num_layers.setter
    def answer_decoder_num_layers(self, num_layers: int | None) -> None:
        if num_layers is None:  # the default: the decoder config as given or derived
            return
        if num_layers < 1:
            raise ValueError(f"`answer_decoder_num_layers` must be >= 1, got {num_layers}.")
        if self.answer_decoder_config is None:
            self.answer_decoder_config = answer_decoder_config_from_text(self.text_config, num_layers)
        else:
            self.answer_decoder_config.num_hidden_layers = int(num_layers)

    def validate_architecture(self) -> None:
        if self.text_config.encoder_width != self.vision_config.hidden_size:
            raise ValueError(
                f"`text_config.encoder_width` ({self.text_config.encoder_width}) must equal "
                f"`vision_config.hidden_size` ({self.vision_config.hidden_size}): the fusion layers attend to "
                "the video tokens."
            )
        if not 0.0 < self.temperature_min <= self.temperature <= self.temperature_max:
            raise ValueError(
                f"`temperature` ({self.temperature}) must lie in [temperature_min, temperature_max] = "
                f"[{self.temperature_min}, {self.temperature_max}], with temperature_min > 0."
            )
        if self.embed_dim < 1:
            raise ValueError(f"`embed_dim` must be >= 1, got {self.embed_dim}.")
        _check_choice("contrastive_loss", self.contrastive_loss, CONTRASTIVE_LOSSES)
        _check_choice("egonce_positive_rule", self.egonce_positive_rule, EGONCE_POSITIVE_RULES)
        _check_choice("multiple_choice_scoring", self.multiple_choice_scoring, MULTIPLE_CHOICE_SCORINGS)
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"`mlm_probability` must be in (0, 1), got {self.mlm_probability}.")
        decoder = self.answer_decoder_config
        if decoder is None:
            return
        if decoder.num_hidden_layers < 1 or decoder.fusion_layer != 0:
            raise ValueError(
                "`answer_decoder_config` needs at least one layer and `fusion_layer=0` (every decoder layer "
                f"cross-attends to the question), got {decoder.num_hidden_layers} layers and "
                f"`fusion_layer={decoder.fusion_layer}`."
            )
        if decoder.encoder_width != self.text_config.hidden_size:
            raise ValueError(
                f"`answer_decoder_config.encoder_width` ({decoder.encoder_width}) must equal `text_config.hidden_size` "
                f"({self.text_config.hidden_size}): the answer decoder attends to the question states."
            )


def config_field_names(config_class: type[PreTrainedConfig]) -> list[str]:
    """The settings `config_class(...)` keeps: its fields and settable properties (e.g. `answer_decoder_num_layers`),
    plus `attn_implementation`, which the base config takes as a keyword."""
    names = {field.name for field in dataclasses.fields(config_class)} | {"attn_implementation"}
    names |= {
        name
        for name, member in inspect.getmembers(config_class)
        if isinstance(member, property) and member.fset is not None and not name.startswith("_")
    }
    return sorted(names)


def unknown_config_fields(config_class: type[PreTrainedConfig], keys: Iterable[str]) -> list[str]:
    """One message per key that `config_class` does not have (`PreTrainedConfig` would store it and use it nowhere),
    each naming the closest valid field."""
    valid = config_field_names(config_class)
    own = [name for name in valid if name not in config_field_names(PreTrainedConfig)]
    problems = []
    for key in keys:
        if key in valid:
            continue
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f"did you mean `{close[0]}`?" if close else f"its own fields are {', '.join(own)}"
        problems.append(f"`{key}` is not a field of {config_class.__name__}; {hint}")
    return problems


def runtime_field_owners(config: PreTrainedConfig) -> dict[str, str]:
    """Where each field that can change on a model built from `config` lives: `{field: owner}`, the owner being the
    key of the sub-config that holds it (`"vision_config"`, `"text_config"`) or `""` for `config` itself.

    These are the `runtime_fields` of `config` and of its sub-configs: the fields the forward pass reads at run time
    and that shape no weight. Every other field is fixed when the model is built."""
    owners = {name: "" for name in getattr(config, "runtime_fields", ())}
    for key in getattr(config, "sub_configs", {}):
        for name in getattr(getattr(config, key, None), "runtime_fields", ()):
            owners[name] = key
    return owners


def check_runtime_value(config_class: type[PreTrainedConfig], name: str, value):
    """`value` as the field `name` of `config_class` stores it (a number as a float, layers as a list of ints), or a
    `TypeError` naming the field and the type it takes. The range is the config's own check
    (`validate_architecture`), made once every changed field is set."""
    default = next(field.default for field in dataclasses.fields(config_class) if field.name == name)
    if isinstance(default, bool):
        accepted, expected = isinstance(value, bool), "`True` or `False`"
    elif isinstance(default, int):
        accepted, expected = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        accepted, expected = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        value = float(value) if accepted else value
    elif isinstance(default, str):
        accepted, expected = isinstance(value, str), "a string"
    else:  # layer indices
        expected, layers = "a list of layer indices", list(value) if isinstance(value, (list, tuple, range)) else None
        accepted = layers is not None and all(isinstance(layer, int) and not isinstance(layer, bool) for layer in layers)
        value = layers if accepted else value
    if not accepted:
        raise TypeError(f"`{name}` must be {expected}, got {value!r} ({type(value).__name__}).")
    return value


def answer_decoder_config_from_text(
    text_config: SViTTTextConfig, num_layers: int | None = None, **overrides
) -> SViTTAnswerDecoderConfig:
    """The answer decoder the release builds from the text config: `num_layers` (default: as many as the fusion
    layers) layers, every one with causal self-attention and cross-attention to the question states; `overrides`
    set other fields (e.g. the width of a converted decoder)."""
    num_layers = text_config.num_fusion_layers if num_layers is None else num_layers
    values = text_config.to_dict()
    for key in _SAVED_METADATA:
        values.pop(key, None)
    values.update(
        num_hidden_layers=int(num_layers),
        fusion_layer=0,
        encoder_width=text_config.hidden_size,
        fusion_token_keep_rate=1.0,
        fusion_token_drop_layers=[0],
    )
    values.update(overrides)
    return SViTTAnswerDecoderConfig(**values)


__all__ = [
    "SViTTAnswerDecoderConfig",
    "SViTTConfig",
    "SViTTTextConfig",
    "SViTTVisionConfig",
    "check_runtime_value",
    "config_field_names",
    "runtime_field_owners",
    "unknown_config_fields",
]
