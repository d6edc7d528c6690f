"""Task heads: losses, sampling, retrieval ranking, multiple choice, saving and cross-head loading.

The video QA head has its own tests in `test_video_qa.py`.
"""

import inspect
import json

import pytest
import torch
import torch.nn.functional as F
from helpers.tiny_configs import ANSWERS, FRAMES, captions, make_model, videos

from modeling_svitt import losses, register_head_auto_classes
from modeling_svitt.clip_ensemble import aggregate_clips, split_into_clips
from modeling_svitt.modeling_heads import SViTTForPreTraining, SViTTForVideoTextRetrieval, SViTTHeadPreTrainedModel
from modeling_svitt.modeling_multiple_choice import SViTTForMultipleChoice
from modeling_svitt.modeling_svitt import SViTTModel
from modeling_svitt.modeling_video_qa import SViTTForVideoQuestionAnswering
from svitt_tools.metrics import retrieval_metrics


@pytest.mark.parametrize(
    ("function", "positional"),
    [
        (SViTTHeadPreTrainedModel._contrastive_matching_forward, ("self", "output_class")),
        (SViTTHeadPreTrainedModel._training_objectives, ("self", "text", "video")),
        (SViTTHeadPreTrainedModel._matching, ("self", "text", "video")),
        (SViTTHeadPreTrainedModel._itm_negatives, ("self", "contrastive", "batch_size")),
        (SViTTModel.encode_pairs, ("self", "pixel_values", "input_ids", "attention_mask")),
        (SViTTModel.contrastive, ("self", "video_embeds", "text_embeds", "match_ids")),
        (losses.egonce_positive_mask, ("row_match_ids", "column_match_ids")),
    ],
)
def test_helpers_with_interchangeable_tensors_take_them_by_name(function, positional):
    """Optional tensors of one shape (verb / noun tags, the two negative indices, ...) passed by position could be
    swapped without an error: past the leading inputs, these helpers take everything by name."""
    parameters = inspect.signature(function).parameters.values()
    assert tuple(p.name for p in parameters if p.kind is not inspect.Parameter.KEYWORD_ONLY) == positional


# Pretraining ---------------------------------------------------------------------------------------


def test_pretraining_losses_gradients_and_temperature_clamp():
    model = make_model(SViTTForPreTraining).train()
    with torch.no_grad():
        model.svitt.temperature.fill_(3.0)
    ids, mask = captions(4)
    match_ids = torch.tensor([0, 0, 1, 2])
    out = model(pixel_values=videos(4), input_ids=ids, attention_mask=mask, match_ids=match_ids)
    assert model.svitt.temperature.item() == pytest.approx(model.config.temperature_max)
    torch.testing.assert_close(out.loss, out.loss_itc + out.loss_itm + out.loss_mlm)
    assert out.itm_logits.shape == (12, 2) and out.itm_labels.tolist() == [1] * 4 + [0] * 8
    assert out.mlm_logits.shape == (4, 8, 100)
    positives = losses.positive_mask_from_ids(match_ids)
    assert not positives[torch.arange(4), out.negative_video_indices].any()
    assert not positives[torch.arange(4), out.negative_text_indices].any()
    out.loss.backward()
    for name in ("itm_head.weight", "mlm_head.predictions.transform.dense.weight", "svitt.temperature"):
        assert model.get_parameter(name).grad is not None, name
    assert model.mlm_head.predictions.decoder.weight is model.svitt.text_model.embeddings.word_embeddings.weight


def test_pretraining_handles_a_batch_of_one_and_all_positive_batches():
    model = make_model(SViTTForPreTraining)
    ids, mask = captions(1)
    out = model(pixel_values=videos(1), input_ids=ids, attention_mask=mask)
    assert out.itm_logits.shape == (1, 2) and torch.isfinite(out.loss)
    assert out.negative_video_indices.tolist() == [-1]
    ids, mask = captions(3)
    out = model(pixel_values=videos(3), input_ids=ids, attention_mask=mask, match_ids=torch.tensor([4, 4, 4]))
    assert out.itm_labels.tolist() == [1, 1, 1] and torch.isfinite(out.loss)


