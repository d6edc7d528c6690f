import os
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers.tiny_configs import tiny_config, tiny_text_config, tiny_vision_config

from modeling_svitt import SViTTModel, SViTTTextModel, SViTTVisionModel
from modeling_svitt.sparse_attention import load_random_block_patterns, save_random_block_patterns
from modeling_svitt.token_selection import num_tokens_to_keep


def video(batch=2, frames=2, seed=0):
    return torch.randn(batch, frames, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def text(batch=2, length=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (batch, length), generator=generator)
    ids[:, 0] = 2
    mask = torch.ones_like(ids)
    mask[-1, length - 2 :] = 0
    return ids.masked_fill(mask == 0, 0), mask


@pytest.fixture
def model():
    torch.manual_seed(0)
    return SViTTModel(tiny_config()).eval()


def test_kept_token_counts_of_the_release_curriculum():
    def counts(tokens, rate):
        kept = [tokens]
        for _ in range(3):
            kept.append(num_tokens_to_keep(kept[-1], rate))
        return kept

    assert counts(784, 0.7) == [784, 549, 385, 270]
    assert counts(1568, 0.6) == [1568, 941, 565, 339]
    assert counts(3136, 0.5) == [3136, 1568, 784, 392]


def test_video_tower_prunes_and_reports_original_positions():
    torch.manual_seed(0)
    tower = SViTTVisionModel(tiny_vision_config(num_hidden_layers=3, token_drop_layers=[0, 1])).eval()
    output = tower(video(), output_attentions=True, output_hidden_states=True)
    assert [h.shape[1] for h in output.hidden_states] == [33, 24, 18, 18]  # 32 -> 23 -> 17 patches + [CLS]
    assert [a.shape for a in output.attentions] == [(2, 4, 1, 33), (2, 4, 1, 24), (2, 4, 1, 18)]
    first, second = output.kept_token_indices
    assert first.shape == (2, 23) and second.shape == (2, 17)
    for kept in (first, second):
        assert torch.equal(kept, kept.sort(dim=1).values) and kept.max() < 32
    assert all(set(b.tolist()) <= set(a.tolist()) for a, b in zip(first, second))
    assert output.last_hidden_state.shape == (2, 18, 32) and output.pooler_output.shape == (2, 32)
    # cls_attn pruning keeps the tokens the [CLS] query attends to most
    scores = output.attentions[0][:, :, 0, 1:].mean(1)
    assert torch.equal(first, scores.topk(23, dim=1).indices.sort(dim=1).values)


def test_evaluation_is_deterministic_and_training_draws_fresh_patterns(model):
    pixels = video()
    with torch.no_grad():
        first, second = model.vision_model(pixels), model.vision_model(pixels)
    assert torch.equal(first.last_hidden_state, second.last_hidden_state)
    model.train()
    torch.manual_seed(1)
    patterns = {tuple(torch.cat(model.vision_model(pixels).random_blocks).flatten().tolist()) for _ in range(6)}
    assert len(patterns) > 1


def test_recorded_patterns_replay_exactly(model, tmp_path):
    pixels = video()
    model.train()  # fresh patterns, drawn from the global RNG
    torch.manual_seed(3)
    recorded = model.vision_model(pixels)
    save_random_block_patterns(recorded.random_blocks, tmp_path / "patterns.safetensors")
    replay = load_random_block_patterns(tmp_path / "patterns.safetensors")
    torch.manual_seed(4)
    replayed = model.vision_model(pixels, random_blocks=replay)
    assert torch.equal(recorded.last_hidden_state, replayed.last_hidden_state)
    generator_runs = [model.vision_model(pixels, generator=torch.Generator().manual_seed(9)) for _ in range(2)]
    assert torch.equal(generator_runs[0].last_hidden_state, generator_runs[1].last_hidden_state)


def test_dual_encoder_outputs(model):
    ids, mask = text()
    output = model(video(), ids, attention_mask=mask, match_ids=torch.tensor([0, 1]), return_loss=True)
    assert output.logits_per_video.shape == (2, 2) and torch.equal(output.logits_per_text, output.logits_per_video.T)
    torch.testing.assert_close(output.video_embeds.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(output.logits_per_video, output.video_embeds @ output.text_embeds.T / model.temperature)
    assert output.loss.ndim == 0 and output.loss > 0
    as_tuple = model(video(), ids, attention_mask=mask, return_dict=False)
    torch.testing.assert_close(as_tuple[0], output.logits_per_video)
    torch.testing.assert_close(model.get_video_features(video()).pooler_output, output.video_embeds)
    torch.testing.assert_close(model.get_text_features(ids, mask).pooler_output, output.text_embeds)


def test_padding_does_not_change_text_features(model):
    ids, mask = text(batch=1, length=5)
    padded_ids = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model.get_text_features(ids, mask).pooler_output, model.get_text_features(padded_ids, padded_mask).pooler_output, atol=1e-6, rtol=1e-6)


def test_temperature_is_clamped_in_training(model):
    with torch.no_grad():
        model.temperature.fill_(2.0)
    model.train()
    model(video(), text()[0])
    assert model.temperature.item() == pytest.approx(0.5)


def test_text_tower_modes_compose():
    torch.manual_seed(0)
    tower = SViTTTextModel(tiny_text_config()).eval()
    ids, mask = text()
    tokens = torch.randn(2, 9, 32)
    text_only = tower(ids, mask).last_hidden_state
    fused = tower(text_hidden_states=text_only, attention_mask=mask, encoder_hidden_states=tokens).last_hidden_state
    full = tower(ids, mask, encoder_hidden_states=tokens).last_hidden_state
    torch.testing.assert_close(full, fused)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        tower(text_hidden_states=text_only, attention_mask=mask)


def test_text_guided_selection_keeps_the_tokens_text_cls_attends_to():
    torch.manual_seed(0)
    config = tiny_text_config(fusion_token_keep_rate=0.5, fusion_token_drop_layers=[0], num_hidden_layers=4)
    tower = SViTTTextModel(config).eval()
    ids, mask = text()
    states = tower(ids, mask).last_hidden_state
    tokens = torch.randn(2, 11, 32)  # [CLS] + 10 video tokens
    output = tower(text_hidden_states=states, attention_mask=mask, encoder_hidden_states=tokens, output_attentions=True)
    (kept,) = output.kept_video_token_indices
    assert kept.shape == (2, 5)
    scores = output.cross_attentions[0].mean(1)[:, 0, 1:]
    assert torch.equal(kept, scores.topk(5, dim=1).indices.sort(dim=1).values)
    assert output.cross_attentions[1].shape[-1] == 6  # the next fusion layer sees [CLS] + 5 tokens
    off = SViTTTextModel(tiny_text_config(num_hidden_layers=4)).eval()
    off.load_state_dict(tower.state_dict())
    assert off(text_hidden_states=states, attention_mask=mask, encoder_hidden_states=tokens).kept_video_token_indices is None


@pytest.mark.parametrize(
    "vision",
    [
        {"mask_padded_keys": True},
        {"prune_after_mlp": False},
        {"num_local_blocks": 3, "num_random_blocks": 1},
        {"use_sparse_attention": False},
        {"token_keep_strategy": "random"},
        {"num_global_tokens": 2},
    ],
)
def test_configuration_variants_run_and_backpropagate(vision):
    torch.manual_seed(0)
    model = SViTTModel(tiny_config(vision=vision)).train()
    ids, mask = text()
    loss = model(video(), ids, attention_mask=mask, return_loss=True).loss
    loss.backward()
    assert torch.isfinite(loss)
    table = model.vision_model.encoder.layer[0].attention.attention.relative_position_bias.relative_position_bias_table
    assert table.grad is not None and table.grad.abs().sum() > 0


def test_dense_masked_backend_gives_the_same_model_output(model):
    pixels = video()
    reference = SViTTModel(tiny_config(vision={"sparse_attention_backend": "dense_masked"})).eval()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model.vision_model(pixels).pooler_output, reference.vision_model(pixels).pooler_output, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_with_sparsity_and_dropout_gives_the_same_gradients():
    # Dropout and drop path draw from the global RNG: the recomputed layers must replay the same draws, and the
    # random token selection and random blocks must be the ones of the first pass.
    torch.manual_seed(0)
    vision = {"token_keep_strategy": "random", "drop_path_rate": 0.3, "hidden_dropout_prob": 0.2}
    config = tiny_config(vision=vision, text={"hidden_dropout_prob": 0.2, "attention_probs_dropout_prob": 0.2})
    models = [SViTTModel(config).train() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    models[1].activation_checkpointing_enable()
    assert models[1].vision_model.encoder.layer[0].gradient_checkpointing
    ids, mask = text()
    losses = []
    for model in models:
        torch.manual_seed(11)
        loss = model(video(), ids, attention_mask=mask, return_loss=True, generator=torch.Generator().manual_seed(5)).loss
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1])
    torch.manual_seed(12)  # another dropout draw gives another loss: dropout is really on
    other = models[0](video(), ids, attention_mask=mask, return_loss=True, generator=torch.Generator().manual_seed(5)).loss
    assert not torch.allclose(other, losses[0])
    for (name, first), second in zip(models[0].named_parameters(), models[1].parameters()):
        if first.grad is not None:
            torch.testing.assert_close(first.grad, second.grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("vision", [{"token_keep_rate": 1.0}, {"token_keep_strategy": "random"}])
def test_bf16_autocast_stays_close_to_fp32(vision):
    # With "random" pruning the kept tokens do not depend on the precision, so bf16 runs the same pruned model
    # (gathering, relative bias by original position) and can be compared with fp32. ([CLS]-attention pruning of a
    # random model has near-tied scores that bf16 rounding may reorder: nothing to compare there.)
    torch.manual_seed(0)
    model = SViTTModel(tiny_config(vision=vision)).eval()
    ids, mask = text()
    with torch.no_grad():
        reference = model(video(), ids, attention_mask=mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(video(), ids, attention_mask=mask)
    for kept_low, kept_reference in zip(
        low.vision_model_output.kept_token_indices, reference.vision_model_output.kept_token_indices
    ):
        assert torch.equal(kept_low, kept_reference)
    # bf16 keeps 8 bits of mantissa (relative error 2^-8 = 0.004 per rounding); unit-norm embeddings after a few
    # layers stay within 0.02 of fp32, and the logits (cosine / 0.07) within 0.02 / 0.07 * 2 = 0.6
    torch.testing.assert_close(low.text_embeds.float(), reference.text_embeds, atol=2e-2, rtol=0)
    torch.testing.assert_close(low.video_embeds.float(), reference.video_embeds, atol=2e-2, rtol=0)
    assert low.logits_per_video.dtype == torch.float32  # similarities are computed in fp32 (small temperature)
    torch.testing.assert_close(low.logits_per_video, reference.logits_per_video, atol=0.6, rtol=0)


def test_wrong_clip_shape_names_the_problem(model):
    with pytest.raises(ValueError, match="frames"):
        model.vision_model(torch.randn(1, 3, 3, 32, 32))
    with pytest.raises(ValueError, match="pixel_values"):
        model.vision_model(torch.randn(1, 2, 3, 40, 40))


def test_resize_num_frames_resamples_every_table(model):
    tower = model.vision_model
    tables = [layer.attention.attention.relative_position_bias.relative_position_bias_table for layer in tower.encoder.layer]
    with torch.no_grad():  # distinct tables, so a layer resampled from another layer's table would show
        for index, table in enumerate(tables):
            table.normal_(generator=torch.Generator().manual_seed(index))
    before = [table.detach().clone() for table in tables]
    tower.resize_num_frames(4)
    assert tower.config.num_frames == 4
    spatial, global_rows = 49, 3  # (2 * 4 - 1) ** 2 relative (h, w) offsets; cls->token, token->cls, cls->cls
    for index, layer in enumerate(tower.encoder.layer):
        bias = layer.attention.attention.relative_position_bias
        table = bias.relative_position_bias_table
        assert table.shape == (7 * spatial + global_rows, 4) and bias.num_frames == 4, index
        old = before[index]
        torch.testing.assert_close(table[-global_rows:], old[-global_rows:], msg=f"layer {index}: global rows kept")
        # nearest resampling from 3 to 7 temporal offsets: offset 0 (middle) keeps the old offset-0 spatial bias
        torch.testing.assert_close(table[3 * spatial : 4 * spatial], old[spatial : 2 * spatial], msg=f"layer {index}")
    assert tower(video(frames=4)).last_hidden_state.shape[0] == 2


def test_save_and_load_round_trip_is_bit_exact(model, tmp_path):
    from transformers import AutoConfig, AutoModel

    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "modeling_svitt.py").is_file()
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is SViTTModel
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    ids, mask = text()
    with torch.no_grad():
        assert torch.equal(model(video(), ids, mask).logits_per_video, loaded(video(), ids, mask).logits_per_video)
    assert AutoConfig.from_pretrained(tmp_path).auto_map["AutoModel"] == "modeling_svitt.SViTTModel"


def test_remote_code_loads_where_the_package_is_not_importable(model, tmp_path):
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    ids, mask = text()
    with torch.no_grad():
        expected = model(video(), ids, mask).logits_per_video
    torch.save({"pixels": video(), "ids": ids, "mask": mask, "expected": expected}, tmp_path / "io.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["modeling_svitt"] = None  # as if the package were not installed
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        io = torch.load({str(tmp_path / "io.pt")!r})
        with torch.no_grad():
            logits = model(io["pixels"], io["ids"], io["mask"]).logits_per_video
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert torch.equal(logits, io["expected"]), (logits, io["expected"])
        try:
            import modeling_svitt
        except ImportError:
            print("remote code ok")
        """
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote code ok" in result.stdout


@pytest.mark.parametrize("sparse", [True, False])
def test_eager_and_sdpa_agree_and_switch_on_the_composite_model(sparse):
    torch.manual_seed(0)
    model = SViTTModel._from_config(tiny_config(vision={"use_sparse_attention": sparse}), attn_implementation="sdpa").eval()
    assert model.vision_model.config._attn_implementation == model.text_model.config._attn_implementation == "sdpa"
    ids, mask = text()
    with torch.no_grad():
        sdpa = model(video(), ids, attention_mask=mask).logits_per_video
        model.set_attn_implementation("eager")
        assert model.vision_model.config._attn_implementation == model.text_model.config._attn_implementation == "eager"
        eager = model(video(), ids, attention_mask=mask).logits_per_video
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("strategy", ["cls_attn", "random"])
def test_attention_blocks_do_not_depend_on_the_batch(strategy):
    torch.manual_seed(0)
    tower = SViTTVisionModel(tiny_vision_config(token_keep_strategy=strategy, num_hidden_layers=3)).eval()
    pixels = video(batch=4)
    with torch.no_grad():
        alone, together = tower(pixels[:1]), tower(pixels)
    for blocks_alone, blocks_together in zip(alone.random_blocks, together.random_blocks):
        assert torch.equal(blocks_alone, blocks_together)
    if strategy == "cls_attn":
        torch.testing.assert_close(alone.pooler_output, together.pooler_output[:1], atol=1e-5, rtol=1e-5)


def test_from_pretrained_moves_any_svitt_model_to_a_new_clip_length(model, tmp_path):
    model.save_pretrained(tmp_path)
    for model_class in (SViTTModel, SViTTVisionModel):
        source = tmp_path if model_class is SViTTModel else tmp_path / "vision"
        if model_class is SViTTVisionModel:
            model.vision_model.save_pretrained(source)
        loaded = model_class.from_pretrained(source, num_frames=4)
        tower = loaded.vision_model if model_class is SViTTModel else loaded
        assert tower.config.num_frames == 4
        assert tower.encoder.layer[0].attention.attention.relative_position_bias.relative_position_bias_table.shape[0] == 7 * 49 + 3
    model.text_model.save_pretrained(tmp_path / "text")
    with pytest.raises(ValueError, match="no video tower"):
        SViTTTextModel.from_pretrained(tmp_path / "text", num_frames=4)


TOWER_REMOTE_CODE_CHECK = """
import sys
sys.modules["modeling_svitt"] = None  # as if the package were not installed
import torch
from transformers import AutoConfig, AutoModel
for folder, expected_class in (("vision", "SViTTVisionModel"), ("text", "SViTTTextModel")):
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__name__ == expected_class, type(model).__name__
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    io = torch.load(folder + ".pt")
    with torch.no_grad():
        output = model(**io["inputs"]).last_hidden_state
    assert torch.equal(output, io["expected"]), (output - io["expected"]).abs().max()
print("towers ok")
"""


def test_a_tower_folder_rebuilds_that_tower_through_remote_code(model, tmp_path):
    ids, mask = text()
    for name, tower, inputs in (
        ("vision", model.vision_model, {"pixel_values": video()}),
        ("text", model.text_model, {"input_ids": ids, "attention_mask": mask}),
    ):
        with torch.no_grad():
            expected = tower(**inputs).last_hidden_state
        tower.save_pretrained(tmp_path / name)
        assert getattr(tower.config, "auto_map", None) is None  # the map went to the folder, not into the model
        torch.save({"inputs": inputs, "expected": expected}, tmp_path / f"{name}.pt")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", TOWER_REMOTE_CODE_CHECK], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "towers ok" in result.stdout, result.stderr[-3000:]


def test_dual_encoder_loss_is_the_configured_contrastive_objective():
    torch.manual_seed(0)
    model = SViTTModel(tiny_config(contrastive_loss="egonce")).eval()
    ids, mask = text(batch=4)
    verbs = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1]])
    nouns = torch.tensor([[1, 0], [1, 0], [1, 0], [0, 1]])
    with torch.no_grad():
        out = model(video(batch=4), ids, mask, return_loss=True, verb_tags=verbs, noun_tags=nouns)
        # EgoNCE by hand: pairs 0 and 1 share a verb and a noun, so each is a positive of the other
        logits = out.video_embeds @ out.text_embeds.T / model.temperature
        positives = torch.eye(4, dtype=torch.bool)
        positives[0, 1] = positives[1, 0] = True

        def direction(scores):
            return -(scores.masked_fill(~positives, float("-inf")).logsumexp(1) - scores.logsumexp(1)).mean()

        torch.testing.assert_close(out.loss, (direction(logits) + direction(logits.T)) / 2)
        infonce = SViTTModel(tiny_config())
        infonce.load_state_dict(model.state_dict())
        assert not torch.allclose(infonce.eval()(video(batch=4), ids, mask, return_loss=True).loss, out.loss)
    with pytest.raises(ValueError, match="verb_tags"):
        model(video(batch=4), ids, mask, return_loss=True)


def _on_another_device(module: torch.nn.Module) -> None:
    """Place `module` on a second "device" the way `device_map` does: its weights there, its inputs moved there by
    an accelerate hook, its outputs left there. The meta device stands in for a second accelerator."""
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module

    module.to("meta")
    add_hook_to_module(module, AlignDevicesHook(execution_device=torch.device("meta")))


@pytest.mark.parametrize("head", ["base", "pretraining", "retrieval", "multiple_choice_itc", "multiple_choice_itm"])
def test_towers_on_different_devices_are_combined_on_the_text_side(head):
    # ITM drops the rows without a negative by boolean indexing; on meta, assume every row has one (true here).
    # torch's own patch: pytest's monkeypatch deletes a torch config entry when it undoes the change.
    with torch.fx.experimental._config.patch(meta_nonzero_assume_all_nonzero=True):
        _run_with_the_text_side_on_another_device(head)


def _run_with_the_text_side_on_another_device(head: str) -> None:
    from modeling_svitt import SViTTForMultipleChoice, SViTTForPreTraining, SViTTForVideoTextRetrieval

    cls = {"base": SViTTModel, "pretraining": SViTTForPreTraining, "retrieval": SViTTForVideoTextRetrieval}.get(
        head, SViTTForMultipleChoice
    )
    torch.manual_seed(0)
    model = cls(tiny_config(text={"fusion_token_keep_rate": 0.5, "fusion_token_drop_layers": [0]})).train()
    base = model if cls is SViTTModel else model.svitt
    for module in (base.text_model, base.text_projection, getattr(model, "itm_head", None), getattr(model, "mlm_head", None)):
        if module is not None:
            _on_another_device(module)
    ids, mask = text(batch=3)
    kwargs = {"return_loss": True} if cls in (SViTTModel, SViTTForVideoTextRetrieval) else {}
    pixels = video(batch=3)
    if cls is SViTTForMultipleChoice:
        pixels = video(batch=6).reshape(3, 2, 2, 3, 32, 32)
        kwargs = {"labels": torch.tensor([0, 1, 0]), "scoring": head.rsplit("_", 1)[-1]}
    output = model(pixel_values=pixels, input_ids=ids, attention_mask=mask, **kwargs)
    assert output.loss.device.type == "meta"
    if cls in (SViTTForPreTraining, SViTTForVideoTextRetrieval):
        assert output.itm_logits.shape == (9, 2)


def test_projections_use_their_own_tower_initializer_range():
    torch.manual_seed(0)
    model = SViTTModel(tiny_config(vision={"initializer_range": 0.5}, text={"initializer_range": 0.01}))
    for module, std in ((model.vision_projection, 0.5), (model.text_projection, 0.01)):
        assert abs(module.weight.std().item() - std) < 0.25 * std
    assert abs(model.vision_model.encoder.layer[0].attention.attention.query.weight.std().item() - 0.5) < 0.1


def test_random_text_guided_selection_is_reproducible_and_deterministic_in_evaluation():
    torch.manual_seed(0)
    config = tiny_text_config(
        num_hidden_layers=4, fusion_token_keep_rate=0.5, fusion_token_drop_layers=[0], fusion_token_keep_strategy="random"
    )
    tower = SViTTTextModel(config).eval()
    ids, mask = text()
    states = tower(ids, mask).last_hidden_state
    tokens = torch.randn(2, 11, 32)

    def kept(generator=None):
        output = tower(
            text_hidden_states=states, attention_mask=mask, encoder_hidden_states=tokens, mode="fusion", generator=generator
        )
        return output.kept_video_token_indices[0]

    torch.manual_seed(1)
    evaluation = kept()
    torch.manual_seed(2)  # the global RNG does not decide evaluation
    assert torch.equal(kept(), evaluation)
    expected = torch.rand(2, 10, generator=torch.Generator().manual_seed(0)).topk(5, dim=1).indices.sort(dim=1).values
    assert torch.equal(evaluation, expected)
    assert torch.equal(kept(torch.Generator().manual_seed(3)), kept(torch.Generator().manual_seed(3)))
    tower.train()
    assert len({tuple(kept().flatten().tolist()) for _ in range(6)}) > 1  # training draws fresh selections


def test_text_tower_mode_is_explicit_and_checked():
    torch.manual_seed(0)
    tower = SViTTTextModel(tiny_text_config()).eval()
    ids, mask = text()
    tokens = torch.randn(2, 9, 32)
    text_only = tower(ids, mask, mode="text").last_hidden_state
    torch.testing.assert_close(tower(ids, mask).last_hidden_state, text_only)  # inferred as before
    fused = tower(text_hidden_states=text_only, attention_mask=mask, encoder_hidden_states=tokens, mode="fusion")
    full = tower(ids, mask, encoder_hidden_states=tokens, mode="multimodal")
    torch.testing.assert_close(full.last_hidden_state, fused.last_hidden_state)
    with pytest.raises(ValueError, match="`encoder_hidden_states` would be ignored"):
        tower(ids, mask, encoder_hidden_states=tokens, mode="text")
    with pytest.raises(ValueError, match="mode='multimodal' runs the fusion layers"):
        tower(ids, mask, mode="multimodal")
    with pytest.raises(ValueError, match="text_hidden_states"):
        tower(ids, mask, encoder_hidden_states=tokens, mode="fusion")
    with pytest.raises(ValueError, match="`mode` must be one of"):
        tower(ids, mask, mode="fused")


def test_evaluation_patterns_come_from_random_block_seed_and_a_generator_overrides_them(model):
    pixels = video()
    with torch.no_grad():
        default, again = model.vision_model(pixels), model.vision_model(pixels[:1])
        seeded = model.vision_model(pixels, generator=torch.Generator().manual_seed(5))
        model.config.vision_config.random_block_seed += 1
        reseeded = model.vision_model(pixels)
    assert all(torch.equal(a, b) for a, b in zip(default.random_blocks, again.random_blocks))  # per seed and layer
    assert not all(torch.equal(a, b) for a, b in zip(default.random_blocks, seeded.random_blocks))
    assert not all(torch.equal(a, b) for a, b in zip(default.random_blocks, reseeded.random_blocks))
