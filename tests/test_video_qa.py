"""Video QA head: answer decoder, training loss, answer-list ranking, its sub-config and loading from other heads."""

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from helpers.tiny_configs import ANSWER_MASK, ANSWERS, FRAMES, captions, make_config, make_model, tiny_config, videos
from transformers import AutoConfig
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging as transformers_logging

from modeling_svitt import SViTTAnswerDecoderConfig, SViTTModel, SViTTTextConfig, losses
from modeling_svitt.answer_ranking import (
    candidate_log_likelihood,
    candidate_scores,
    first_token_logits,
    first_token_scores,
)
from modeling_svitt.clip_ensemble import split_into_clips
from modeling_svitt.convert_original_svitt import convert_loaded_state_dict
from modeling_svitt.modeling_heads import SViTTForPreTraining, SViTTForVideoTextRetrieval
from modeling_svitt.modeling_video_qa import SViTTForVideoQuestionAnswering, causal_attention_mask


# Decoder and training loss -------------------------------------------------------------------------


def test_answer_decoder_is_causal():
    mask = causal_attention_mask(torch.tensor([[1, 1, 1, 0]]))
    assert mask[0, 0].tolist() == [
        [True, False, False, False],
        [True, True, False, False],
        [True, True, True, False],
        [True, True, True, False],
    ]
    model = make_model(SViTTForVideoQuestionAnswering)
    states = torch.randn(1, 5, 32)
    base = model.decode_answers(ANSWERS[1:2], ANSWER_MASK[1:2], states, torch.ones(1, 5, dtype=torch.long))
    changed_ids = ANSWERS[1:2].clone()
    changed_ids[0, 3] = 50
    changed = model.decode_answers(changed_ids, ANSWER_MASK[1:2], states, torch.ones(1, 5, dtype=torch.long))
    torch.testing.assert_close(base[:, :3], changed[:, :3])


def test_qa_training_loss_is_the_weighted_answer_likelihood():
    model = make_model(SViTTForVideoQuestionAnswering)
    ids, mask = captions(2)
    out = model(
        pixel_values=videos(2),
        input_ids=ids,
        attention_mask=mask,
        answer_input_ids=ANSWERS[:3],
        answer_attention_mask=ANSWER_MASK[:3],
        answer_weights=torch.tensor([0.5, 0.5, 1.0]),
        answers_per_question=torch.tensor([2, 1]),
    )
    states = out.question_hidden_states[[0, 0, 1]]
    logits = model.decode_answers(ANSWERS[:3], ANSWER_MASK[:3], states, mask[[0, 0, 1]])
    nll = losses.sequence_negative_log_likelihood(logits, losses.answer_token_labels(ANSWERS[:3], ANSWER_MASK[:3]))
    torch.testing.assert_close(out.loss, (0.5 * nll[0] + 0.5 * nll[1] + nll[2]) / 2)
    torch.testing.assert_close(out.answer_losses, nll)
    with pytest.raises(ValueError, match="answers_per_question"):
        model(pixel_values=videos(2), input_ids=ids, answer_input_ids=ANSWERS[:3])


# Answer-list ranking -------------------------------------------------------------------------------


def _per_clip_scores(model, clips, ids, mask, num_clips):
    split, _ = split_into_clips(clips, FRAMES)
    # eval mode: the video tower draws its deterministic evaluation patterns, as rank_answers does
    states, qmask, _ = model.encode_questions(split, ids.repeat_interleave(num_clips, 0), mask.repeat_interleave(num_clips, 0))
    first = first_token_logits(model, states, qmask, start_token_id=2).reshape(ids.shape[0], num_clips, -1)
    every = torch.arange(ANSWERS.shape[0]).expand(ids.shape[0], -1)
    likelihood = torch.stack(
        [
            candidate_log_likelihood(
                model, states[c::num_clips], qmask[c::num_clips], answer_ids=ANSWERS, answer_mask=ANSWER_MASK,
                candidates=every,
            )
            for c in range(num_clips)
        ],
        dim=-1,
    )
    return first, likelihood


