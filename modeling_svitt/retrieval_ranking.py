"""Ranking a text gallery against a video gallery the way the release evaluates retrieval.

1. Encode every test video clip by clip (`encode_video_gallery`) and every caption (`encode_text_gallery`),
   keeping only what ranking needs, on a storage device, so accelerator memory stays bounded.
2. ITC for all pairs (cosine similarity averaged over each video's clips, `itc_scores`).
3. ITM re-ranking in both directions of each query's top-k candidates (`itm_pair_scores`, `rank_galleries`).

The functions take a [`SViTTForVideoTextRetrieval`] (or any head with `svitt` and `itm_head`); the head exposes
them as its methods `encode_videos`, `encode_texts`, `itc_scores`, `itm_pair_scores`, `rank` and `retrieve`.
"""

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers.utils import ModelOutput

from .clip_ensemble import CLIP_AGGREGATIONS, aggregate_clips, split_into_clips
from .losses import similarity_logits

if TYPE_CHECKING:  # the heads import this module, so it names their base class, never a head
    from .modeling_common import SViTTPreTrainedModel

ITM_SCORES = ("positive_logit", "match_log_prob")


@dataclass
class SViTTVideoGallery(ModelOutput):
    r"""
    Pre-computed video features for ranking (see [`SViTTForVideoTextRetrieval.encode_videos`]).

    embeds (`(num_videos, num_clips, embed_dim)`): L2-normalised ITC embedding of every clip.
    tokens (`(num_videos, num_clips, num_tokens, hidden_size)`): fusion tokens of every clip.
    token_mask (`(num_videos, num_clips, num_tokens)`): video token mask (all ones).
    """

    embeds: torch.FloatTensor | None = None
    tokens: torch.FloatTensor | None = None
    token_mask: torch.LongTensor | None = None


@dataclass
class SViTTTextGallery(ModelOutput):
    r"""
    Pre-computed text features for ranking (see [`SViTTForVideoTextRetrieval.encode_texts`]).

    embeds (`(num_texts, embed_dim)`): L2-normalised ITC embeddings.
    hidden_states (`(num_texts, sequence_length, hidden_size)`): text-layer outputs (fusion-layer input).
    attention_mask (`(num_texts, sequence_length)`): padding mask.
    """

    embeds: torch.FloatTensor | None = None
    hidden_states: torch.FloatTensor | None = None
    attention_mask: torch.LongTensor | None = None


@dataclass
class SViTTRetrievalOutput(ModelOutput):
    r"""
    Result of ranking a text gallery against a video gallery.

    scores_t2v (`(num_texts, num_videos)`): final text-to-video scores (ITM re-ranked where candidates).
    scores_v2t (`(num_videos, num_texts)`): final video-to-text scores (each direction re-ranks its own top-k).
    itc_scores_t2v (`(num_texts, num_videos)`): cosine similarities averaged over clips (the first stage).
    candidates_t2v (`(num_texts, num_videos)` bool), candidates_v2t (`(num_videos, num_texts)` bool):
        The pairs that were re-scored by ITM.
    """

    scores_t2v: torch.FloatTensor | None = None
    scores_v2t: torch.FloatTensor | None = None
    itc_scores_t2v: torch.FloatTensor | None = None
    candidates_t2v: torch.BoolTensor | None = None
    candidates_v2t: torch.BoolTensor | None = None


def _iterate_video_batches(videos, batch_size: int) -> Iterator[torch.Tensor]:
    """Yield `pixel_values` batches from a tensor (cut into `batch_size` chunks) or from an iterable of batches."""
    if isinstance(videos, torch.Tensor):
        for start in range(0, videos.shape[0], batch_size):
            yield videos[start : start + batch_size]
        return
    for batch in videos:
        if isinstance(batch, dict) or hasattr(batch, "keys"):
            batch = batch["pixel_values"]
        yield batch


def itm_match_scores(itm_logits: torch.Tensor, itm_score: str) -> torch.Tensor:
    if itm_score == "positive_logit":
        return itm_logits[:, 1]
    if itm_score == "match_log_prob":
        return itm_logits.float().log_softmax(dim=-1)[:, 1]
    raise ValueError(f"`itm_score` must be one of {ITM_SCORES}, got {itm_score!r}.")


