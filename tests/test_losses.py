"""Losses and the sampling that feeds them: hand-computed values, edge cases, distributions."""

import math

import pytest
import torch
import torch.nn.functional as F

from modeling_svitt import losses


def _normalised(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


# ITC -----------------------------------------------------------------------------------------------


def test_soft_target_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    positives = torch.tensor([[True, True, False], [False, False, True]])
    log_p = logits.log_softmax(dim=1)
    expected = (-(log_p[0, 0] + log_p[0, 1]) / 2 - log_p[1, 2]) / 2
    torch.testing.assert_close(losses.soft_target_cross_entropy(logits, positives), expected)


def test_multi_positive_itc_uses_uniform_targets_over_equal_match_ids():
    video, text = _normalised(4, 8, seed=1), _normalised(4, 8, seed=2)
    match_ids = torch.tensor([7, 7, 3, 5])  # captions 0 and 1 describe the same video
    out = losses.itc_loss(video, text, 0.1, match_ids)
    logits = video @ text.T / 0.1
    targets = torch.tensor([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    v2t = -(targets * logits.log_softmax(1)).sum(1).mean()
    t2v = -(targets * logits.T.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(out.loss, (v2t + t2v) / 2)
    assert out.video_positive_mask.tolist() == (targets > 0).tolist()
    torch.testing.assert_close(out.logits_per_video, logits)


def test_itc_without_match_ids_is_infonce():
    video, text = _normalised(3, 8, seed=3), _normalised(3, 8, seed=4)
    logits = video @ text.T / 0.07
    labels = torch.arange(3)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    torch.testing.assert_close(losses.itc_loss(video, text, 0.07).loss, expected)


def test_contrastive_loss_needs_a_positive_per_row():
    with pytest.raises(ValueError, match="positive"):
        losses.soft_target_cross_entropy(torch.zeros(2, 2), torch.tensor([[True, False], [False, False]]))


# EgoNCE --------------------------------------------------------------------------------------------


def _tags():
    # clips: 0 "cut onion" (video A), 1 "cut tomato" (video A), 2 "wash onion" (video B), 3 "cut onion" (video B)
    verbs = torch.tensor([[1, 0], [1, 0], [0, 1], [1, 0]])  # cut, wash
    nouns = torch.tensor([[1, 0], [0, 1], [1, 0], [1, 0]])  # onion, tomato
    return torch.arange(4), verbs, nouns, torch.tensor([0, 0, 1, 1])


def _same_batch_egonce_mask(ids, verbs, nouns, **kwargs):
    """EgoNCE positives of a batch against itself (rows and columns alike)."""
    tags = dict(row_verb_tags=verbs, column_verb_tags=verbs, row_noun_tags=nouns, column_noun_tags=nouns)
    return losses.egonce_positive_mask(ids, ids, **tags, **kwargs)


def test_egonce_action_aware_positive_rules():
    ids, verbs, nouns, _ = _tags()
    both = _same_batch_egonce_mask(ids, verbs, nouns, rule="verb_and_noun")
    assert both.tolist() == [
        [True, False, False, True],
        [False, True, False, False],
        [False, False, True, False],
        [True, False, False, True],
    ]
    either = _same_batch_egonce_mask(ids, verbs, nouns, rule="verb_or_noun")
    assert either[0].tolist() == [True, True, True, True] and either[1].tolist() == [True, True, False, True]
    verb_only = losses.egonce_positive_mask(ids, ids, row_verb_tags=verbs, column_verb_tags=verbs, rule="verb")
    assert verb_only[2].tolist() == [False, False, True, False]
    with pytest.raises(ValueError, match="noun_tags"):
        losses.egonce_positive_mask(ids, ids, row_verb_tags=verbs, column_verb_tags=verbs, rule="noun")
    with pytest.raises(TypeError):  # the row / column tags of verbs and nouns are named: a swap cannot go unseen
        losses.egonce_positive_mask(ids, ids, verbs, verbs, nouns, nouns)


def test_egonce_scene_aware_negatives_override_shared_tags_within_a_video():
    ids, verbs, nouns, videos = _tags()
    either = _same_batch_egonce_mask(ids, verbs, nouns, rule="verb_or_noun")
    scene = _same_batch_egonce_mask(
        ids, verbs, nouns, rule="verb_or_noun", row_video_ids=videos, column_video_ids=videos
    )
    # clip 1 shares "cut" with clip 0, but both come from video A: a scene-aware negative, not a positive
    assert either[0, 1] and not scene[0, 1]
    # clip 3 shares "cut onion" with clip 0 from another video: still an action-aware positive
    assert scene[0, 3] and scene.diagonal().all()
    negatives = losses.scene_aware_negative_mask(videos, videos, scene)
    assert negatives.nonzero().tolist() == [[0, 1], [1, 0], [2, 3], [3, 2]]


def test_egonce_loss_by_hand_and_reduces_to_infonce():
    logits = torch.tensor([[3.0, 1.0, 0.5], [0.2, 2.0, 1.0], [1.0, 1.5, 0.1]])
    positives = torch.tensor([[True, False, True], [False, True, False], [True, False, True]])
    p = logits.softmax(1)
    q = logits.T.softmax(1)
    v2t = -torch.log((p * positives).sum(1)).mean()
    t2v = -torch.log((q * positives.T).sum(1)).mean()
    torch.testing.assert_close(losses.egonce_loss(logits, logits.T, positives), (v2t + t2v) / 2)
    eye = torch.eye(3, dtype=torch.bool)
    torch.testing.assert_close(
        losses.egonce_loss(logits, logits.T, eye), losses.multi_positive_contrastive_loss(logits, logits.T, eye)
    )


def test_itc_loss_selects_egonce():
    video, text = _normalised(4, 8, seed=5), _normalised(4, 8, seed=6)
    ids, verbs, nouns, videos = _tags()
    out = losses.itc_loss(video, text, 0.05, ids, loss_type="egonce", verb_tags=verbs, noun_tags=nouns, video_ids=videos)
    expected_mask = _same_batch_egonce_mask(
        ids, verbs, nouns, row_video_ids=videos, column_video_ids=videos
    )
    assert torch.equal(out.video_positive_mask, expected_mask)
    logits = video @ text.T / 0.05
    torch.testing.assert_close(out.loss, losses.egonce_loss(logits, logits.T, expected_mask))
    with pytest.raises(ValueError, match="loss_type"):
        losses.itc_loss(video, text, 0.05, loss_type="clip")


# ITM negatives -------------------------------------------------------------------------------------


def test_itm_negatives_never_pick_positives_including_other_captions_of_the_video():
    match_ids = torch.tensor([0, 0, 0, 1, 2, 2])
    positives = losses.positive_mask_from_ids(match_ids)
    similarity = torch.randn(6, 6, generator=torch.Generator().manual_seed(0)) * 5
    similarity = similarity + positives * 100.0  # positives are by far the most similar
    generator = torch.Generator().manual_seed(1)
    for hard in (True, False):
        for _ in range(50):
            drawn = losses.sample_itm_negatives(similarity, positives, hard=hard, generator=generator)
            assert (drawn >= 0).all()
            assert not positives[torch.arange(6), drawn].any()


def test_itm_negatives_handle_a_batch_of_one_and_all_positive_rows():
    assert losses.sample_itm_negatives(torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool)).tolist() == [-1]
    positives = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    positives[2] = True  # row 2: every column positive
    drawn = losses.sample_itm_negatives(torch.zeros(3, 3), positives)
    assert drawn.tolist() == [2, 2, -1]


def test_itm_negatives_follow_the_softmax_among_negatives_and_are_reproducible():
    similarity = torch.tensor([[9.0, 0.0, math.log(3.0)]])
    positives = torch.tensor([[True, False, False]])
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([losses.sample_itm_negatives(similarity, positives, generator=generator) for _ in range(4000)])
    share = (draws == 2).float().mean().item()
    assert abs(share - 0.75) < 0.03  # exp(log 3) / (exp(0) + exp(log 3))
    uniform = torch.stack(
        [losses.sample_itm_negatives(similarity, positives, hard=False, generator=generator) for _ in range(4000)]
    )
    assert abs((uniform == 2).float().mean().item() - 0.5) < 0.03
    first = losses.sample_itm_negatives(similarity, positives, generator=torch.Generator().manual_seed(3))
    again = losses.sample_itm_negatives(similarity, positives, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, again)


def test_itm_negatives_survive_extreme_temperatures():
    # At temperature 0.001 the release's softmax-then-zero underflows to all zeros for the negatives.
    similarity = torch.tensor([[1000.0, -1000.0, -900.0]])
    drawn = losses.sample_itm_negatives(similarity, torch.tensor([[True, False, False]]))
    assert drawn.item() == 2


# MLM -----------------------------------------------------------------------------------------------


def test_mlm_masking_statistics_and_special_tokens():
    pad, cls, mask, vocab = 0, 2, 4, 100
    ids = torch.randint(5, vocab, (1000, 40), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = cls
    ids[:, 30:] = pad
    masked, labels = losses.mask_tokens_for_mlm(
        ids,
        vocab_size=vocab,
        mask_token_id=mask,
        mlm_probability=0.5,
        special_token_ids=(pad, cls),
        generator=torch.Generator().manual_seed(1),
    )
    selected = labels != losses.IGNORE_INDEX
    assert not selected[:, 0].any() and not selected[:, 30:].any()
    assert torch.equal(masked[:, 0], ids[:, 0]) and torch.equal(masked[:, 30:], ids[:, 30:])
    assert torch.equal(labels[selected], ids[selected])
    rate = selected[:, 1:30].float().mean().item()
    assert abs(rate - 0.5) < 0.01
    n = selected.sum().item()
    to_mask = (masked == mask) & selected
    unchanged = (masked == ids) & selected
    # ~29k selected tokens: a proportion's standard deviation is below 0.0025, the tolerance is 0.01.
    # A random id can also hit [MASK] or the original id (chance 1 / vocab each), hence the small corrections.
    assert abs(to_mask.sum().item() / n - (0.8 + 0.1 / vocab)) < 0.01
    assert abs(unchanged.sum().item() / n - (0.1 + 0.1 / vocab)) < 0.01
    assert abs((selected & ~to_mask & ~unchanged).sum().item() / n - (0.1 - 0.2 / vocab)) < 0.01


def test_mlm_masking_is_reproducible_respects_attention_mask_and_stays_on_device():
    ids = torch.randint(5, 100, (4, 12))
    attention = torch.ones_like(ids)
    attention[:, 8:] = 0  # padding with a non-[PAD] id must still never be masked
    kwargs = dict(vocab_size=100, mask_token_id=4, special_token_ids=(0, 2), attention_mask=attention)
    first = losses.mask_tokens_for_mlm(ids, generator=torch.Generator().manual_seed(5), **kwargs)
    second = losses.mask_tokens_for_mlm(ids, generator=torch.Generator().manual_seed(5), **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert (first[1][:, 8:] == losses.IGNORE_INDEX).all()
    assert first[0].device == ids.device and first[0].dtype == ids.dtype


def test_masked_lm_loss_without_any_mask_is_zero_not_nan():
    logits = torch.randn(2, 5, 10, requires_grad=True)
    loss = losses.masked_lm_loss(logits, torch.full((2, 5), losses.IGNORE_INDEX))
    assert loss.item() == 0.0
    loss.backward()
    labels = torch.full((2, 5), losses.IGNORE_INDEX)
    labels[0, 1] = 3
    torch.testing.assert_close(losses.masked_lm_loss(logits, labels), F.cross_entropy(logits[0, 1:2], torch.tensor([3])))


def test_training_losses_never_read_tensor_values_on_the_host():
    # A meta tensor has no data: any `bool(...)`, `int(...)` or `.item()` on one raises. Losses that run on meta
    # therefore never stop an accelerator to copy a value to the host in the training step.
    video, text = torch.randn(4, 8, device="meta"), torch.randn(4, 8, device="meta")
    match_ids = torch.tensor([0, 0, 1, 2], device="meta")
    tags = torch.ones(4, 3, device="meta")
    for loss_type in ("infonce", "egonce"):
        out = losses.itc_loss(
            video, text, torch.tensor(0.07, device="meta"), match_ids, loss_type=loss_type, verb_tags=tags, noun_tags=tags
        )
        assert out.loss.device.type == "meta" and out.loss.shape == ()
    negatives = losses.sample_itm_negatives(out.logits_per_text, out.text_positive_mask)
    assert negatives.shape == (4,)
    labels = torch.zeros(4, 7, dtype=torch.long, device="meta")
    assert losses.masked_lm_loss(torch.randn(4, 7, 30, device="meta"), labels).shape == ()
    assert losses.image_text_matching_loss(torch.randn(4, 2, device="meta"), labels[:, 0]).shape == ()


def test_similarity_logits_are_float32_and_move_to_the_queries_device():
    queries, keys = _normalised(3, 8, seed=5), _normalised(4, 8, seed=6)
    temperature = torch.tensor(0.07, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = losses.similarity_logits(queries.bfloat16(), keys, temperature)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, queries.bfloat16().float() @ keys.T / temperature.float())
    assert losses.similarity_logits(queries.to("meta"), keys, temperature).device.type == "meta"


# Answer decoder and multiple choice ----------------------------------------------------------------


def test_answer_decoder_loss_by_hand():
    logits = torch.randn(3, 4, 7, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[1, 5, 6, 2], [1, 3, 2, 0], [1, 4, 2, 0]])
    mask = (ids != 0).long()
    labels = losses.answer_token_labels(ids, mask)
    log_p = logits.log_softmax(-1)
    nll = [
        -(log_p[0, 0, 5] + log_p[0, 1, 6] + log_p[0, 2, 2]),
        -(log_p[1, 0, 3] + log_p[1, 1, 2]),
        -(log_p[2, 0, 4] + log_p[2, 1, 2]),
    ]
    torch.testing.assert_close(losses.sequence_negative_log_likelihood(logits, labels), torch.stack(nll))
    weights = torch.tensor([0.5, 0.5, 1.0])
    expected = (0.5 * nll[0] + 0.5 * nll[1] + nll[2]) / 2
    torch.testing.assert_close(losses.answer_decoder_loss(logits, labels, weights, num_questions=2), expected)


def test_multiple_choice_loss():
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 5.0]])
    labels = torch.tensor([1, 2])
    torch.testing.assert_close(losses.multiple_choice_loss(logits, labels), F.cross_entropy(logits, labels))


# Distributed helpers -------------------------------------------------------------------------------


def test_gather_helpers_are_identity_without_distributed():
    x = torch.randn(3, 4, requires_grad=True)
    assert losses.all_gather_with_grad(x) is x
    assert losses.all_gather_no_grad(x) is x
    assert losses.local_row_offset(x) == 0 and losses.gather_row_counts(x) == [3]