def test_rank_answers_clean_mode_ranks_by_aggregated_log_likelihood():
    model = make_model(SViTTForVideoQuestionAnswering, seed=8)
    ids, mask = captions(2, seed=9)
    clips = videos(2, frames=2 * FRAMES, seed=10)
    result = model.rank_answers(clips, ids, mask, ANSWERS, ANSWER_MASK, k=5, clip_aggregation="lse")
    _, likelihood = _per_clip_scores(model, clips, ids, mask, 2)
    expected = torch.logsumexp(likelihood, -1).sort(dim=1, descending=True)
    torch.testing.assert_close(result.scores, expected.values, atol=1e-5, rtol=1e-5)
    assert torch.equal(result.answer_indices, expected.indices) and torch.equal(
        result.predictions, expected.indices[:, 0]
    )
    # k < list size: candidates are the top first-token log-probabilities
    first, _ = _per_clip_scores(model, clips, ids, mask, 2)
    top = torch.logsumexp(first.log_softmax(-1), dim=1)[:, ANSWERS[:, 1]].topk(2).indices
    pruned = model.rank_answers(clips, ids, mask, ANSWERS, ANSWER_MASK, k=2)
    assert torch.equal(pruned.answer_indices.sort(1).values, top.sort(1).values)


def test_rank_answers_release_mode_reproduces_the_quirks():
    model = make_model(SViTTForVideoQuestionAnswering, seed=8)
    ids, mask = captions(2, seed=9)
    clips = videos(2, frames=2 * FRAMES, seed=10)
    result = model.rank_answers(
        clips, ids, mask, ANSWERS, ANSWER_MASK, k=3, clip_aggregation="mean", scoring="release_ensemble"
    )
    first, likelihood = _per_clip_scores(model, clips, ids, mask, 2)
    # probabilities averaged over clips, then a second softmax over the vocabulary
    first_prob = first.softmax(-1).mean(1).softmax(-1)[:, ANSWERS[:, 1]]
    top_prob, candidates = first_prob.topk(3, dim=1)
    per_clip = top_prob.log()[..., None] + torch.gather(likelihood, 1, candidates[..., None].expand(-1, -1, 2))
    expected = per_clip.mean(-1).sort(dim=1, descending=True)
    torch.testing.assert_close(result.scores, expected.values, atol=1e-5, rtol=1e-5)
    assert torch.equal(result.answer_indices, torch.gather(candidates, 1, expected.indices))
    torch.testing.assert_close(result.probabilities.sum(1), torch.ones(2))
    with pytest.raises(TypeError, match="release_scoring"):  # the pre-release switch is gone: `scoring=` says it
        model.rank_answers(clips, ids, mask, ANSWERS, ANSWER_MASK, k=3, release_scoring=True)


# Three answers whose first tokens are 0, 1, 2 of a 3-word vocabulary with first-token probabilities 0.9, 0.05, 0.05,
# and sequence log-likelihoods -2, -0.5, -3: the release's two paths pick different answers.
HAND_PROBABILITIES = (0.9, 0.05, 0.05)
HAND_LOG_LIKELIHOOD = (-2.0, -0.5, -3.0)


def _hand_first_scores(scoring):
    if scoring == "release_concat":
        return HAND_PROBABILITIES
    flattened = [math.exp(p) for p in HAND_PROBABILITIES]  # the ensemble path's second softmax over the vocabulary
    return tuple(value / sum(flattened) for value in flattened)


@pytest.mark.parametrize("scoring, winner", [("release_concat", 0), ("release_ensemble", 1)])
def test_release_scorings_by_hand(scoring, winner):
    logits = torch.tensor([[HAND_PROBABILITIES]]).log()  # (1 question, 1 clip, 3 words)
    first = first_token_scores(logits, torch.tensor([0, 1, 2]), scoring=scoring, clip_aggregation="lse")
    expected_first = _hand_first_scores(scoring)
    torch.testing.assert_close(first, torch.tensor([expected_first]))
    scores = candidate_scores(
        first, torch.tensor([HAND_LOG_LIKELIHOOD])[..., None], scoring=scoring, clip_aggregation="lse"
    )
    expected = [math.log(p) + ll for p, ll in zip(expected_first, HAND_LOG_LIKELIHOOD)]
    torch.testing.assert_close(scores, torch.tensor([expected]))
    assert int(scores.argmax()) == winner
    # numbers for the record: concat [-2.1054, -3.4957, -5.9957]; ensemble [-2.6178, -1.9678, -4.4678]
    assert expected[winner] == pytest.approx({0: -2.10536, 1: -1.96783}[winner], abs=1e-4)


