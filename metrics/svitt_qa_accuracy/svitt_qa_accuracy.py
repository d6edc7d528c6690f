"""`evaluate` module for video QA accuracy (exact match, as the SViTT release scores MSRVTT-QA / ANet-QA / AGQA).

Load it offline from this folder: `evaluate.load("path/to/metrics/svitt_qa_accuracy")`. The computation is
`svitt_tools.metrics.qa_accuracy`, the same function the plain-torch path uses; the package must be
importable (`pip install svitt`, or run from the repository root).
"""

import datasets
import evaluate

import svitt_tools.metrics  # From: svitt

_DESCRIPTION = """
Exact-match accuracy (percent) of predicted answers against the ground truth of every question. Answers may be
strings or indices into the answer list; a reference may list several acceptable answers.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]` or `list[int]`): the predicted answer of every question.
    references (`list[str]`, `list[list[str]]` or `list[int]`): the ground truth (or acceptable answers).
    ids (`list[int]`, only with `config_name="with_ids"`): question ids; repeated ids (padding of a distributed
        sampler) are dropped, keeping the first.
Returns:
    `accuracy`: percentage of questions answered correctly.
Examples:
    >>> metric = evaluate.load("metrics/svitt_qa_accuracy")
    >>> metric.compute(predictions=["dog", "cat"], references=["dog", "bird"])
    {'accuracy': 50.0}
"""

_CITATION = """
@inproceedings{li2023svitt,
  title={SViTT: Temporal Learning of Sparse Video-Text Transformers},
  author={Li, Yi and Min, Kyle and Tripathi, Subarna and Vasconcelos, Nuno},
  booktitle={CVPR},
  year={2023}
}
"""


def _features(prediction, reference, with_ids):
    features = {"predictions": prediction, "references": reference}
    if with_ids:
        features["ids"] = datasets.Value("int64")
    return datasets.Features(features)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SvittQaAccuracy(evaluate.Metric):
    def _info(self):
        with_ids = self.config_name == "with_ids"
        string = datasets.Value("string")
        integer = datasets.Value("int64")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                _features(string, string, with_ids),
                _features(string, datasets.Sequence(string), with_ids),
                _features(integer, integer, with_ids),
            ],
        )

    def _compute(self, predictions, references, ids=None):
        return svitt_tools.metrics.qa_accuracy(predictions, references, ids=ids)
