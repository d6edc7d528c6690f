import os
import subprocess
import sys
import textwrap

import pytest
import torch
from tiny_configs import tiny_config, tiny_text_config, tiny_vision_config

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
    torch.testing.assert_close(model.get_video_features(video()), output.video_embeds)
    torch.testing.assert_close(model.get_text_features(ids, mask), output.text_embeds)


def test_padding_does_not_change_text_features(model):
    ids, mask = text(batch=1, length=5)
    padded_ids = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model.get_text_features(ids, mask), model.get_text_features(padded_ids, padded_mask), atol=1e-6, rtol=1e-6)


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


def test_gradient_checkpointing_with_sparsity_gives_the_same_gradients():
    torch.manual_seed(0)
    config = tiny_config(vision={"token_keep_strategy": "random"})
    models = [SViTTModel(config).train() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    models[1].activation_checkpointing_enable()
    assert models[1].vision_model.encoder.layer[0].gradient_checkpointing
    ids, mask = text()
    losses = []
    for model in models:
        loss = model(video(), ids, attention_mask=mask, return_loss=True, generator=torch.Generator().manual_seed(5)).loss
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1])
    for (name, first), second in zip(models[0].named_parameters(), models[1].parameters()):
        if first.grad is not None:
            torch.testing.assert_close(first.grad, second.grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("keep_rate", [1.0, 0.7])
def test_bf16_autocast_runs(keep_rate):
    torch.manual_seed(0)
    model = SViTTModel(tiny_config(vision={"token_keep_rate": keep_rate})).eval()
    ids, mask = text()
    with torch.no_grad():
        reference = model(video(), ids, attention_mask=mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(video(), ids, attention_mask=mask)
    assert torch.isfinite(low.video_embeds).all() and torch.isfinite(low.logits_per_video).all()
    torch.testing.assert_close(low.text_embeds.float(), reference.text_embeds, atol=2e-2, rtol=0)
    if keep_rate == 1.0:  # with pruning, bf16 rounding may flip near-tied token choices of a random model
        torch.testing.assert_close(low.video_embeds.float(), reference.video_embeds, atol=2e-2, rtol=0)


def test_wrong_clip_shape_names_the_problem(model):
    with pytest.raises(ValueError, match="frames"):
        model.vision_model(torch.randn(1, 3, 3, 32, 32))
    with pytest.raises(ValueError, match="pixel_values"):
        model.vision_model(torch.randn(1, 2, 3, 40, 40))


def test_resize_num_frames_resamples_every_table(model):
    tower = model.vision_model
    tower.resize_num_frames(4)
    assert tower.config.num_frames == 4
    table = tower.encoder.layer[1].attention.attention.relative_position_bias.relative_position_bias_table
    assert table.shape[0] == 7 * 49 + 3
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