def test_release_ensemble_by_hand_over_two_clips():
    # the clips' first-token *probabilities* are combined (lse), then flattened by the second softmax
    p, q = (0.9, 0.05, 0.05), (0.2, 0.7, 0.1)
    logits = torch.tensor([[p, q]]).log()
    first = first_token_scores(logits, torch.tensor([0, 1, 2]), scoring="release_ensemble", clip_aggregation="lse")
    flattened = [math.exp(math.log(math.exp(a) + math.exp(b))) for a, b in zip(p, q)]
    expected_first = [value / sum(flattened) for value in flattened]
    torch.testing.assert_close(first, torch.tensor([expected_first]))
    likelihood = ((-2.0, -1.0), (-0.5, -4.0), (-3.0, -3.0))  # (candidate, clip)
    scores = candidate_scores(first, torch.tensor([likelihood]), scoring="release_ensemble", clip_aggregation="lse")
    expected = [
        math.log(sum(math.exp(math.log(first_p) + ll) for ll in per_clip))
        for first_p, per_clip in zip(expected_first, likelihood)
    ]
    torch.testing.assert_close(scores, torch.tensor([expected]))


def test_release_concat_scores_one_clip():
    model = make_model(SViTTForVideoQuestionAnswering)
    ids, mask = captions(1)
    with pytest.raises(ValueError, match="release_concat"):
        model.rank_answers(videos(1, frames=2 * FRAMES), ids, mask, ANSWERS, ANSWER_MASK, scoring="release_concat")


def test_rank_answers_release_concat_is_the_single_clip_rank_answer():
    model = make_model(SViTTForVideoQuestionAnswering, seed=8)
    ids, mask = captions(2, seed=9)
    clip = videos(2, seed=10)
    concat = model.rank_answers(clip, ids, mask, ANSWERS, ANSWER_MASK, k=3, scoring="release_concat")
    ensemble = model.rank_answers(clip, ids, mask, ANSWERS, ANSWER_MASK, k=3, scoring="release_ensemble")
    first, likelihood = _per_clip_scores(model, clip, ids, mask, 1)
    top_prob, candidates = first[:, 0].softmax(-1)[:, ANSWERS[:, 1]].topk(3, dim=1)  # one softmax
    expected = (top_prob.log() + torch.gather(likelihood[..., 0], 1, candidates)).sort(dim=1, descending=True)
    torch.testing.assert_close(concat.scores, expected.values, atol=1e-5, rtol=1e-5)
    assert torch.equal(concat.answer_indices, torch.gather(candidates, 1, expected.indices))
    torch.testing.assert_close(concat.probabilities, expected.values.softmax(1), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(concat.probabilities, ensemble.probabilities, atol=1e-4)


def test_concat_feeds_all_frames_to_a_tower_of_that_length(tmp_path):
    model = make_model(SViTTForVideoQuestionAnswering, seed=8)
    ids, mask = captions(1, seed=9)
    video = videos(1, frames=2 * FRAMES, seed=10)
    with pytest.raises(ValueError, match=f"num_frames={2 * FRAMES}"):
        model.rank_answers(video, ids, mask, ANSWERS, ANSWER_MASK, clip_aggregation="concat")
    model.save_pretrained(tmp_path)
    long_tower = SViTTForVideoQuestionAnswering.from_pretrained(tmp_path, num_frames=2 * FRAMES)
    result = long_tower.rank_answers(
        video, ids, mask, ANSWERS, ANSWER_MASK, k=5, clip_aggregation="concat", scoring="release_concat"
    )
    states, qmask, _ = long_tower.encode_questions(video, ids, mask)  # eval: the deterministic evaluation patterns
    assert states.shape[0] == 1  # one question pass over the one long clip
    probabilities = first_token_logits(long_tower, states, qmask, start_token_id=2).softmax(-1)[:, ANSWERS[:, 1]]
    every = torch.arange(5)[None]
    scores = probabilities.log() + candidate_log_likelihood(
        long_tower, states, qmask, answer_ids=ANSWERS, answer_mask=ANSWER_MASK, candidates=every
    )
    expected = scores.sort(dim=1, descending=True)
    torch.testing.assert_close(result.scores, expected.values, atol=1e-5, rtol=1e-5)
    assert torch.equal(result.answer_indices, expected.indices)


def test_rank_answers_replays_random_blocks_and_takes_a_generator():
    model = make_model(SViTTForVideoQuestionAnswering, seed=8)
    ids, mask = captions(2, seed=9)
    clips = videos(2, frames=2 * FRAMES, seed=10)
    seeded = model.rank_answers(clips, ids, mask, ANSWERS, ANSWER_MASK, seed=5)
    generated = model.rank_answers(clips, ids, mask, ANSWERS, ANSWER_MASK, generator=torch.Generator().manual_seed(5))
    split, _ = split_into_clips(clips, FRAMES)
    drawn = model.svitt.vision_model(split, generator=torch.Generator().manual_seed(5)).random_blocks
    replayed = model.rank_answers(clips, ids, mask, ANSWERS, ANSWER_MASK, random_blocks=drawn)
    for other in (generated, replayed):
        assert torch.equal(other.scores, seeded.scores) and torch.equal(other.answer_indices, seeded.answer_indices)
    with pytest.raises(ValueError, match="seed"):
        model.rank_answers(clips, ids, mask, ANSWERS, ANSWER_MASK, seed=5, generator=torch.Generator())


def test_k_larger_than_the_answer_list_ranks_the_whole_list():
    model = make_model(SViTTForVideoQuestionAnswering, seed=8)
    ids, mask = captions(2, seed=9)
    whole = model.rank_answers(videos(2), ids, mask, ANSWERS, ANSWER_MASK, k=5)
    clamped = model.rank_answers(videos(2), ids, mask, ANSWERS, ANSWER_MASK)  # the default k = 128
    assert clamped.answer_indices.shape == (2, 5) and torch.equal(clamped.answer_indices, whole.answer_indices)


@pytest.mark.parametrize(
    "answers, answer_mask, message",
    [
        (ANSWERS[:, :1], ANSWER_MASK[:, :1], "answer_length >= 2"),  # a start token and nothing else
        (ANSWERS, torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]]), r"\[1\]"),
        (torch.cat([ANSWERS[:4], torch.tensor([[7, 10, 3, 0]])]), ANSWER_MASK, "start token"),
        (ANSWERS, ANSWER_MASK[:, :3], "must match"),
    ],
)
def test_rank_answers_refuses_answers_without_an_answer_token(answers, answer_mask, message):
    model = make_model(SViTTForVideoQuestionAnswering)
    ids, mask = captions(1)
    with pytest.raises(ValueError, match=message):
        model.rank_answers(videos(1), ids, mask, answers, answer_mask)