@torch.no_grad()
def encode_video_gallery(
    model: "SViTTPreTrainedModel",
    videos,
    *,
    clip_sampling: str = "consecutive",
    batch_size: int = 16,
    storage_device: torch.device | str | None = "cpu",
    storage_dtype: torch.dtype | None = None,
    seed: int | None = None,
) -> SViTTVideoGallery:
    """Encode test videos for ranking, clip by clip, keeping only what ranking needs.

    Args:
        videos: `(num_videos, K * T, C, H, W)` pixel values (cut into batches of `batch_size`), or an iterable
            of such batches (or of dicts with `pixel_values`, e.g. a `DataLoader`). Videos longer than the
            model's clip length `T` are cut into K clips (`clip_sampling`: "consecutive" or "strided").
        storage_device, storage_dtype: where and how the features are kept (default: CPU, model dtype), so
            that accelerator memory stays bounded by one batch whatever the gallery size.
        seed: draw the random attention blocks of every batch from a generator with this seed. By default the
            video tower's own rule applies: in eval mode with `vision_config.deterministic_eval` (the default)
            every forward re-seeds with `random_block_seed`, so a video's features do not depend on the batch it
            was encoded in; with `deterministic_eval=False` patterns are fresh, as the release draws them.
    """
    num_frames = model.config.vision_config.num_frames
    device = model.device
    embeds, tokens, masks = [], [], []
    for batch in _iterate_video_batches(videos, batch_size):
        clips, num_clips = split_into_clips(batch.to(device), num_frames, clip_sampling)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        encoding = model.svitt.encode_video(clips, generator=generator)
        count = clips.shape[0] // num_clips
        store = {"device": storage_device} if storage_device is not None else {}
        embeds.append(encoding.embeds.reshape(count, num_clips, -1).to(**store))
        tokens.append(
            encoding.tokens.reshape(count, num_clips, *encoding.tokens.shape[1:]).to(dtype=storage_dtype, **store)
        )
        masks.append(encoding.token_mask.reshape(count, num_clips, -1).to(**store))
    if not embeds:
        raise ValueError("No videos to encode.")
    return SViTTVideoGallery(embeds=torch.cat(embeds), tokens=torch.cat(tokens), token_mask=torch.cat(masks))


@torch.no_grad()
def encode_text_gallery(
    model: "SViTTPreTrainedModel",
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    batch_size: int = 256,
    storage_device: torch.device | str | None = "cpu",
    storage_dtype: torch.dtype | None = None,
) -> SViTTTextGallery:
    """Encode captions for ranking: ITC embeddings plus the text-layer states the fusion layers need."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    device = model.device
    store = {"device": storage_device} if storage_device is not None else {}
    embeds, hidden = [], []
    for start in range(0, input_ids.shape[0], batch_size):
        encoding = model.svitt.encode_text(
            input_ids[start : start + batch_size].to(device), attention_mask[start : start + batch_size].to(device)
        )
        embeds.append(encoding.embeds.to(**store))
        hidden.append(encoding.hidden_states.to(dtype=storage_dtype, **store))
    if not embeds:
        raise ValueError("No texts to encode.")
    return SViTTTextGallery(
        embeds=torch.cat(embeds), hidden_states=torch.cat(hidden), attention_mask=attention_mask.to(**store)
    )


@torch.no_grad()
def itc_scores(
    model: "SViTTPreTrainedModel", videos: SViTTVideoGallery, texts: SViTTTextGallery, chunk_size: int = 1024
) -> torch.Tensor:
    """`(num_texts, num_videos)` cosine similarities, averaged over each video's clips (no temperature)."""
    device = model.device
    text_embeds = texts.embeds.to(device)
    rows = []
    for start in range(0, videos.embeds.shape[0], chunk_size):
        video_embeds = videos.embeds[start : start + chunk_size]
        cosine = similarity_logits(text_embeds, video_embeds.flatten(0, 1), 1.0).unflatten(1, video_embeds.shape[:2])
        rows.append(cosine.mean(dim=-1).to(texts.embeds.device))
    return torch.cat(rows, dim=1)


