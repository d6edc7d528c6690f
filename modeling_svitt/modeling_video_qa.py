"""Video question answering head of SViTT: an answer decoder that ranks a closed answer list (ALBEF-style).

The question is encoded by the whole text tower cross-attending to the clip; a causal decoder (by default as deep
as the fusion stack, `config.answer_decoder_config`) scores answers by their likelihood. A checkpoint of another
head (pretraining, retrieval) initialises the decoder from its fusion layers and MLM head, as the release does.
Ranking an answer list is in `answer_ranking.py`.
"""

import logging
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import can_return_tuple

from .answer_ranking import rank_answers
from .configuration_svitt import SViTTAnswerDecoderConfig, SViTTConfig
from .losses import answer_token_labels, sequence_negative_log_likelihood, weighted_answer_loss
from .modeling_common import NestedModelOutput
from .modeling_heads import SViTTHeadPreTrainedModel, SViTTOnlyMLMHead
from .modeling_svitt import SViTTModel
from .modeling_svitt_vision import RandomBlocks, SViTTVisionModelOutput
from .modeling_svitt_text import SViTTTextModel

logger = logging.getLogger(__name__)


@dataclass
class SViTTForVideoQuestionAnsweringOutput(NestedModelOutput):
    r"""
    loss (`torch.FloatTensor`, *optional*): weighted teacher-forced answer loss, `sum(answer_weights *
        answer_losses) / batch_size`.
    logits (`(num_answers, answer_length, vocab_size)`, *optional*): answer-decoder logits.
    question_hidden_states (`(batch_size, question_length, hidden_size)`): the multimodal question encoding.
    vision_model_output: the video tower's output.
    answer_losses (`(num_answers,)`, *optional*): every answer's teacher-forced negative log-likelihood (summed
        over its tokens, unweighted), e.g. to score given answers without `rank_answers`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    question_hidden_states: torch.FloatTensor | None = None
    vision_model_output: SViTTVisionModelOutput | None = None
    answer_losses: torch.FloatTensor | None = None


# --------------------------------------------------------------------------------------------------
# Video question answering
# --------------------------------------------------------------------------------------------------


def answer_decoder_config(config: SViTTConfig) -> SViTTAnswerDecoderConfig:
    """Config of the answer decoder (`config.answer_decoder_config`); raises when the text tower has no fusion
    layers to size it from and no decoder config was given."""
    if config.answer_decoder_config is None:
        raise ValueError(
            "The answer decoder needs at least one layer: `text_config` has no fusion layers to size it from; "
            "set `answer_decoder_num_layers` or `answer_decoder_config`."
        )
    return config.answer_decoder_config


def causal_attention_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """`(N, L)` padding mask -> `(N, 1, L, L)` boolean mask: position i sees the real tokens j <= i."""
    length = attention_mask.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=attention_mask.device).tril()
    return causal[None, None] & attention_mask.bool()[:, None, None, :]


# checkpoint name -> QA name, applied while loading a checkpoint of another head (see `from_pretrained`); the MLM
# decoder matrix is left out: it is the word embeddings, which the answer decoder copies from the text tower
_MLM_HEAD_AS_DECODER_HEAD = {
    r"^mlm_head\.predictions\.transform\.": "decoder_head.predictions.transform.",
    r"^mlm_head\.predictions\.bias$": "decoder_head.predictions.bias",
}


class SViTTForVideoQuestionAnswering(SViTTHeadPreTrainedModel):
    """Video QA by ranking a closed answer list with an answer decoder (ALBEF-style).

    The question is encoded by the whole text tower, cross-attending to the video in the fusion layers; a
    causal answer decoder (`text_decoder`, configured by `config.answer_decoder_config`: by default as deep as the
    fusion stack, 3 layers in the release) cross-attends to the question states and scores answers by their
    likelihood. Loading a pretraining (or retrieval) checkpoint with `from_pretrained` initialises the decoder from
    the fusion layers, the word embeddings and the MLM head, as the release does.

    Ranking (`rank_answers`): the first answer token's probability picks the top-k answers, whose full
    likelihood then decides. Scorings (`scoring=`):

    * `"likelihood"` (default): the first-token log-probability picks the candidates, ranked by their sequence
      log-likelihood (first token counted once); clips combined with `clip_aggregation`.
    * `"release_ensemble"`: the release's `forward_ensemble` / `rank_answer_ensemble`, its default evaluation
      path (`eval_frame_ensemble: lse | mean | max`, even for one clip): per-clip first-token *probabilities* are
      combined and passed through a second softmax over the vocabulary (which nearly flattens them), and the
      candidate score is `log p_first + sequence log-likelihood`, i.e. the first token is counted twice.
    * `"release_concat"`: the release's `rank_answer` (`eval_frame_ensemble: concat`, all frames as one clip,
      `clip_aggregation="concat"`): the same score with a single softmax.

    Use a release scoring to reproduce released numbers.
    """

    _tied_weights_keys = {
        "decoder_head.predictions.decoder.weight": "text_decoder.embeddings.word_embeddings.weight",
        "decoder_head.predictions.decoder.bias": "decoder_head.predictions.bias",
    }
    _keys_to_ignore_on_load_unexpected = [r"^mlm_head\.", r"^itm_head\."]
    # The release's QA model deletes these (they are unused by QA); checkpoints converted from it lack them.
    _keys_to_ignore_on_load_missing = [
        r"^svitt\.vision_model\.pooler\.",
        r"^svitt\.vision_projection\.",
        r"^svitt\.text_projection\.",
        r"^svitt\.temperature$",
    ]

    def __init__(self, config: SViTTConfig) -> None:
        super().__init__(config)
        self.svitt = SViTTModel(config)
        decoder_config = answer_decoder_config(config)
        if decoder_config.vocab_size != config.text_config.vocab_size:
            # e.g. a pretraining checkpoint whose text vocabulary was resized after its config was made
            logger.info(
                "The answer decoder's vocabulary (%d) follows the text tower's (%d): questions and answers share "
                "one tokenizer.",
                decoder_config.vocab_size,
                config.text_config.vocab_size,
            )
            decoder_config.vocab_size = config.text_config.vocab_size
        self.text_decoder = SViTTTextModel(decoder_config)
        self.decoder_head = SViTTOnlyMLMHead(decoder_config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        return self.decoder_head.predictions.decoder

    def parameters_unused_in_training(self) -> list[str]:
        """QA never uses the ITC embeddings (the release deletes these parameters)."""
        return [f"svitt.{name}" for name in self.svitt.parameters_unused_by(contrastive=False, fusion=True)]

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.decoder_head.predictions.decoder = new_embeddings
        self.decoder_head.predictions.bias = new_embeddings.bias

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """Resize the vocabulary of the question encoder and, with it, of the answer decoder.

        Questions and answers share one tokenizer, but the answer decoder has its own word embeddings (with the
        prediction head tied to them), which the library's resizing does not reach.
        """
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        size = embeddings.num_embeddings
        self.text_decoder.resize_token_embeddings(size, mean_resizing=mean_resizing)
        predictions = self.decoder_head.predictions
        old_bias = predictions.bias
        if old_bias.shape[0] != size:
            bias = old_bias.new_zeros(size)
            kept = min(size, old_bias.shape[0])
            bias[:kept] = old_bias.detach()[:kept]
            predictions.bias = nn.Parameter(bias, requires_grad=old_bias.requires_grad)
        self.tie_weights()
        return embeddings

    # Initialisation from another head --------------------------------------------------------------

    @torch.no_grad()
    def initialize_answer_decoder(self, mlm_head_state_dict: dict[str, torch.Tensor] | None = None) -> list[str]:
        """Initialise the answer decoder as the release does when fine-tuning QA from a pretrained model.

        Decoder layer i <- fusion layer `fusion_layer + i` of `svitt.text_model` (self-attention, cross-attention,
        feed-forward), decoder embeddings <- the text embeddings, `decoder_head` <- the pretraining MLM head
        (`mlm_head_state_dict`, keys relative to `mlm_head.predictions.`, e.g. `transform.dense.weight`, `bias`).
        Tensors whose shapes differ (e.g. cross-attention when `encoder_width` != text width) are skipped.
        Returns the decoder parameter names that were initialised.
        """
        source = self.svitt.text_model
        fusion_layer = source.config.fusion_layer
        copied = []

        def copy_module(target: nn.Module, origin: nn.Module, prefix: str) -> None:
            origin_state = origin.state_dict()
            for name, tensor in target.state_dict().items():
                value = origin_state.get(name)
                if value is None or value.shape != tensor.shape:
                    logger.warning("Answer decoder: `%s%s` has no matching fusion-layer weight.", prefix, name)
                    continue
                tensor.copy_(value)
                copied.append(prefix + name)

        copy_module(self.text_decoder.embeddings, source.embeddings, "text_decoder.embeddings.")
        for index, layer in enumerate(self.text_decoder.encoder.layer):
            origin_index = fusion_layer + index
            if origin_index >= len(source.encoder.layer):
                logger.warning("Answer decoder layer %d has no fusion layer to start from.", index)
                continue
            copy_module(layer, source.encoder.layer[origin_index], f"text_decoder.encoder.layer.{index}.")
        if mlm_head_state_dict:
            predictions = self.decoder_head.predictions
            for name, tensor in predictions.state_dict().items():
                value = mlm_head_state_dict.get(name)
                if name.startswith("decoder.") or value is None or value.shape != tensor.shape:
                    continue  # the decoder matrix is tied to the (just copied) word embeddings
                tensor.copy_(value)
                copied.append("decoder_head.predictions." + name)
        self.tie_weights()
        return copied

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, plus the release's QA initialisation for checkpoints of other heads.

        When the checkpoint has no answer decoder but has the fusion layers (a pretraining, retrieval or base-model
        checkpoint), the decoder is initialised from the fusion layers and the word embeddings, and `decoder_head`
        from the pretraining MLM head when there is one, instead of randomly; the loading report then lists only
        what stayed random. Any checkpoint format `from_pretrained` reads (safetensors or `.bin`, sharded, with a
        `variant`) works the same.
        """
        # transformers' own loader fills `decoder_head` from a pretraining checkpoint's `mlm_head`
        key_mapping = {**_MLM_HEAD_AS_DECODER_HEAD, **(kwargs.pop("key_mapping", None) or {})}
        output_loading_info = kwargs.pop("output_loading_info", False)
        model, loading_info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, key_mapping=key_mapping, output_loading_info=True, **kwargs
        )
        # transformers keeps a renaming that was used, to undo it when saving; this one must not be undone, or the
        # QA head would save its `decoder_head` under the name `mlm_head`
        conversions = getattr(model, "_weight_conversions", None)
        if conversions:
            model._weight_conversions = [
                conversion
                for conversion in conversions
                if not set(conversion.source_patterns) & set(_MLM_HEAD_AS_DECODER_HEAD)
            ]
        return (model, loading_info) if output_loading_info else model

    def _adjust_missing_and_unexpected_keys(self, loading_info) -> None:
        """transformers' loading step that settles which missing keys to report; it runs once the checkpoint's
        weights are in place and before the report is logged, so the decoder is initialised from the loaded fusion
        layers here, and what was filled that way is not reported as missing."""
        # Private hook, kept because `SViTTForVideoQuestionAnswering.from_pretrained(<pretraining or retrieval
        # checkpoint>)` must start its answer decoder from the fusion layers and report nothing missing; no public
        # step runs between the weights arriving and the report (tests/test_video_qa.py::
        # test_pretraining_checkpoint_initialises_the_answer_decoder).
        super()._adjust_missing_and_unexpected_keys(loading_info)
        if self._answer_decoder_can_start_from_fusion_layers(loading_info.missing_keys):
            copied = set(self.initialize_answer_decoder())
            copied |= {tied for tied, source in self.all_tied_weights_keys.items() if source in copied}
            loading_info.missing_keys = set(loading_info.missing_keys) - copied
            logger.info("Initialised the answer decoder of %s from the fusion layers.", type(self).__name__)

    def _answer_decoder_can_start_from_fusion_layers(self, missing_keys) -> bool:
        """True for a checkpoint without an answer decoder that has the fusion layers the decoder starts from."""
        names = self.state_dict().keys()
        if any(name.startswith("text_decoder.") and name not in missing_keys for name in names):
            return False  # the checkpoint has (part of) a decoder: report it as it is
        text_config = self.config.text_config
        source_layers = range(text_config.fusion_layer, text_config.num_hidden_layers)
        source_prefixes = ("svitt.text_model.embeddings.",) + tuple(
            f"svitt.text_model.encoder.layer.{index}." for index in source_layers
        )
        sources = [name for name in names if name.startswith(source_prefixes)]
        return bool(sources) and not any(name in missing_keys for name in sources)

    # Forward ----------------------------------------------------------------------------------------

    def encode_questions(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        random_blocks: RandomBlocks | None = None,
        generator: torch.Generator | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, SViTTVisionModelOutput]:
        """Question states from the whole text tower cross-attending to the clip; `pixel_values` holds one clip per
        question. Returns `(question_states, attention_mask, vision_output)`."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        video = self.svitt.encode_video(
            pixel_values,
            random_blocks=random_blocks,
            generator=generator,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        question = self.svitt.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=video.tokens,
            encoder_attention_mask=video.token_mask,
            num_global_video_tokens=self.config.vision_config.num_global_tokens,
            output_attentions=output_attentions,
            return_dict=True,
        )
        return question.last_hidden_state, attention_mask, video.vision_output

    def decode_answers(
        self,
        answer_input_ids: torch.Tensor,
        answer_attention_mask: torch.Tensor | None,
        question_states: torch.Tensor,
        question_attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Teacher-forced decoder logits `(N, La, vocab)`; row i of the answers attends to row i of the questions."""
        if answer_attention_mask is None:
            answer_attention_mask = torch.ones_like(answer_input_ids)
        decoded = self.text_decoder(
            input_ids=answer_input_ids,
            attention_mask=causal_attention_mask(answer_attention_mask),
            encoder_hidden_states=question_states,
            encoder_attention_mask=question_attention_mask,
            return_dict=True,
        )
        return self.decoder_head(decoded.last_hidden_state)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        answer_input_ids: torch.Tensor | None = None,
        answer_attention_mask: torch.Tensor | None = None,
        answer_weights: torch.Tensor | None = None,
        answers_per_question: torch.Tensor | None = None,
        random_blocks: RandomBlocks | None = None,
        generator: torch.Generator | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> SViTTForVideoQuestionAnsweringOutput:
        r"""
        pixel_values (`(batch_size, num_frames, num_channels, height, width)`): one clip per question.
        input_ids, attention_mask (`(batch_size, question_length)`): the questions.
        answer_input_ids, answer_attention_mask (`(num_answers, answer_length)`, *optional*): the ground-truth
            answers of all questions, concatenated question by question, as `[CLS] answer [SEP]` (the first token
            is the decoder's start token). When given, the weighted teacher-forced loss and every answer's own
            loss (`answer_losses`) are returned.
        answer_weights (`(num_answers,)`, *optional*): weight of every answer (its share of the annotations).
        answers_per_question (`(batch_size,)`, *optional*): how many answers each question has (defaults to one).

        To predict, use [`rank_answers`] with the answer list.
        """
        question_states, question_mask, vision_output = self.encode_questions(
            pixel_values, input_ids, attention_mask, random_blocks, generator, output_attentions, output_hidden_states
        )
        loss = logits = answer_losses = None
        if answer_input_ids is not None:
            batch = input_ids.shape[0]
            if answers_per_question is None:
                if answer_input_ids.shape[0] != batch:
                    raise ValueError("Pass `answers_per_question` when questions have more than one answer.")
                answers_per_question = torch.ones(batch, dtype=torch.long, device=input_ids.device)
            answers_per_question = answers_per_question.to(question_states.device)
            if int(answers_per_question.sum()) != answer_input_ids.shape[0]:
                raise ValueError(
                    f"`answers_per_question` sums to {int(answers_per_question.sum())}, "
                    f"but {answer_input_ids.shape[0]} answers were given."
                )
            states = question_states.repeat_interleave(answers_per_question, dim=0)
            masks = question_mask.repeat_interleave(answers_per_question, dim=0)
            logits = self.decode_answers(answer_input_ids, answer_attention_mask, states, masks)
            labels = answer_token_labels(answer_input_ids, answer_attention_mask)
            answer_losses = sequence_negative_log_likelihood(logits, labels)
            loss = weighted_answer_loss(answer_losses, answer_weights, num_questions=batch)
        return SViTTForVideoQuestionAnsweringOutput(
            loss=loss,
            logits=logits,
            question_hidden_states=question_states,
            vision_model_output=vision_output,
            answer_losses=answer_losses,
        )

    # Answer-list ranking (implemented in `answer_ranking.py`) --------------------------------------------

    rank_answers = rank_answers


__all__ = [
    "SViTTForVideoQuestionAnswering",
    "SViTTForVideoQuestionAnsweringOutput",
    "answer_decoder_config",
    "causal_attention_mask",
]