def test_qa_resize_token_embeddings_reaches_the_answer_decoder(tmp_path):
    model = make_model(SViTTForVideoQuestionAnswering)
    model.resize_token_embeddings(120, mean_resizing=False)
    head = model.decoder_head.predictions
    assert model.config.text_config.vocab_size == 120
    assert model.svitt.text_model.embeddings.word_embeddings.weight.shape[0] == 120
    assert model.text_decoder.embeddings.word_embeddings.weight.shape[0] == 120
    assert head.decoder.weight is model.text_decoder.embeddings.word_embeddings.weight
    assert head.bias.shape == (120,) and head.decoder.bias is head.bias
    answers = ANSWERS.clone()
    answers[0, 1] = 115  # a new token in the answer list
    ids, mask = captions(1)
    result = model.rank_answers(videos(1), ids, mask, answers, ANSWER_MASK, k=5)
    assert result.answer_indices.shape == (1, 5)
    model.save_pretrained(tmp_path)
    reloaded = SViTTForVideoQuestionAnswering.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded.decoder_head.predictions.bias, head.bias)
    torch.testing.assert_close(
        reloaded.text_decoder.embeddings.word_embeddings.weight, model.text_decoder.embeddings.word_embeddings.weight
    )


@pytest.mark.parametrize("k, num_answers", [(0, 5), (3, 0)])
def test_rank_answers_rejects_k_below_one_and_an_empty_answer_list(k, num_answers):
    model = make_model(SViTTForVideoQuestionAnswering)
    ids, mask = captions(1)
    with pytest.raises(ValueError, match="k >= 1"):
        model.rank_answers(videos(1), ids, mask, ANSWERS[:num_answers], ANSWER_MASK[:num_answers], k=k)


