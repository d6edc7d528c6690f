"""Worker of the two-process (gloo) DDP test: every head trains two steps with `find_unused_parameters=False`."""

from __future__ import annotations

import traceback
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from helpers.tiny_configs import tiny_config

BATCH, FRAMES = 3, 2


def _videos(generator, *leading):
    return torch.randn(*leading, FRAMES, 3, 32, 32, generator=generator)


def _captions(generator, batch=BATCH, length=6):
    ids = torch.randint(5, 100, (batch, length), generator=generator)
    ids[:, 0] = 2
    return ids, torch.ones_like(ids)


def cases():
    """(name, model class, config overrides, inputs(generator) -> kwargs, whether to freeze unused parameters)."""
    from modeling_svitt import (
        SViTTForMultipleChoice,
        SViTTForPreTraining,
        SViTTForVideoQuestionAnswering,
        SViTTForVideoTextRetrieval,
        SViTTModel,
    )

    def contrastive(generator):
        ids, mask = _captions(generator)
        return dict(pixel_values=_videos(generator, BATCH), input_ids=ids, attention_mask=mask,
                    match_ids=torch.arange(BATCH))

    def base(generator):
        return {**contrastive(generator), "return_loss": True}

    def qa(generator):
        ids, mask = _captions(generator)
        answers, answer_mask = _captions(generator, length=4)
        return dict(pixel_values=_videos(generator, BATCH), input_ids=ids, attention_mask=mask,
                    answer_input_ids=answers, answer_attention_mask=answer_mask)

    def multiple_choice(generator):
        ids, mask = _captions(generator)
        return dict(pixel_values=_videos(generator, BATCH, 3), input_ids=ids, attention_mask=mask,
                    labels=torch.randint(0, 3, (BATCH,), generator=generator))

    return [
        ("model", SViTTModel, {}, base, True),
        ("pretraining", SViTTForPreTraining, {}, contrastive, True),
        ("pretraining-no-mlm", SViTTForPreTraining, {"loss_weight_mlm": 0.0}, contrastive, True),
        ("pretraining-itc-only", SViTTForPreTraining, {"loss_weight_mlm": 0.0, "loss_weight_itm": 0.0}, contrastive,
         True),
        ("retrieval", SViTTForVideoTextRetrieval, {}, base, True),
        ("retrieval-itc-only", SViTTForVideoTextRetrieval, {"loss_weight_itm": 0.0}, base, True),
        ("qa", SViTTForVideoQuestionAnswering, {}, qa, True),
        ("multiple-choice-itc", SViTTForMultipleChoice, {"multiple_choice_scoring": "itc"}, multiple_choice, True),
        ("multiple-choice-itm", SViTTForMultipleChoice, {"multiple_choice_scoring": "itm"}, multiple_choice, True),
        ("model-not-frozen", SViTTModel, {}, base, False),  # the control: DDP must complain
    ]


def run(rank: int, init_file: str, result_dir: str) -> None:
    from training.building import freeze_unused_parameters

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    results = {}
    try:
        for name, model_class, overrides, inputs, freeze in cases():
            torch.manual_seed(0)
            model = model_class(tiny_config(**overrides)).train()
            if freeze:
                freeze_unused_parameters(model)
            ddp = DistributedDataParallel(model, find_unused_parameters=False)
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
            generator = torch.Generator().manual_seed(100 + rank)  # each rank its own data
            try:
                for _ in range(2):
                    ddp(**inputs(generator)).loss.backward()
                    optimizer.step()
                    optimizer.zero_grad()
                flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
                gathered = [torch.empty_like(flat) for _ in range(2)]
                dist.all_gather(gathered, flat)
                results[name] = {"ok": True, "same_weights": torch.equal(gathered[0], gathered[1])}
            except RuntimeError as error:
                results[name] = {"ok": False, "error": str(error)[:500]}
                break  # DDP's state is broken after such an error; the control case is last
    except Exception:  # noqa: BLE001  (reported to the test)
        results["crash"] = {"ok": False, "error": traceback.format_exc()}
    finally:
        torch.save(results, Path(result_dir) / f"rank{rank}.pt")
        dist.destroy_process_group()
