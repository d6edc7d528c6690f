"""Plain-torch metrics against hand-computed cases."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from svitt_tools.metrics import (
    egomcq_accuracy,
    first_occurrence_indices,
    gather_rows_across_processes,
    qa_accuracy,
    rank_metrics,
    retrieval_metrics,
    retrieval_ranks,
)

# 3 texts x 4 videos; text 2 has two ground-truth videos (2 and 3)
SCORES = torch.tensor(
    [
        [0.9, 0.1, 0.5, 0.3],  # GT v0: first
        [0.2, 0.8, 0.85, 0.1],  # GT v1: one video above it
        [0.7, 0.6, 0.1, 0.6],  # GT v2/v3: best GT 0.6; v0 above, v1 tied
    ]
)
POSITIVES = torch.tensor(
    [[True, False, False, False], [False, True, False, False], [False, False, True, True]]
)


def test_ranks_with_several_ground_truths_and_ties():
    assert retrieval_ranks(SCORES, POSITIVES).tolist() == [0, 1, 2]
    assert retrieval_ranks(SCORES, POSITIVES, tie_break="optimistic").tolist() == [0, 1, 1]
    # video -> text: v2 and v3 both have text 2 as ground truth
    assert retrieval_ranks(SCORES.T, POSITIVES.T).tolist() == [0, 0, 2, 0]


def test_retrieval_metrics_by_hand():
    metrics = retrieval_metrics(SCORES, positives=POSITIVES)
    expected = {
        "t2v_R@1": 100 / 3,
        "t2v_R@5": 100.0,
        "t2v_R@10": 100.0,
        "t2v_MedR": 2.0,
        "t2v_MnR": 2.0,
        "v2t_R@1": 75.0,
        "v2t_R@5": 100.0,
        "v2t_MedR": 1.0,  # ranks 1, 1, 1, 3
        "v2t_MnR": 1.5,
    }
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value), key
    assert metrics["t2v_R_mean"] == pytest.approx((100 / 3 + 200) / 3)
    assert metrics["R_mean"] == pytest.approx((metrics["t2v_R_mean"] + metrics["v2t_R_mean"]) / 2)
    optimistic = retrieval_metrics(SCORES, positives=POSITIVES, tie_break="optimistic")
    assert optimistic["t2v_MnR"] == pytest.approx(5 / 3)


def test_rank_metrics_median_of_an_even_count_and_custom_ks():
    metrics = rank_metrics(torch.tensor([0, 1, 4, 9]), ks=(1, 5, 10))
    assert metrics["R@1"] == 25.0 and metrics["R@5"] == 75.0 and metrics["R@10"] == 100.0
    assert metrics["MedR"] == 3.5 and metrics["MnR"] == 4.5
    assert set(rank_metrics(torch.tensor([2]), ks=(3,))) == {"R@3", "MedR", "MnR", "R_mean"}


def test_a_video_without_any_caption_is_an_error_not_a_silent_zero():
    scores = torch.tensor([[0.9, 0.2, 0.1], [0.1, 0.3, 0.2], [0.1, 0.2, 0.8]])
    with pytest.raises(ValueError, match="no ground truth"):
        retrieval_metrics(scores, text_match_ids=[5, 5, 6], video_match_ids=[5, 7, 6])


def test_match_ids_all_queries_answerable():
    scores = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3]])
    metrics = retrieval_metrics(scores, text_match_ids=[1, 2, 1], video_match_ids=[1, 2])
    assert metrics["t2v_R@1"] == 100.0
    # video 0 has captions 0 and 2; its best caption (0.9) is first
    assert metrics["v2t_R@1"] == 100.0 and metrics["v2t_MnR"] == 1.0


def test_separate_video_to_text_scores_are_used():
    scores_v2t = SCORES.T.clone()
    scores_v2t[2, 2] = 10.0  # re-ranking puts text 2 first for video 2
    metrics = retrieval_metrics(SCORES, positives=POSITIVES, scores_v2t=scores_v2t)
    assert metrics["v2t_R@1"] == 100.0 and metrics["t2v_R@1"] == pytest.approx(100 / 3)


def test_default_ground_truth_is_the_diagonal():
    assert retrieval_metrics(torch.eye(4))["R_mean"] == 100.0
    with pytest.raises(ValueError, match="square"):
        retrieval_metrics(torch.zeros(2, 3))


def test_constant_scores_are_not_perfect_by_default():
    metrics = retrieval_metrics(torch.zeros(5, 5))
    assert metrics["t2v_R@1"] == 0.0 and metrics["t2v_MedR"] == 5.0
    assert retrieval_metrics(torch.zeros(5, 5), tie_break="optimistic")["t2v_R@1"] == 100.0


def test_duplicates_from_uneven_sharding_are_removed():
    # 5 samples on 2 processes with a padding sampler: rank 0 got 0, 2, 4 and rank 1 got 1, 3, 0 (padding)
    scores = torch.randn(5, 5, generator=torch.Generator().manual_seed(0))
    reference = retrieval_metrics(scores)
    order = torch.tensor([0, 2, 4, 1, 3, 0])
    gathered = scores[order][:, order]
    assert retrieval_metrics(gathered, text_ids=order, video_ids=order) == reference
    assert first_occurrence_indices(order).tolist() == [0, 3, 1, 4, 2]


def test_qa_accuracy_by_hand():
    assert qa_accuracy(["dog", "cat", "red", "two"], ["dog", "bird", "red", "three"]) == {"accuracy": 50.0}
    assert qa_accuracy(["a", "b"], [["a", "x"], ("c",)])["accuracy"] == 50.0
    assert qa_accuracy(torch.tensor([3, 1, 2]), torch.tensor([3, 1, 0]))["accuracy"] == pytest.approx(200 / 3)
    # question 7 was duplicated by padding; its copy is dropped
    assert qa_accuracy(["x", "y", "x"], ["x", "z", "x"], ids=[7, 8, 7])["accuracy"] == 50.0
    with pytest.raises(ValueError):
        qa_accuracy(["a"], ["a", "b"])


def test_egomcq_accuracy_by_hand():
    logits = torch.tensor(
        [
            [0.1, 0.9, 0.0, 0.0, 0.0],  # correct
            [0.5, 0.5, 0.1, 0.0, 0.0],  # tie: argmax takes the first maximum (0), label 1 -> wrong
            [0.0, 0.0, 0.0, 0.0, 1.0],  # correct
            [1.0, 0.0, 0.0, 0.0, 0.0],  # wrong
            [0.3, 0.2, 0.1, 0.0, 0.0],  # correct
        ]
    )
    labels = [1, 1, 4, 2, 0]
    types = [2, 2, 1, 1, 1]  # the dataset's codes: 1 = inter-video, 2 = intra-video
    metrics = egomcq_accuracy(logits, labels, types)
    assert metrics["intra_video_accuracy"] == 50.0 and metrics["num_intra_video"] == 2
    assert metrics["inter_video_accuracy"] == pytest.approx(200 / 3) and metrics["num_inter_video"] == 3


def egovlp_egomcq_metrics(preds: torch.Tensor, labels: torch.Tensor, types: torch.Tensor) -> dict[str, float]:
    """EgoVLP's EgoMCQ metric (showlab/EgoVLP, `model/metric.py`), restated: for each distinct type in sorted order,
    paired by position with the names "Intra-video" then "Inter-video", the percentage of that type's questions whose
    argmax candidate is the label."""
    names_in_order = ("Intra-video", "Inter-video")
    result = {}
    for type_value, name in zip(torch.unique(types).tolist(), names_in_order):
        hits = [int(torch.argmax(pred)) == int(label) for pred, label, kind in zip(preds, labels, types)
                if int(kind) == type_value]
        result[name] = 100 * sum(hits) / len(hits)
    return result


def test_egomcq_types_follow_the_dataset_not_egovlps_printed_names():
    # egomcq.json and EgoVLP's loader: 1 = inter-video, 2 = intra-video. EgoVLP's metric prints type 1's accuracy
    # as "Intra-video", so its "Intra-video" number is our inter-video accuracy and the reverse.
    logits = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([1, 0, 2, 0, 2])
    types = torch.tensor([1, 1, 1, 2, 2])  # inter: 3 of 3 right; intra: 0 of 2
    ours = egomcq_accuracy(logits, labels, types)
    egovlp = egovlp_egomcq_metrics(logits, labels, types)
    assert ours["inter_video_accuracy"] == egovlp["Intra-video"] == 100.0
    assert ours["intra_video_accuracy"] == egovlp["Inter-video"] == 0.0
    assert (ours["num_inter_video"], ours["num_intra_video"]) == (3, 2)


def test_egomcq_subset_with_one_setting_is_not_mislabelled():
    metrics = egomcq_accuracy(torch.tensor([[0.0, 1.0]]), [1], [1])
    assert metrics == {"inter_video_accuracy": 100.0, "num_inter_video": 1}
    metrics = egomcq_accuracy(torch.tensor([[0.0, 1.0]]), [1], [2])
    assert metrics == {"intra_video_accuracy": 100.0, "num_intra_video": 1}
    with pytest.raises(ValueError, match="Unknown EgoMCQ types"):
        egomcq_accuracy(torch.tensor([[0.0, 1.0]]), [1], [0])


def test_egomcq_duplicates_removed():
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    metrics = egomcq_accuracy(logits, [1, 1, 1], [1, 1, 1], ids=[10, 11, 10])
    assert metrics["inter_video_accuracy"] == 50.0 and metrics["num_inter_video"] == 2


def test_gather_rows_across_processes_is_identity_in_one_process():
    values = torch.arange(4)
    assert torch.equal(gather_rows_across_processes(values), values)


def _brute_force_rank(scores, positives, pessimistic):
    """Sort candidates by score (ties: non-ground-truth first if pessimistic), return the first ground truth's place."""
    ranks = []
    for row_scores, row_positives in zip(scores.tolist(), positives.tolist()):
        order = sorted(
            range(len(row_scores)),
            key=lambda j: (-row_scores[j], row_positives[j] if pessimistic else not row_positives[j]),
        )
        ranks.append(next(place for place, j in enumerate(order) if row_positives[j]))
    return ranks


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6).flatmap(
        lambda queries: st.integers(1, 6).flatmap(
            lambda candidates: st.tuples(
                st.lists(st.lists(st.integers(0, 3), min_size=candidates, max_size=candidates), min_size=queries, max_size=queries),
                st.lists(st.lists(st.booleans(), min_size=candidates, max_size=candidates), min_size=queries, max_size=queries),
            )
        )
    ),
    st.booleans(),
)
def test_ranks_match_a_brute_force_sort(case, pessimistic):
    scores, positives = torch.tensor(case[0], dtype=torch.float32), torch.tensor(case[1])
    positives[:, 0] |= ~positives.any(dim=1)  # every query needs a ground truth
    tie_break = "pessimistic" if pessimistic else "optimistic"
    assert retrieval_ranks(scores, positives, tie_break).tolist() == _brute_force_rank(scores, positives, pessimistic)


def test_nan_scores_are_an_error_not_a_perfect_rank():
    scores = torch.tensor([[float("nan"), 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_ranks(scores, torch.eye(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="NaN"):
        egomcq_accuracy(torch.tensor([[float("nan"), 0.0]]), [0], [1])


def test_ids_must_name_every_row_and_egomcq_labels_must_name_a_candidate():
    text_match, video_match = [0, 1, 2, 2], [0, 1, 2]
    scores = torch.randn(4, 3)
    with pytest.raises(ValueError, match="text_ids"):
        retrieval_metrics(scores, text_match, video_match, text_ids=[0, 1, 2])
    with pytest.raises(ValueError, match="video_ids"):
        retrieval_metrics(scores, text_match, video_match, video_ids=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="ids"):
        egomcq_accuracy(torch.eye(3), [0, 1, 2], [1, 1, 2], ids=[0, 1])
    with pytest.raises(ValueError, match="ids"):
        qa_accuracy(["a", "b"], ["a", "b"], ids=[0])
    with pytest.raises(ValueError, match="labels"):
        egomcq_accuracy(torch.eye(3), [0, 1, 7], [1, 1, 2])