# Loading: sub-config, checkpoints of other heads ---------------------------------------------------


def test_pretraining_checkpoint_initialises_the_answer_decoder(pretraining_checkpoint):
    source, folder = pretraining_checkpoint
    qa, info = SViTTForVideoQuestionAnswering.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    fusion_layer = source.config.text_config.fusion_layer
    for index, layer in enumerate(qa.text_decoder.encoder.layer):
        origin = source.svitt.text_model.encoder.layer[fusion_layer + index].state_dict()
        for name, tensor in layer.state_dict().items():
            torch.testing.assert_close(tensor, origin[name], msg=f"decoder layer {index}: {name}")
    embeddings = source.svitt.text_model.embeddings.state_dict()
    for name, tensor in qa.text_decoder.embeddings.state_dict().items():
        torch.testing.assert_close(tensor, embeddings[name], msg=name)
    for name in ("transform.dense.weight", "transform.LayerNorm.bias", "bias"):
        torch.testing.assert_close(
            qa.decoder_head.predictions.get_parameter(name), source.mlm_head.predictions.get_parameter(name)
        )
    assert qa.decoder_head.predictions.decoder.weight is qa.text_decoder.embeddings.word_embeddings.weight
    # the decoder is a copy, not a tie: fine-tuning QA does not move the question encoder's fusion layers
    assert (
        qa.text_decoder.embeddings.word_embeddings.weight is not qa.svitt.text_model.embeddings.word_embeddings.weight
    )


def test_qa_checkpoint_keeps_its_own_decoder(tmp_path):
    qa = make_model(SViTTForVideoQuestionAnswering, seed=14)
    with torch.no_grad():
        qa.text_decoder.encoder.layer[0].output.dense.weight.add_(1.0)
    qa.save_pretrained(tmp_path)
    reloaded = SViTTForVideoQuestionAnswering.from_pretrained(tmp_path)
    torch.testing.assert_close(
        reloaded.text_decoder.encoder.layer[0].output.dense.weight, qa.text_decoder.encoder.layer[0].output.dense.weight
    )


def _assert_decoder_starts_from(qa, source):
    fusion_layer = source.config.text_config.fusion_layer
    for index, layer in enumerate(qa.text_decoder.encoder.layer):
        origin = source.svitt.text_model.encoder.layer[fusion_layer + index].state_dict()
        for name, tensor in layer.state_dict().items():
            torch.testing.assert_close(tensor, origin[name], msg=f"decoder layer {index}: {name}")
    for name in ("transform.dense.weight", "transform.LayerNorm.bias", "bias"):
        torch.testing.assert_close(
            qa.decoder_head.predictions.get_parameter(name), source.mlm_head.predictions.get_parameter(name)
        )


def _save_as_pytorch_bin(model, folder):
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")


@pytest.mark.parametrize("layout", ["bin", "variant", "sharded", "state_dict"])
def test_every_checkpoint_format_initialises_the_answer_decoder(layout, tmp_path):
    source = make_model(SViTTForPreTraining, seed=21)
    kwargs = {}
    if layout == "bin":
        _save_as_pytorch_bin(source, tmp_path)
    elif layout == "variant":
        source.save_pretrained(tmp_path, variant="ema")
        kwargs["variant"] = "ema"
    elif layout == "sharded":
        source.save_pretrained(tmp_path, max_shard_size="20KB")
        assert (tmp_path / "model.safetensors.index.json").is_file()
    else:
        kwargs = {"config": source.config, "state_dict": source.state_dict()}
    folder = None if layout == "state_dict" else tmp_path
    qa, info = SViTTForVideoQuestionAnswering.from_pretrained(folder, output_loading_info=True, **kwargs)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    _assert_decoder_starts_from(qa, source)


def test_use_safetensors_false_initialises_from_the_weights_it_loads(tmp_path):
    loaded = make_model(SViTTForPreTraining, seed=22)
    _save_as_pytorch_bin(loaded, tmp_path)
    make_model(SViTTForPreTraining, seed=23).save_pretrained(tmp_path)  # other weights beside, as safetensors
    qa = SViTTForVideoQuestionAnswering.from_pretrained(tmp_path, use_safetensors=False)
    _assert_decoder_starts_from(qa, loaded)
    assert SViTTForVideoQuestionAnswering._keys_to_ignore_on_load_missing == [
        r"^svitt\.vision_model\.pooler\.",
        r"^svitt\.vision_projection\.",
        r"^svitt\.text_projection\.",
        r"^svitt\.temperature$",
    ]


