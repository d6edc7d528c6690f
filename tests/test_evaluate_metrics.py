"""The `evaluate` modules in `metrics/` load offline from a local path and return what the torch functions return."""

from pathlib import Path

import evaluate
import pytest
import torch

from svitt_tools.metrics import egomcq_accuracy, qa_accuracy, retrieval_metrics

METRICS_DIR = Path(__file__).resolve().parents[1] / "metrics"


def load(name: str, **kwargs):
    return evaluate.load(str(METRICS_DIR / name), **kwargs)


def test_retrieval_module_matches_the_torch_function():
    scores = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    text_to_video = [0, 0, 1, 2, 3, 3]
    metric = load("svitt_retrieval")
    # batches, as an evaluation loop would add them
    metric.add_batch(predictions=scores[:4].tolist(), references=[[v] for v in text_to_video[:4]])
    metric.add_batch(predictions=scores[4:].tolist(), references=[[v] for v in text_to_video[4:]])
    result = metric.compute(ks=[1, 3])
    expected = retrieval_metrics(scores, text_to_video, [0, 1, 2, 3], ks=(1, 3))
    assert result.keys() == expected.keys()
    for key in expected:
        assert result[key] == pytest.approx(expected[key], abs=1e-4), key


def test_retrieval_module_drops_duplicated_queries():
    scores = torch.randn(3, 3, generator=torch.Generator().manual_seed(1))
    metric = load("svitt_retrieval", config_name="with_ids")
    predictions = scores[[0, 1, 2, 0]].tolist()
    result = metric.compute(predictions=predictions, references=[[0], [1], [2], [0]], text_ids=[0, 1, 2, 0])
    expected = retrieval_metrics(scores)
    assert result["t2v_R@1"] == pytest.approx(expected["t2v_R@1"]) and result["v2t_MnR"] == pytest.approx(expected["v2t_MnR"])



@pytest.mark.parametrize("bad", [-1, 3])
def test_retrieval_module_rejects_video_indices_outside_the_gallery(bad):
    metric = load("svitt_retrieval")
    with pytest.raises(ValueError, match="outside"):
        metric.compute(predictions=[[0.9, 0.1, 0.0], [0.2, 0.8, 0.0]], references=[[0], [bad]])

def test_qa_module_strings_lists_and_indices():
    metric = load("svitt_qa_accuracy")
    assert metric.compute(predictions=["dog", "cat"], references=["dog", "bird"]) == qa_accuracy(["dog", "cat"], ["dog", "bird"])
    assert metric.compute(predictions=["a", "b"], references=[["a"], ["c", "b"]])["accuracy"] == 100.0
    assert metric.compute(predictions=[1, 2, 3], references=[1, 2, 0])["accuracy"] == pytest.approx(200 / 3)
    with_ids = load("svitt_qa_accuracy", config_name="with_ids")
    assert with_ids.compute(predictions=["x", "y", "x"], references=["x", "z", "x"], ids=[7, 8, 7])["accuracy"] == 50.0


def test_egomcq_module_matches_the_torch_function():
    logits = torch.randn(8, 5, generator=torch.Generator().manual_seed(2))
    labels = [0, 1, 2, 3, 4, 0, 1, 2]
    types = [1, 2, 1, 2, 1, 2, 1, 2]
    metric = load("svitt_egomcq")
    result = metric.compute(predictions=logits.tolist(), references=labels, types=types)
    assert result == pytest.approx(egomcq_accuracy(logits, labels, types))
