"""`evaluate` module for text-video retrieval metrics (R@K, median and mean rank, both directions).

Load it offline from this folder: `evaluate.load("path/to/metrics/svitt_retrieval")`. The computation is
`svitt_tools.metrics.retrieval_metrics`, the same function the plain-torch path uses; the package must be
importable (`pip install svitt`, or run from the repository root).
"""

import datasets
import evaluate
import torch

import svitt_tools.metrics  # From: svitt

_DESCRIPTION = """
Text-to-video and video-to-text retrieval metrics as reported for SViTT: recall at K (percent), median rank
(MedR) and mean rank (MnR), with any number of ground-truth videos per text and texts per video. For every
query the best-ranked ground truth counts. Each prediction is one text query's scores against every video of
the gallery (higher = more similar); its reference lists the indices of the videos that match it.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[float]]`): one row per text, the scores of that text against every video.
    references (`list[list[int]]`): for every text, the indices (columns) of its ground-truth videos.
    text_ids (`list[int]`, only with `config_name="with_ids"`): sample id of every text; repeated ids (padding of
        a distributed sampler) are dropped, keeping the first.
    video_ids (`list[int]`, optional): sample id of every column, to drop repeated videos the same way.
    scores_v2t (`list[list[float]]`, optional): video-to-text scores `(num_videos, num_texts)` when they differ
        from the transpose (ITM re-ranking re-scores each direction's own top-k).
    ks (`list[int]`, optional, defaults to `[1, 5, 10]`): the K of R@K.
    tie_break (`str`, optional, defaults to `"pessimistic"`): a non-matching candidate tied with the best ground
        truth counts as ranked above it ("pessimistic") or below it ("optimistic").
Returns:
    `t2v_R@K`, `t2v_MedR`, `t2v_MnR`, `t2v_R_mean`, the same for `v2t_`, and `R_mean`.
Examples:
    >>> metric = evaluate.load("metrics/svitt_retrieval")
    >>> metric.compute(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[[0], [1]])["t2v_R@1"]
    100.0
"""

_CITATION = """
@inproceedings{li2023svitt,
  title={SViTT: Temporal Learning of Sparse Video-Text Transformers},
  author={Li, Yi and Min, Kyle and Tripathi, Subarna and Vasconcelos, Nuno},
  booktitle={CVPR},
  year={2023}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SvittRetrieval(evaluate.Metric):
    def _info(self):
        features = {
            "predictions": datasets.Sequence(datasets.Value("float32")),
            "references": datasets.Sequence(datasets.Value("int64")),
        }
        if self.config_name == "with_ids":
            features["text_ids"] = datasets.Value("int64")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(features),
        )

    def _compute(
        self,
        predictions,
        references,
        text_ids=None,
        video_ids=None,
        scores_v2t=None,
        ks=(1, 5, 10),
        tie_break="pessimistic",
    ):
        scores = torch.tensor(predictions, dtype=torch.float32)
        if scores.dim() != 2:
            raise ValueError("Every prediction must hold one score per video (the same videos for every text).")
        positives = torch.zeros(scores.shape, dtype=torch.bool)
        num_videos = scores.shape[1]
        for row, videos in enumerate(references):
            videos = list(videos)
            if any(not 0 <= video < num_videos for video in videos):
                # a negative index would silently wrap around to a video at the end of the gallery
                raise ValueError(f"Text {row}: ground-truth video indices {videos} outside 0..{num_videos - 1}.")
            positives[row, videos] = True
        return svitt_tools.metrics.retrieval_metrics(
            scores,
            positives=positives,
            scores_v2t=None if scores_v2t is None else torch.as_tensor(scores_v2t, dtype=torch.float32),
            text_ids=text_ids,
            video_ids=video_ids,
            ks=tuple(ks),
            tie_break=tie_break,
        )