def test_saving_after_initialising_from_pretraining_keeps_the_qa_names(pretraining_checkpoint, tmp_path):
    # the MLM head reaches `decoder_head` through a renaming at load time, which saving must not undo
    source, folder = pretraining_checkpoint
    SViTTForVideoQuestionAnswering.from_pretrained(folder).save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
    assert "decoder_head.predictions.bias" in keys and not any(key.startswith("mlm_head.") for key in keys)
    reloaded, info = SViTTForVideoQuestionAnswering.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"]
    _assert_decoder_starts_from(reloaded, source)


@pytest.mark.parametrize("source_class", [SViTTForVideoTextRetrieval, SViTTModel])
def test_checkpoint_without_mlm_head_initialises_the_decoder_and_reports_the_fresh_prediction_head(
    source_class, tmp_path
):
    source = make_model(source_class, seed=24)
    source.save_pretrained(tmp_path)
    qa, info = SViTTForVideoQuestionAnswering.from_pretrained(tmp_path, output_loading_info=True)
    # no MLM head in a retrieval or base-model checkpoint: the prediction transform and bias are new, and said so
    assert set(info["missing_keys"]) == {
        "decoder_head.predictions.bias",
        "decoder_head.predictions.decoder.bias",  # the same tensor as `predictions.bias`
        "decoder_head.predictions.transform.dense.weight",
        "decoder_head.predictions.transform.dense.bias",
        "decoder_head.predictions.transform.LayerNorm.weight",
        "decoder_head.predictions.transform.LayerNorm.bias",
    }
    text_model = source.text_model if source_class is SViTTModel else source.svitt.text_model
    fusion = text_model.encoder.layer[source.config.text_config.fusion_layer]
    torch.testing.assert_close(
        qa.text_decoder.encoder.layer[0].crossattention.self.query.weight, fusion.crossattention.self.query.weight
    )


@pytest.mark.parametrize("kept", ["nothing", "video tower only"])
def test_checkpoint_without_fusion_layers_reports_the_decoder_missing(kept, tmp_path):
    source = make_model(SViTTForPreTraining, seed=25)
    state = {} if kept == "nothing" else {
        key: value for key, value in source.state_dict().items() if key.startswith("svitt.vision_model.")
    }
    source.config.save_pretrained(tmp_path)
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    _, info = SViTTForVideoQuestionAnswering.from_pretrained(tmp_path, output_loading_info=True)
    missing = set(info["missing_keys"])
    assert "text_decoder.encoder.layer.0.attention.self.query.weight" in missing
    assert "text_decoder.embeddings.word_embeddings.weight" in missing
    assert "svitt.text_model.encoder.layer.2.crossattention.self.query.weight" in missing


def test_answer_decoder_is_a_sub_config(tmp_path):
    config = make_config()
    decoder = config.answer_decoder_config
    assert (decoder.num_hidden_layers, decoder.fusion_layer, decoder.encoder_width) == (2, 0, 32)
    model = SViTTForVideoQuestionAnswering(config)
    assert model.text_decoder.config is config.answer_decoder_config
    # a deeper decoder round-trips through save / load, and `answer_decoder_num_layers` sets its depth
    deeper = make_config(answer_decoder_num_layers=3)
    assert deeper.answer_decoder_config.num_hidden_layers == 3 == deeper.answer_decoder_num_layers
    deeper.save_pretrained(tmp_path)
    assert "answer_decoder_config" in json.loads((tmp_path / "config.json").read_text())
    reloaded = type(deeper).from_pretrained(tmp_path)
    assert reloaded.answer_decoder_config.to_dict() == deeper.answer_decoder_config.to_dict()
    shallower = type(deeper).from_pretrained(tmp_path, answer_decoder_num_layers=1)
    assert shallower.answer_decoder_config.num_hidden_layers == 1
    with pytest.raises(ValueError, match="encoder_width"):
        make_config(answer_decoder_config={**decoder.to_dict(), "encoder_width": 48})
    # a config.json written before the sub-config existed
    legacy = {key: value for key, value in deeper.to_dict().items() if key != "answer_decoder_config"}
    assert type(deeper)(**legacy, answer_decoder_num_layers=3).answer_decoder_config.num_hidden_layers == 3
    # no fusion layers to size the decoder from: only the QA head needs one, and it says so
    no_fusion = tiny_config(text={"num_hidden_layers": 2})
    assert no_fusion.answer_decoder_config is None
    with pytest.raises(ValueError, match="answer_decoder_num_layers"):
        SViTTForVideoQuestionAnswering(no_fusion)