def test_pretraining_replays_supplied_randomness_and_validates_negatives():
    model = make_model(SViTTForPreTraining)
    ids, mask = captions(3)
    kwargs = dict(pixel_values=videos(3), input_ids=ids, attention_mask=mask)
    first = model(**kwargs, sampling_generator=torch.Generator().manual_seed(7))
    second = model(**kwargs, sampling_generator=torch.Generator().manual_seed(7))
    assert torch.equal(first.mlm_labels, second.mlm_labels)
    torch.testing.assert_close(first.loss, second.loss)
    replay = model(
        **kwargs,
        negative_video_indices=first.negative_video_indices,
        negative_text_indices=first.negative_text_indices,
        mlm_input_ids=torch.where(first.mlm_labels != -100, 4, ids),
        mlm_labels=first.mlm_labels,
        random_blocks=first.vision_model_output.random_blocks,
    )
    torch.testing.assert_close(replay.itm_logits, first.itm_logits)
    partial = model(
        **kwargs, negative_video_indices=torch.tensor([1, -1, 0]), negative_text_indices=torch.tensor([2, 2, 0])
    )
    assert partial.itm_logits.shape == (3 + 2 + 3, 2)
    with pytest.raises(ValueError, match="positive pair"):
        model(**kwargs, match_ids=torch.tensor([0, 0, 1]), negative_video_indices=torch.tensor([1, 2, 0]))
    with pytest.raises(ValueError, match="together"):
        model(**kwargs, mlm_labels=first.mlm_labels)


def test_pretraining_masks_on_the_input_device_with_the_model_settings():
    model = make_model(SViTTForPreTraining, mlm_probability=0.3)
    ids, mask = captions(64, length=16)
    masked, labels = model.mask_tokens(ids, mask, generator=torch.Generator().manual_seed(0))
    selected = labels != -100
    assert not selected[:, 0].any() and not selected[mask == 0].any()
    assert abs(selected.sum().item() / (mask[:, 1:].sum().item()) - 0.3) < 0.05
    assert masked.device == ids.device and (masked[selected] == 4).float().mean() > 0.7


def test_loss_weights_of_zero_skip_their_objective():
    model = make_model(SViTTForPreTraining, loss_weight_mlm=0.0, loss_weight_itm=0.5)
    ids, mask = captions(3)
    out = model(pixel_values=videos(3), input_ids=ids, attention_mask=mask)
    assert out.loss_mlm is None and out.mlm_logits is None
    torch.testing.assert_close(out.loss, out.loss_itc + 0.5 * out.loss_itm)


def test_egonce_is_selected_by_config_and_excludes_action_positives_from_itm():
    model = make_model(SViTTForPreTraining, contrastive_loss="egonce")
    ids, mask = captions(4)
    verbs = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1]])
    nouns = torch.tensor([[1, 0], [1, 0], [1, 0], [0, 1]])
    video_ids = torch.tensor([0, 1, 2, 3])
    out = model(
        pixel_values=videos(4),
        input_ids=ids,
        attention_mask=mask,
        verb_tags=verbs,
        noun_tags=nouns,
        video_ids=video_ids,
    )
    # EgoNCE by hand: only clips 0 and 1 share a verb and a noun (and come from different videos)
    logits = out.video_embeds @ out.text_embeds.T / model.svitt.temperature
    positives = torch.eye(4, dtype=torch.bool)
    positives[0, 1] = positives[1, 0] = True

    def direction(scores):
        return -(scores.masked_fill(~positives, float("-inf")).logsumexp(1) - scores.logsumexp(1)).mean()

    torch.testing.assert_close(out.loss_itc, (direction(logits) + direction(logits.T)) / 2)
    # the same clips from one video are scene-aware negatives instead
    same_video = model(
        pixel_values=videos(4),
        input_ids=ids,
        attention_mask=mask,
        verb_tags=verbs,
        noun_tags=nouns,
        video_ids=torch.tensor([0, 0, 2, 3]),
    )
    torch.testing.assert_close(same_video.loss_itc, (F.cross_entropy(logits, torch.arange(4)) + F.cross_entropy(logits.T, torch.arange(4))) / 2)
    # clips 0 and 1 share "verb 0 + noun 0": never each other's ITM negative
    assert out.negative_video_indices[0] not in (0, 1) and out.negative_text_indices[1] not in (0, 1)


