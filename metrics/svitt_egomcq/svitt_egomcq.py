"""`evaluate` module for EgoMCQ accuracy (inter-video and intra-video), following the official scoring.

Load it offline from this folder: `evaluate.load("path/to/metrics/svitt_egomcq")`. The computation is
`svitt_tools.metrics.egomcq_accuracy`, the same function the plain-torch path uses; the package must be
importable (`pip install svitt`, or run from the repository root).
"""

import datasets
import evaluate
import torch

import svitt_tools.metrics  # From: svitt

_DESCRIPTION = """
EgoMCQ (EgoVLP): one narration and five candidate clips per question; the prediction is the argmax of the
candidates' scores (first maximum on ties). Accuracy is reported separately for the inter-video setting
(`types` = 1, candidates from different videos) and the intra-video setting (`types` = 2, candidates from the
same video), the codes of `egomcq.json` and EgoVLP's loader. EgoVLP's own metric prints these two numbers under
each other's names (it pairs the sorted types with "Intra-video", "Inter-video"); this module does not.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[float]]`): the score of every candidate clip, per question.
    references (`list[int]`): the index of the correct candidate.
    types (`list[int]`): 1 for inter-video questions, 2 for intra-video questions.
    ids (`list[int]`, only with `config_name="with_ids"`): question ids; repeated ids (padding of a distributed
        sampler) are dropped, keeping the first.
Returns:
    `inter_video_accuracy` / `intra_video_accuracy` (percent) and `num_inter_video` / `num_intra_video`, for the
    settings present.
Examples:
    >>> metric = evaluate.load("metrics/svitt_egomcq")
    >>> metric.compute(predictions=[[0.1, 0.9], [0.8, 0.2]], references=[1, 1], types=[2, 1])
    {'inter_video_accuracy': 0.0, 'num_inter_video': 1, 'intra_video_accuracy': 100.0, 'num_intra_video': 1}
"""

_CITATION = """
@inproceedings{lin2022egovlp,
  title={Egocentric Video-Language Pretraining},
  author={Lin, Kevin Qinghong and others},
  booktitle={NeurIPS},
  year={2022}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SvittEgomcq(evaluate.Metric):
    def _info(self):
        features = {
            "predictions": datasets.Sequence(datasets.Value("float32")),
            "references": datasets.Value("int64"),
            "types": datasets.Value("int64"),
        }
        if self.config_name == "with_ids":
            features["ids"] = datasets.Value("int64")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(features),
        )

    def _compute(self, predictions, references, types, ids=None):
        logits = torch.tensor(predictions, dtype=torch.float32)
        return svitt_tools.metrics.egomcq_accuracy(logits, references, types, ids=ids)