def test_attention_implementation_reaches_the_answer_decoder(tmp_path):
    make_model(SViTTForVideoQuestionAnswering).save_pretrained(tmp_path)

    def implementations(model):
        return model.svitt.text_model.config._attn_implementation, model.text_decoder.config._attn_implementation

    assert implementations(SViTTForVideoQuestionAnswering.from_pretrained(tmp_path, attn_implementation="eager")) == (
        "eager",
        "eager",
    )
    per_part = SViTTForVideoQuestionAnswering.from_pretrained(
        tmp_path, attn_implementation={"text_config": "sdpa", "answer_decoder_config": "eager"}
    )
    assert implementations(per_part) == ("sdpa", "eager")
    per_part.set_attn_implementation("eager")
    assert implementations(per_part) == ("eager", "eager")
    per_part.set_attn_implementation({"answer_decoder_config": "sdpa"})
    assert implementations(per_part) == ("eager", "sdpa")


def test_the_decoder_config_loads_on_its_own_from_a_qa_folder(tmp_path):
    # a class of its own with its own `base_config_key`: not the text tower's config, which shares its fields
    model = make_model(SViTTForVideoQuestionAnswering, answer_decoder_num_layers=3)
    model.save_pretrained(tmp_path)
    decoder = SViTTAnswerDecoderConfig.from_pretrained(tmp_path)
    assert isinstance(decoder, SViTTAnswerDecoderConfig)
    assert (decoder.num_hidden_layers, decoder.fusion_layer) == (3, 0)
    text = SViTTTextConfig.from_pretrained(tmp_path)
    assert type(text) is SViTTTextConfig and (text.num_hidden_layers, text.fusion_layer) == (4, 2)
    assert AutoConfig.for_model("svitt_answer_decoder").__class__ is SViTTAnswerDecoderConfig


def test_folders_saved_with_the_decoder_tagged_as_a_text_config_still_load(tmp_path):
    model = make_model(SViTTForVideoQuestionAnswering, answer_decoder_num_layers=3)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["answer_decoder_config"]["model_type"] == "svitt_answer_decoder"
    saved["answer_decoder_config"]["model_type"] = "svitt_text_model"  # as written before the class existed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    reloaded = SViTTForVideoQuestionAnswering.from_pretrained(tmp_path)
    assert type(reloaded.config.answer_decoder_config) is SViTTAnswerDecoderConfig
    fields = ("model_type", "num_hidden_layers", "fusion_layer", "encoder_width", "hidden_size", "vocab_size")
    assert [getattr(reloaded.config.answer_decoder_config, name) for name in fields] == [
        getattr(model.config.answer_decoder_config, name) for name in fields
    ]
    assert SViTTAnswerDecoderConfig.from_pretrained(tmp_path).num_hidden_layers == 3
    # a decoder config built as a text config by older code becomes the decoder's class
    legacy = SViTTTextConfig(**{**model.config.answer_decoder_config.to_dict(), "model_type": "svitt_text_model"})
    assert type(make_config(answer_decoder_config=legacy).answer_decoder_config) is SViTTAnswerDecoderConfig


@pytest.mark.parametrize("model_class", [SViTTModel, SViTTForPreTraining, SViTTForVideoTextRetrieval])
def test_setting_attention_on_a_head_without_the_decoder_does_not_warn(model_class):
    # the decoder's config travels with every head's config, but only the QA head has the decoder to update
    model = make_model(model_class)
    assert model.config.answer_decoder_config is not None
    with CaptureLogger(transformers_logging.get_logger("transformers.modeling_utils")) as captured:
        model.set_attn_implementation("sdpa")
    assert "answer_decoder_config" not in captured.out
    assert model.config.text_config._attn_implementation == "sdpa"
    assert model.config.answer_decoder_config is not None  # still there, for a QA head built from this config