# Retrieval -----------------------------------------------------------------------------------------


def test_retrieval_forward_trains_itc_itm_and_serves_zero_shot():
    model = make_model(SViTTForVideoTextRetrieval)
    ids, mask = captions(3)
    zero_shot = model(pixel_values=videos(3), input_ids=ids, attention_mask=mask)
    assert zero_shot.loss is None and zero_shot.itm_logits is None and zero_shot.logits_per_video.shape == (3, 3)
    trained = model.train()(
        pixel_values=videos(3), input_ids=ids, attention_mask=mask, match_ids=torch.tensor([0, 1, 1])
    )
    torch.testing.assert_close(trained.loss, trained.loss_itc + trained.loss_itm)
    trained.loss.backward()


def test_retrieval_zero_shot_scores_any_number_of_texts_against_any_number_of_videos():
    # e.g. one video against N candidate captions (zero-shot classification): no loss, so no square batch needed
    model = make_model(SViTTForVideoTextRetrieval)
    ids, mask = captions(4)
    out = model(pixel_values=videos(1), input_ids=ids, attention_mask=mask, generator=torch.Generator().manual_seed(0))
    assert out.loss is None and out.logits_per_video.shape == (1, 4) and out.logits_per_text.shape == (4, 1)
    base = model.svitt(
        pixel_values=videos(1), input_ids=ids, attention_mask=mask, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(out.logits_per_video, base.logits_per_video)
    torch.testing.assert_close(out.logits_per_text, base.logits_per_text)
    # EgoNCE only matters for the loss: zero-shot scoring needs no verb / noun tags
    egonce = make_model(SViTTForVideoTextRetrieval, contrastive_loss="egonce")
    assert egonce(pixel_values=videos(2), input_ids=ids, attention_mask=mask).logits_per_video.shape == (2, 4)


def test_clip_splitting_and_aggregation():
    frames = torch.arange(6).float().reshape(1, 6, 1, 1, 1).expand(2, 6, 3, 2, 2)
    consecutive, k = split_into_clips(frames, 2, "consecutive")
    assert k == 3 and consecutive[:3, :, 0, 0, 0].tolist() == [[0, 1], [2, 3], [4, 5]]
    strided, _ = split_into_clips(frames, 2, "strided")
    assert strided[:3, :, 0, 0, 0].tolist() == [[0, 3], [1, 4], [2, 5]]
    with pytest.raises(ValueError, match="clips"):
        split_into_clips(frames, 4)
    scores = torch.tensor([[0.0, 1.0, 2.0]])
    torch.testing.assert_close(aggregate_clips(scores, "lse"), torch.logsumexp(scores, -1))
    assert aggregate_clips(scores, "mean").item() == 1.0 and aggregate_clips(scores, "max").item() == 2.0


@pytest.fixture(scope="module")
def gallery_setup():
    model = make_model(SViTTForVideoTextRetrieval, seed=4)
    clips = videos(5, frames=2 * FRAMES, seed=5)  # 5 videos of 2 clips each
    ids, mask = captions(7, seed=6)
    return model, clips, ids, mask


def test_rank_is_the_release_two_stage_protocol(gallery_setup):
    model, clips, ids, mask = gallery_setup
    video_gallery = model.encode_videos(clips)
    text_gallery = model.encode_texts(ids, mask)
    result = model.rank(video_gallery, text_gallery, k=2, clip_aggregation="mean")

    # stage 1: cosine similarity averaged over the clips of each video
    itc = torch.einsum("te,vke->tvk", text_gallery.embeds, video_gallery.embeds).mean(-1)
    torch.testing.assert_close(result.itc_scores_t2v, itc)
    assert result.candidates_t2v.sum(1).tolist() == [2] * 7 and result.candidates_v2t.sum(1).tolist() == [2] * 5
    assert torch.equal(
        result.candidates_t2v, torch.zeros_like(itc, dtype=torch.bool).scatter(1, itc.topk(2).indices, True)
    )

    # stage 2: ITM positive logit of each clip, averaged
    t, v = result.candidates_t2v.nonzero()[0].tolist()
    per_clip = []
    for clip in range(2):
        fusion = model.svitt.fuse(
            text_gallery.hidden_states[t : t + 1],
            text_gallery.attention_mask[t : t + 1],
            video_gallery.tokens[v, clip : clip + 1],
            video_gallery.token_mask[v, clip : clip + 1],
        )
        per_clip.append(model.itm_head(fusion.last_hidden_state[:, 0])[0, 1])
    torch.testing.assert_close(result.scores_t2v[t, v], torch.stack(per_clip).mean(), atol=1e-5, rtol=1e-5)

    # non-candidates rank below every candidate, in ITC order
    for row in range(7):
        candidate = result.candidates_t2v[row]
        assert result.scores_t2v[row, ~candidate].max() < result.scores_t2v[row, candidate].min()
        order_itc = itc[row, ~candidate].argsort()
        order_final = result.scores_t2v[row, ~candidate].argsort()
        assert torch.equal(order_itc, order_final)
    release_fill = model.rank(video_gallery, text_gallery, k=2, clip_aggregation="mean", non_candidate_fill=-100.0)
    assert (release_fill.scores_t2v[~release_fill.candidates_t2v] == -100).all()
    # the ranking feeds the metrics as the release evaluates it: R@1 by hand from the two score matrices
    text_video = torch.arange(7) % 5
    metrics = retrieval_metrics(result.scores_t2v, text_video, torch.arange(5), scores_v2t=result.scores_v2t)
    t2v_top1 = (result.scores_t2v.argmax(1) == text_video).float().mean() * 100
    v2t_top1 = (text_video[result.scores_v2t.argmax(1)] == torch.arange(5)).float().mean() * 100
    assert metrics["t2v_R@1"] == pytest.approx(t2v_top1.item()) and metrics["v2t_R@1"] == pytest.approx(v2t_top1.item())


def test_rank_is_deterministic_and_independent_of_chunking(gallery_setup):
    model, clips, ids, mask = gallery_setup
    reference = model.retrieve(clips, ids, mask, k=3, video_batch_size=5, itm_batch_size=1000)
    chunked = model.retrieve(clips, ids, mask, k=3, video_batch_size=2, text_batch_size=3, itm_batch_size=3)
    again = model.retrieve(clips, ids, mask, k=3, video_batch_size=2, text_batch_size=3, itm_batch_size=3)
    assert torch.equal(chunked.scores_t2v, again.scores_t2v)
    assert torch.equal(reference.candidates_t2v, chunked.candidates_t2v)
    torch.testing.assert_close(reference.scores_t2v, chunked.scores_t2v, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reference.scores_v2t, chunked.scores_v2t, atol=1e-5, rtol=1e-5)


def test_rank_clip_ensembling_and_sampling(gallery_setup):
    model, clips, ids, mask = gallery_setup
    texts = model.encode_texts(ids, mask)
    consecutive = model.encode_videos(clips, clip_sampling="consecutive")
    strided = model.encode_videos(clips, clip_sampling="strided")
    single = model.encode_videos(clips[:, :FRAMES])  # the first consecutive clip on its own
    torch.testing.assert_close(consecutive.embeds[:, 0], single.embeds[:, 0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(consecutive.embeds, strided.embeds)
    scores = {
        how: model.rank(consecutive, texts, k=5, clip_aggregation=how).scores_t2v for how in ("lse", "mean", "max")
    }
    # with k = all videos every pair is re-scored; lse >= max >= mean for the same per-clip scores
    assert (scores["lse"] >= scores["max"] - 1e-5).all() and (scores["max"] >= scores["mean"] - 1e-5).all()
    itc_only = model.rank(consecutive, texts, use_itm=False)
    torch.testing.assert_close(itc_only.scores_t2v, itc_only.itc_scores_t2v)


def test_text_guided_selection_switches_on_at_inference_and_is_restored(gallery_setup):
    model, clips, ids, mask = gallery_setup
    videos_, texts = model.encode_videos(clips), model.encode_texts(ids, mask)
    plain = model.rank(videos_, texts, k=2)
    selected = model.rank(videos_, texts, k=2, fusion_token_keep_rate=0.3, fusion_token_drop_layers=[0])
    assert torch.equal(plain.candidates_t2v, selected.candidates_t2v)
    assert not torch.allclose(plain.scores_t2v[plain.candidates_t2v], selected.scores_t2v[plain.candidates_t2v])
    assert model.config.text_config.fusion_token_keep_rate == 1.0
    with model.svitt.sparsity_overrides(fusion_token_keep_rate=0.5):
        assert model.svitt.text_model.config.fusion_token_keep_rate == 0.5
    assert model.svitt.text_model.config.fusion_token_keep_rate == 1.0
    for bad, field in (
        ({"fusion_token_keep_rate": 0.0}, "fusion_token_keep_rate"),
        ({"fusion_token_keep_rate": 0.5, "fusion_token_drop_layers": [5]}, "fusion_token_drop_layers"),
        ({"fusion_token_keep_strategy": "best"}, "fusion_token_keep_strategy"),
    ):
        with pytest.raises(ValueError, match=field), model.svitt.sparsity_overrides(**bad):
            pass
        config = model.svitt.text_model.config
        assert (config.fusion_token_keep_rate, config.fusion_token_keep_strategy) == (1.0, "cls_attn")


# Multiple choice -----------------------------------------------------------------------------------


def test_multiple_choice_logits_and_loss():
    model = make_model(SViTTForMultipleChoice)
    ids, mask = captions(2)
    candidates = torch.randn(2, 3, FRAMES, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    labels = torch.tensor([2, 0])
    out = model(pixel_values=candidates, input_ids=ids, attention_mask=mask, labels=labels)
    assert out.logits.shape == (2, 3)
    video = model.svitt.get_video_features(candidates.flatten(0, 1)).pooler_output.reshape(2, 3, -1)
    text = model.svitt.get_text_features(ids, mask).pooler_output
    expected = torch.einsum("be,bne->bn", text, video) / model.svitt.temperature
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    itm = model(pixel_values=candidates, input_ids=ids, attention_mask=mask, scoring="itm")
    assert itm.logits.shape == (2, 3) and itm.loss is None
    with pytest.raises(ValueError, match="num_choices"):
        model(pixel_values=videos(2), input_ids=ids)


# Saving, loading, cross-head initialisation, Auto classes ------------------------------------------


def _head_outputs(model, cls):
    ids, mask = captions(2)
    with torch.no_grad():
        if cls is SViTTForVideoQuestionAnswering:
            return model(
                pixel_values=videos(2), input_ids=ids, attention_mask=mask, answer_input_ids=ANSWERS[:2]
            ).logits
        if cls is SViTTForMultipleChoice:
            return model(pixel_values=videos(4).reshape(2, 2, FRAMES, 3, 32, 32), input_ids=ids).logits
        out = model(
            pixel_values=videos(2),
            input_ids=ids,
            attention_mask=mask,
            match_ids=torch.arange(2),
            sampling_generator=torch.Generator().manual_seed(0),
        )
        return out.itm_logits


@pytest.mark.parametrize(
    "cls", [SViTTForPreTraining, SViTTForVideoTextRetrieval, SViTTForVideoQuestionAnswering, SViTTForMultipleChoice]
)
def test_every_head_saves_and_loads(cls, tmp_path):
    model = make_model(cls, seed=12)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [cls.__name__]
    reloaded, info = cls.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    torch.testing.assert_close(_head_outputs(reloaded, cls), _head_outputs(model, cls))


@pytest.mark.parametrize("cls", [SViTTForVideoTextRetrieval, SViTTForMultipleChoice])
def test_pretraining_checkpoint_loads_into_retrieval_and_multiple_choice(cls, pretraining_checkpoint):
    source, folder = pretraining_checkpoint
    target, info = cls.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    for name, tensor in target.state_dict().items():
        torch.testing.assert_close(tensor, source.state_dict()[name], msg=name)


def test_retrieval_checkpoint_loads_into_pretraining_with_a_fresh_tied_mlm_head(tmp_path, caplog):
    make_model(SViTTForVideoTextRetrieval, seed=15).save_pretrained(tmp_path)
    model, info = SViTTForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert {key.split(".")[0] for key in info["missing_keys"]} == {"mlm_head"}
    assert model.mlm_head.predictions.decoder.weight is model.svitt.text_model.embeddings.word_embeddings.weight
    assert model.mlm_head.predictions.decoder.bias is model.mlm_head.predictions.bias
    assert "corrupted" not in caplog.text


def test_auto_classes_and_remote_code_entries(pretraining_checkpoint):
    import transformers

    register_head_auto_classes()
    _, folder = pretraining_checkpoint
    expected = {
        "AutoModelForPreTraining": SViTTForPreTraining,
        "AutoModelForVisualQuestionAnswering": SViTTForVideoQuestionAnswering,
        "AutoModelForMultipleChoice": SViTTForMultipleChoice,
    }
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    for auto_name, cls in expected.items():
        assert type(getattr(transformers, auto_name).from_pretrained(folder)) is cls
        assert auto_map[auto_name] == f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"
    # its pipeline feeds still images and reads `logits_per_image`: a video model does not claim to serve it
    assert "AutoModelForZeroShotImageClassification" not in auto_map
    with pytest.raises(ValueError, match="Unrecognized configuration class"):
        transformers.AutoModelForZeroShotImageClassification.from_pretrained(folder)
    assert (folder / "modeling_heads.py").is_file() and (folder / "losses.py").is_file()


def test_from_pretrained_moves_to_another_clip_length(pretraining_checkpoint, tmp_path):
    source, folder = pretraining_checkpoint
    model = SViTTForVideoTextRetrieval.from_pretrained(folder, num_frames=2 * FRAMES)
    assert model.config.vision_config.num_frames == 2 * FRAMES
    table = model.svitt.vision_model.encoder.layer[
        0
    ].attention.attention.relative_position_bias.relative_position_bias_table
    original = source.svitt.vision_model.encoder.layer[
        0
    ].attention.attention.relative_position_bias.relative_position_bias_table
    spatial = (2 * 4 - 1) ** 2  # 4 patches per side
    assert table.shape[0] == (2 * 2 * FRAMES - 1) * spatial + 3 and original.shape[0] == (2 * FRAMES - 1) * spatial + 3
    ids, mask = captions(2)
    assert model(
        pixel_values=videos(2, frames=2 * FRAMES), input_ids=ids, attention_mask=mask
    ).logits_per_video.shape == (2, 2)
    model.save_pretrained(tmp_path)
    assert SViTTForVideoTextRetrieval.from_pretrained(tmp_path).config.vision_config.num_frames == 2 * FRAMES


def test_galleries_can_be_stored_in_half_precision(gallery_setup):
    model, clips, ids, mask = gallery_setup
    full = model.retrieve(clips, ids, mask, k=2)
    half = model.rank(
        model.encode_videos(clips, storage_dtype=torch.float16),
        model.encode_texts(ids, mask, storage_dtype=torch.float16),
        k=2,
    )
    torch.testing.assert_close(half.scores_t2v, full.scores_t2v, atol=5e-2, rtol=5e-2)


REMOTE_CODE_CHECK = """
import sys
sys.modules["modeling_svitt"] = None  # Hub users do not have the package installed
import torch
import transformers
folder = sys.argv[1]
from transformers.dynamic_module_utils import get_class_from_dynamic_module
classes = {}
for name in ("AutoModelForPreTraining", "AutoModelForVisualQuestionAnswering", "AutoModelForMultipleChoice"):
    model = getattr(transformers, name).from_pretrained(folder, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    classes[name] = model
retrieval_class = get_class_from_dynamic_module("modeling_heads.SViTTForVideoTextRetrieval", folder)
retrieval = retrieval_class.from_pretrained(folder)
assert type(retrieval).__module__.startswith("transformers_modules."), type(retrieval).__module__
assert torch.equal(retrieval.itm_head.weight, classes["AutoModelForPreTraining"].itm_head.weight)
qa, pretraining = classes["AutoModelForVisualQuestionAnswering"], classes["AutoModelForPreTraining"]
fusion = pretraining.config.text_config.fusion_layer
assert torch.equal(qa.text_decoder.encoder.layer[0].attention.self.query.weight,
                   pretraining.svitt.text_model.encoder.layer[fusion].attention.self.query.weight)
print("ok")
"""


def test_heads_load_as_remote_code_without_the_package(pretraining_checkpoint, tmp_path):
    import os
    import subprocess
    import sys

    _, folder = pretraining_checkpoint
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_CODE_CHECK, str(folder)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