@torch.no_grad()
def itm_pair_scores(
    model: "SViTTPreTrainedModel",
    videos: SViTTVideoGallery,
    texts: SViTTTextGallery,
    text_indices: torch.Tensor,
    video_indices: torch.Tensor,
    *,
    clip_aggregation: str = "lse",
    itm_score: str = "positive_logit",
    batch_size: int = 128,
) -> torch.Tensor:
    """ITM score of the pairs `(text_indices[i], video_indices[i])`, each clip fused and the clips combined.

    `batch_size` counts fusion rows (pairs x clips) per forward, which bounds memory.
    """
    device = model.device
    num_clips = videos.tokens.shape[1]
    pairs_per_batch = max(1, batch_size // num_clips)
    scores = []
    for start in range(0, text_indices.numel(), pairs_per_batch):
        t = text_indices[start : start + pairs_per_batch].to(texts.hidden_states.device)
        v = video_indices[start : start + pairs_per_batch].to(videos.tokens.device)
        count = t.numel()
        # galleries may be stored in a smaller dtype; compute in the model's
        text_hidden = texts.hidden_states[t].to(device, model.dtype).repeat_interleave(num_clips, dim=0)
        text_mask = texts.attention_mask[t.to(texts.attention_mask.device)].to(device)
        text_mask = text_mask.repeat_interleave(num_clips, dim=0)
        video_tokens = videos.tokens[v].to(device, model.dtype).flatten(0, 1)
        video_mask = videos.token_mask[v.to(videos.token_mask.device)].to(device).flatten(0, 1)
        fusion = model.svitt.fuse(text_hidden, text_mask, video_tokens, video_mask)
        logits = model.itm_head(fusion.last_hidden_state[:, 0])
        per_clip = itm_match_scores(logits, itm_score).float().reshape(count, num_clips)
        scores.append(aggregate_clips(per_clip, clip_aggregation).cpu())
    if not scores:
        return torch.empty(0)
    return torch.cat(scores)


@torch.no_grad()
def rank_galleries(
    model: "SViTTPreTrainedModel",
    videos: SViTTVideoGallery,
    texts: SViTTTextGallery,
    *,
    k: int = 128,
    use_itm: bool = True,
    clip_aggregation: str = "lse",
    itm_score: str = "positive_logit",
    itm_batch_size: int = 128,
    non_candidate_fill: str | float = "itc",
    fusion_token_keep_rate: float | None = None,
    fusion_token_drop_layers: Iterable[int] | None = None,
    fusion_token_keep_strategy: str | None = None,
    pair_scorer: Callable[..., torch.Tensor] | None = None,
) -> SViTTRetrievalOutput:
    """Rank every text against every video the way the release evaluates.

    1. ITC for all pairs (cosine similarity averaged over each video's clips).
    2. With `use_itm`, ITM re-ranking in both directions: each text's top-`k` videos and each video's top-`k`
       texts by ITC are re-scored by the fusion layers + ITM head, per clip, and the clips combined with
       `clip_aggregation` ("lse", "mean", "max"). A pair that is a candidate in both directions is fused once.
    3. Non-candidates stay below every candidate of their row. `non_candidate_fill="itc"` keeps them in ITC
       order (so ranks beyond k, mean and median rank stay meaningful); a number fills them with that
       constant (the release uses -100).

    Args:
        itm_score: "positive_logit" (the release: raw class-1 logit) or "match_log_prob" (log p(match)).
        itm_batch_size: fusion rows (pairs x clips) per forward; bounds memory for any gallery size.
        fusion_token_keep_rate, fusion_token_drop_layers, fusion_token_keep_strategy: switch on (or change)
            text-guided video token selection in the fusion layers for this ranking only (`None` keeps the
            model's; see [`~SViTTPreTrainedModel.sparsity_overrides`]).
        pair_scorer: replaces `itm_pair_scores` (same arguments and result), e.g. to share the pairs among
            processes and gather their scores.

    The result is deterministic and does not depend on how the galleries were batched.
    """
    if clip_aggregation not in CLIP_AGGREGATIONS:
        raise ValueError(f"`clip_aggregation` must be one of {CLIP_AGGREGATIONS}, got {clip_aggregation!r}.")
    itc = itc_scores(model, videos, texts).float().cpu()
    num_texts, num_videos = itc.shape
    if not use_itm or k <= 0:
        no_candidates = torch.zeros_like(itc, dtype=torch.bool)
        return SViTTRetrievalOutput(itc, itc.T.clone(), itc, no_candidates, no_candidates.T.clone())

    k_t2v, k_v2t = min(k, num_videos), min(k, num_texts)
    candidates_t2v = torch.zeros_like(itc, dtype=torch.bool)
    candidates_t2v.scatter_(1, itc.topk(k_t2v, dim=1).indices, True)
    candidates_v2t = torch.zeros(num_videos, num_texts, dtype=torch.bool)
    candidates_v2t.scatter_(1, itc.T.topk(k_v2t, dim=1).indices, True)
    # Scores do not depend on the direction, so every pair needed by either direction is fused once.
    needed = candidates_t2v | candidates_v2t.T
    text_indices, video_indices = needed.nonzero(as_tuple=True)
    # text-guided selection (the paper's S_M) has no parameters: a model trained without it can rank with it
    with model.svitt.sparsity_overrides(
        fusion_token_keep_rate=fusion_token_keep_rate,
        fusion_token_drop_layers=fusion_token_drop_layers,
        fusion_token_keep_strategy=fusion_token_keep_strategy,
    ):
        pair_scores = (pair_scorer or itm_pair_scores)(
            model,
            videos,
            texts,
            text_indices,
            video_indices,
            clip_aggregation=clip_aggregation,
            itm_score=itm_score,
            batch_size=itm_batch_size,
        )
    itm = torch.zeros_like(itc)
    itm[text_indices, video_indices] = pair_scores
    scores_t2v = _fill_non_candidates(itm, itc, candidates_t2v, non_candidate_fill)
    scores_v2t = _fill_non_candidates(itm.T, itc.T, candidates_v2t, non_candidate_fill)
    return SViTTRetrievalOutput(scores_t2v, scores_v2t, itc, candidates_t2v, candidates_v2t)


def _fill_non_candidates(
    itm: torch.Tensor, itc: torch.Tensor, candidates: torch.Tensor, fill: str | float
) -> torch.Tensor:
    if fill != "itc":
        return torch.where(candidates, itm, torch.full_like(itm, float(fill)))
    lowest_candidate = itm.masked_fill(~candidates, float("inf")).min(dim=1, keepdim=True).values
    highest_itc = itc.masked_fill(candidates, float("-inf")).max(dim=1, keepdim=True).values
    # Shift each row's ITC scores so that the best non-candidate lands 1 below the worst candidate.
    shifted = itc - highest_itc + lowest_candidate - 1.0
    return torch.where(candidates, itm, shifted)


@torch.no_grad()
def retrieve(
    model: "SViTTPreTrainedModel",
    pixel_values,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    clip_sampling: str = "consecutive",
    video_batch_size: int = 16,
    text_batch_size: int = 256,
    storage_device: torch.device | str | None = "cpu",
    **rank_kwargs,
) -> SViTTRetrievalOutput:
    """`encode_videos` + `encode_texts` + `rank` in one call (keyword arguments of `rank` pass through)."""
    videos = encode_video_gallery(
        model, pixel_values, clip_sampling=clip_sampling, batch_size=video_batch_size, storage_device=storage_device
    )
    texts = encode_text_gallery(
        model, input_ids, attention_mask, batch_size=text_batch_size, storage_device=storage_device
    )
    return rank_galleries(model, videos, texts, **rank_kwargs)


__all__ = [
    "ITM_SCORES",
    "SViTTRetrievalOutput",
    "SViTTTextGallery",
    "SViTTVideoGallery",
    "encode_text_gallery",
    "encode_video_gallery",
    "itc_scores",
    "itm_match_scores",
    "itm_pair_scores",
    "rank_galleries",
    "retrieve",
]