def test_resized_pretraining_checkpoint_gives_the_decoder_its_vocabulary(tmp_path):
    source = make_model(SViTTForPreTraining, seed=26)
    source.resize_token_embeddings(120, mean_resizing=False)
    source.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["answer_decoder_config"]["vocab_size"] == 100
    qa = SViTTForVideoQuestionAnswering.from_pretrained(tmp_path)
    assert qa.config.answer_decoder_config.vocab_size == 120
    torch.testing.assert_close(
        qa.text_decoder.embeddings.word_embeddings.weight, source.svitt.text_model.embeddings.word_embeddings.weight
    )


# Release QA checkpoints ----------------------------------------------------------------------------

# this package's names -> the release's QA model's; None: the release's QA model has no such weight
_TO_RELEASE = (
    ("svitt.vision_model.pooler.", None),
    ("svitt.vision_projection.", None),
    ("svitt.text_projection.", None),
    ("svitt.temperature", None),
    ("svitt.vision_model.", "vision_encoder."),
    ("svitt.vision_layernorm.", "vision_layernorm."),
    ("svitt.text_model.", "text_encoder."),
    ("text_decoder.", "text_decoder.bert."),
    ("decoder_head.", "text_decoder.cls."),
)


def release_name(name):
    old, new = next((old, new) for old, new in _TO_RELEASE if name.startswith(old))
    return None if new is None else new + name[len(old) :]


def release_layout(model):
    return {release_name(name): tensor.clone() for name, tensor in model.state_dict().items() if release_name(name)}


RELEASE_TINY_TRAINING_CONFIG = {
    "image_res": 32,
    "vision_encoder_args": {
        "sparse_random_attn": 1,
        "attn_block_size": 8,
        "token_keep_rate": 0.7,
        "token_drop_loc": [0, 1],
    },
}


@pytest.mark.parametrize("decoder", [{"num_layers": 3}, {"num_layers": 1, "hidden_size": 48}])
def test_converter_reads_the_answer_decoder_from_its_tensors(decoder, tmp_path):
    # the release hard-codes a 3-layer decoder whatever the fusion depth (2 here); the width may differ too
    config = make_config(answer_decoder_num_layers=decoder["num_layers"])
    if "hidden_size" in decoder:
        config.answer_decoder_config.hidden_size = decoder["hidden_size"]
        config.answer_decoder_config.intermediate_size = 2 * decoder["hidden_size"]
    source = SViTTForVideoQuestionAnswering(config).eval()
    converted = convert_loaded_state_dict(
        release_layout(source),
        tmp_path,
        RELEASE_TINY_TRAINING_CONFIG,
        text_overrides={"num_attention_heads": 4, "cls_token_id": 2, "sep_token_id": 3, "mask_token_id": 4},
        decoder_overrides={"num_attention_heads": 4},  # heads cannot be read from the tensors
    )
    decoder_config = converted.config.answer_decoder_config
    assert decoder_config.num_hidden_layers == decoder["num_layers"] != converted.config.text_config.num_fusion_layers
    assert (decoder_config.hidden_size, decoder_config.intermediate_size) == (
        config.answer_decoder_config.hidden_size,
        config.answer_decoder_config.intermediate_size,
    )
    expected = source.state_dict()
    for name, tensor in SViTTForVideoQuestionAnswering.from_pretrained(tmp_path).state_dict().items():
        if release_name(name):
            torch.testing.assert_close(tensor, expected[name], msg=name)
    ids, mask = captions(2)
    inputs = dict(pixel_values=videos(2), input_ids=ids, attention_mask=mask, answer_input_ids=ANSWERS[:2])
    with torch.no_grad():
        torch.testing.assert_close(converted(**inputs).logits, source(**inputs).logits)


def test_ranking_helpers_take_their_options_by_name():
    # positional scorings or tensors of the same shape could be swapped silently
    logits = torch.tensor([[HAND_PROBABILITIES]]).log()
    with pytest.raises(TypeError):
        first_token_scores(logits, torch.tensor([0, 1, 2]), "release_concat", "lse")
    first = first_token_scores(logits, torch.tensor([0, 1, 2]), scoring="release_concat", clip_aggregation="lse")
    with pytest.raises(TypeError):
        candidate_scores(first, torch.tensor([HAND_LOG_LIKELIHOOD])[..., None], "release_concat", "lse")
