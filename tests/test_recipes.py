"""Recipes: built-ins load, --set overrides, inheritance, and every impossible value fails naming its field; the
optimiser groups, the schedule and the launch checks of the shared training module."""

from __future__ import annotations

import math

import pytest
import torch

from helpers.tiny_configs import tiny_config
from helpers.tiny_recipe import TINY_RECIPE, write_tiny_recipe
from modeling_svitt.relative_position import init_relative_bias_for_motion
from training.building import freeze_unused_parameters
from training.launch import launch_problem
from training.optimization import build_optimizer, learning_rate_multiplier, step_seed
from training.recipe import (
    EVALUATION_TASKS,
    SYNTHETIC_TASK_RECIPES,
    TASKS,
    OptimizerSpec,
    RecipeError,
    apply_override,
    builtin_recipes,
    load_recipe,
)
from training.recipe_data import check_data_paths


def test_builtin_recipes_load_and_describe_the_curricula():
    assert {"synthetic", "svitt", "svitt-ego", "svitt-ego-synthetic"} <= set(builtin_recipes())
    svitt = load_recipe("svitt")
    assert [(s.num_frames, s.token_keep_rate) for s in svitt.stages] == [(4, 0.7), (8, 0.6), (16, 0.5)]
    assert svitt.stages[0].optimizer.lr == 3e-5 and svitt.stages[0].epochs == 10
    assert svitt.stages[0].optimizer.weight_decay_rule == "release"
    ego = load_recipe("svitt-ego")
    assert ego.stages[0].contrastive_loss == "egonce" and ego.evaluation[0].kind == "multiple_choice"
    synthetic = load_recipe("synthetic")
    frames = [s.num_frames for s in synthetic.stages]
    keep = [s.token_keep_rate for s in synthetic.stages]
    assert len(frames) >= 3 and frames == sorted(frames) and frames[0] < frames[-1]
    assert keep == sorted(keep, reverse=True) and keep[0] > keep[-1]
    # the ego variant on synthetic data inherits the tiny model and swaps data, loss and evaluation
    ego_synthetic = load_recipe("svitt-ego-synthetic")
    assert ego_synthetic.model == synthetic.model
    assert ego_synthetic.stages[0].data.format == "egoclip" and ego_synthetic.evaluation[0].kind == "multiple_choice"


def test_task_recipes_carry_the_release_settings():
    assert builtin_recipes("retrieval") == [
        "ret-charades", "ret-didemo", "ret-msrvtt", "ret-ssv2-label", "ret-ssv2-template", "ret-synthetic"
    ]
    assert builtin_recipes("qa") == ["qa-agqa", "qa-anet", "qa-msrvtt", "qa-synthetic"]
    assert builtin_recipes("multiple_choice") == ["mc-egomcq", "mc-synthetic"]
    # one task list: every fine-tuning task has its synthetic recipe, and that recipe is of the task
    assert tuple(SYNTHETIC_TASK_RECIPES) == EVALUATION_TASKS == tuple(TASKS)[1:]
    assert all(load_recipe(name).task == task for task, name in SYNTHETIC_TASK_RECIPES.items())
    assert load_recipe("mc-synthetic").stages[0].data.annotations == "{synthetic}/ego/egomcq_train.json"
    for name in builtin_recipes("retrieval") + builtin_recipes("qa"):
        recipe = load_recipe(name)
        stage, test = recipe.stages[0], recipe.evaluation[0]
        qa = recipe.task == "qa"
        assert (stage.num_frames, stage.token_keep_rate) == ((8, 0.6) if qa else (4, 0.7)), name
        if name.endswith("synthetic"):
            continue
        assert stage.fusion_token_keep_rate == (0.5 if qa else 0.1), name
        assert stage.num_frames * test.num_clips == (24 if qa else 12), name  # test frames
        assert (test.clip_aggregation, test.k, stage.optimizer.lr, stage.batch_size) == ("lse", 128, 1e-5, 32), name
        assert stage.epochs == (5 if name == "qa-agqa" else 10) and stage.schedule.min_lr_multiplier == 0.1, name
        assert recipe.processor.max_text_length == {"ret-charades": 48, "ret-ssv2-label": 25,
                                                    "ret-ssv2-template": 25}.get(name, 25 if qa else 64), name
    didemo, ssv2 = load_recipe("ret-didemo"), load_recipe("ret-ssv2-template")
    assert didemo.stages[0].data.paragraphs and didemo.evaluation[0].is_paragraph_retrieval
    assert ssv2.stages[0].data.match_by == "caption" and ssv2.evaluation[0].has_multi_vision_gt
    assert ssv2.evaluation[0].annotations.endswith("ssv2_ret_template_val_small.json")
    assert load_recipe("qa-msrvtt").evaluation[0].qa_scoring == "release_ensemble"
    ego = load_recipe("mc-egomcq")
    assert ego.stages[0].data.format == "egomcq" and ego.evaluation[0].chunk_seconds == 600
    # the synthetic task recipes read the set of the default pretraining run
    assert load_recipe("ret-synthetic").synthetic == load_recipe("synthetic").synthetic


@pytest.mark.parametrize(
    ("recipe", "override", "field", "message"),
    [
        ("ret-msrvtt", "stages=[{}, {}]", "stages", "fine-tunes in one stage"),
        ("ret-msrvtt", "stage_defaults.data.format=qa", "stages.0.data.format", "for a retrieval recipe"),
        ("qa-msrvtt", "evaluation.0.kind=retrieval", "evaluation.0.kind", "for a qa recipe"),
        ("qa-msrvtt", "evaluation.0.answer_list=null", "evaluation.0.answer_list", "is required for qa"),
        ("qa-msrvtt", "evaluation.0.qa_scoring=release_concat", "evaluation.0.num_clips", "one clip"),
        ("ret-msrvtt", "evaluation.0.clip_aggregation=median", "evaluation.0.clip_aggregation", "lse"),
        ("ret-msrvtt", "stage_defaults.data.match_by=label", "stages.0.data.match_by", "video or caption"),
        ("ret-msrvtt", "task=segmentation", "task", "pretraining"),
    ],
)
def test_impossible_task_recipes_fail_naming_the_field(recipe, override, field, message):
    with pytest.raises(RecipeError, match=message) as error:
        load_recipe(recipe, [override])
    assert f"recipe '{recipe}', {field}:" in str(error.value)


def test_set_overrides_reach_nested_fields_lists_and_every_stage():
    recipe = load_recipe(
        "synthetic",
        ["stages.1.token_keep_rate=0.5", "stages.*.batch_size=8", "seed=7", "stage_defaults.optimizer.lr=2e-4",
         "stages.0.token_drop_layers=[1]"],
    )
    assert recipe.stages[1].token_keep_rate == 0.5 and recipe.seed == 7
    assert all(stage.batch_size == 8 for stage in recipe.stages)
    assert all(stage.optimizer.lr == 2e-4 for stage in recipe.stages)
    assert recipe.stages[0].token_drop_layers == [1]
    raw = {"stages": [{}]}
    with pytest.raises(RecipeError, match="no entry 3"):
        apply_override(raw, "stages.3.num_frames=4")
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        apply_override(raw, "stages.0.num_frames")


@pytest.mark.parametrize(
    ("override", "field", "message"),
    [
        ("stages.0.token_kep_rate=0.5", "stages.0.token_kep_rate", "unknown key"),
        ("stages.1.token_keep_rate=0", "stages.1.token_keep_rate", r"\(0, 1\]"),
        ("stages.0.num_frames=0", "stages.0.num_frames", "must be >= 1"),
        ("stages.0.num_frames=2.5", "stages.0.num_frames", "integer"),
        ("stages.2.num_frames=4", "stages.2.num_frames", "shrink"),
        ("stages.0.batch_size=1", "stages.0.batch_size", ">= 2"),
        ("stages.0.epochs=3", "stages.0.epochs", "exactly one of epochs and steps"),
        ("stages.0.contrastive_loss=nce", "stages.0.contrastive_loss", "infonce"),
        # the spellings of earlier versions name the new one
        ("stages.0.contrastive_loss=itc", "stages.0.contrastive_loss", "'itc' is now spelled 'infonce'"),
        ("evaluation.0.kind=egomcq", "evaluation.0.kind", "'egomcq' is now spelled 'multiple_choice'"),
        # clip length and sparsity under the video tower's own rules, also before a checkpoint's tower is known
        ("stages.0.attention_block_size=0", "stages.0.attention_block_size", "must be >= 1"),
        ("stages.0.fusion_token_keep_rate=1.5", "stages.0.fusion_token_keep_rate", r"\(0, 1\]"),
        ("stages.0.contrastive_loss=egonce", "stages.0.contrastive_loss", "egoclip"),
        ("stages.0.optimizer.lr=-1", "stages.0.optimizer.lr", "positive"),
        ("stages.0.loss_weights={itc: 0, itm: 0, mlm: 0}", "stages.0.loss_weights", "at least one"),
        ("stages.0.num_local_blocks=2", "stages.0.num_local_blocks", "odd"),
        ("model.init=magic", "model.init", "checkpoint"),
        ("model.temporal_bias_init=-1", "model.temporal_bias_init", ">= 0"),
        ("model.beit=some/beit", "model.temporal_bias_init", "fresh video tower"),
        ("evaluation.0.kind=qa", "evaluation.0.kind", "for a pretraining recipe"),
        ("processor.image_std=[0.5, 0, 0.5]", "processor.image_std", "positive"),
        # values that used to fail only after set-up (in a data-loader worker, at seeding, in the middle of the run)
        ("stages.0.data.frame_sampling=bogus", "stages.0.data.frame_sampling", "must be one of"),
        ("stages.0.steps=.inf", "stages.0.steps", "integer"),
        ("seed=4294967296", "seed", r"\[0, 2\*\*32 - 1\]"),
        ("seed=-1", "seed", r"\[0, 2\*\*32 - 1\]"),
        ("stages.0.token_drop_layers=[-5, 99]", "stages.0.token_drop_layers", "layer indices >= 0"),
        ("stages.1.token_drop_layers=[1, 99]", "stages.1.token_drop_layers", "contains 99.*layers 0..3"),
        ("processor.image_size=32", "processor.image_size", "model takes 64x64"),
        # model fields that configure nothing
        ("model.vision.num_hidden_layer=2", "model.vision", "did you mean `num_hidden_layers`"),
        ("model.text.fusion_layr=1", "model.text", "did you mean `fusion_layer`"),
        ("model.config.embed_dims=8", "model.config", "did you mean `embed_dim`"),
        ("model.config.vision_config={}", "model.config.vision_config", "under model.vision"),
        ("model.vision.num_attention_heads=5", "model.vision", "divisible"),
    ],
)
def test_impossible_values_fail_naming_the_field(override, field, message):
    with pytest.raises(RecipeError, match=message) as error:
        load_recipe("synthetic", [override])
    assert f"recipe 'synthetic', {field}:" in str(error.value)


def test_infinite_epochs_fail_when_the_recipe_loads(tmp_path):
    path = write_tiny_recipe(tmp_path, stage_defaults={"steps": None, "epochs": float("inf")})
    with pytest.raises(RecipeError, match=r"recipe 'tiny', stages\.0\.epochs: must be a finite number"):
        load_recipe(path)
    with pytest.raises(RecipeError, match=r"stages\.0\.epochs: must be a finite number"):
        load_recipe("svitt", ["stages.0.epochs=.inf"])


@pytest.mark.parametrize(
    ("recipe", "override", "field", "message"),
    [
        ("svitt-ego", "stages.0.data.chunk_seconds=-600", "stages.0.data.chunk_seconds", "must be positive"),
        ("svitt-ego", "evaluation.0.chunk_seconds=-1", "evaluation.0.chunk_seconds", "must be positive"),
        ("svitt-ego", "stages.*.data.chunk_seconds=null", "stages.0.data.chunk_seconds", "names chunk files"),
        ("svitt-ego", "stages.0.data.path_template={video_id}.mp4", "stages.0.data.path_template", "video_id"),
        ("svitt", "stages.0.token_drop_layers=[3, 3]", "stages.0.token_drop_layers", "lists a layer twice"),
        ("svitt", "stages.1.token_keep_rate=0", "stages.1.token_keep_rate", r"\(0, 1\]"),
        ("ret-msrvtt", "stages.0.num_local_blocks=2", "stages.0.num_local_blocks", "odd"),
        ("ret-msrvtt", "model.vision.num_frames=8", "model.vision", "init: checkpoint keeps"),
    ],
)
def test_impossible_values_of_other_recipes_fail_naming_the_field(recipe, override, field, message):
    with pytest.raises(RecipeError, match=message) as error:
        load_recipe(recipe, [override])
    assert f"recipe '{recipe}', {field}:" in str(error.value)


def test_set_takes_string_fields_as_written():
    # the documented Ego4D layout: braces are not YAML here
    recipe = load_recipe("svitt-ego", ["stages.*.data.path_template={video_uid}/{chunk}.mp4",
                                       "evaluation.0.path_template={video_uid}.mp4",
                                       'stages.0.data.annotations="data/a b.csv"', "stages.0.data.media_root=null",
                                       "stages.0.name=123"])
    assert recipe.stages[0].data.path_template == "{video_uid}/{chunk}.mp4"
    assert recipe.evaluation[0].path_template == "{video_uid}.mp4"
    assert recipe.stages[0].data.annotations == "data/a b.csv" and recipe.stages[0].data.media_root is None
    assert recipe.stages[0].name == "123"
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe("svitt-ego", ["stages.0.token_drop_layers=[3, 6"])


def test_patterns_matching_no_parameter_and_a_deeper_stage_than_the_model_fail_once_it_is_built(tmp_path):
    from modeling_svitt import SViTTForPreTraining, SViTTProcessor, SViTTVideoProcessor

    from training.recipe import check_recipe_against_model

    model = SViTTForPreTraining(tiny_config())
    depth = model.config.vision_config.num_hidden_layers
    recipe = load_recipe("ret-msrvtt", [
        "stages.0.freeze=[svitt.text_model.embeddings., svitt.txt_model.]",
        "stages.0.optimizer.lr_multipliers={svitt.text_projection: 2.0, relative_bias_table: 10.0}",
        f"stages.0.token_drop_layers=[{depth}]",
    ])
    with pytest.raises(RecipeError) as error:
        check_recipe_against_model(recipe, model)
    message = str(error.value)
    assert "stages.0.freeze: no parameter name starts 'svitt.txt_model.'" in message
    assert "stages.0.optimizer.lr_multipliers: no parameter name holds 'relative_bias_table'" in message
    assert "svitt.text_model.embeddings." not in message.split("freeze:")[1].split("\n")[0].split(";")[0]
    assert f"stages.0.token_drop_layers: `token_drop_layers` contains {depth}" in message
    good = load_recipe("ret-msrvtt", ["stages.0.freeze=[svitt.text_model.embeddings.]",
                                      "stages.0.optimizer.lr_multipliers={relative_position_bias_table: 10.0}",
                                      "stages.0.token_drop_layers=[0]"])
    size = model.config.vision_config.image_size
    check_recipe_against_model(good, model, SViTTProcessor(SViTTVideoProcessor(size=size), _tokenizer()))
    with pytest.raises(RecipeError, match=f"processor.image_size: .*model takes {size}x{size}"):
        check_recipe_against_model(good, model, SViTTProcessor(SViTTVideoProcessor(size=224), _tokenizer()))


def test_unknown_recipes_and_broken_files_are_explained(tmp_path):
    with pytest.raises(RecipeError, match="built-in recipes are"):
        load_recipe("no-such-recipe")
    broken = tmp_path / "broken.yaml"
    broken.write_text("stages: [", encoding="utf-8")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(broken)
    looping = tmp_path / "loop.yaml"
    looping.write_text(f"inherit: {looping}\nstages: [{{num_frames: 4, steps: 1}}]\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="inherits from itself"):
        load_recipe(looping)


def test_missing_annotation_files_and_media_folders_name_their_field(tmp_path):
    path = write_tiny_recipe(tmp_path)
    recipe = load_recipe(path, ["stages.1.data.annotations=/nonexistent/train.json"])
    with pytest.raises(RecipeError, match=r"stages\.0\.data\.annotations: annotation file '.*pretrain.json'"):
        check_data_paths(recipe, tmp_path / "no-synthetic-here")
    (tmp_path / "syn").mkdir()
    (tmp_path / "syn" / "pretrain.json").write_text("[]")
    with pytest.raises(RecipeError, match=r"stages\.1\.data\.annotations: .*/nonexistent/train.json"):
        check_data_paths(recipe, tmp_path / "syn")
    recipe = load_recipe(path, ["evaluation.0.media_root=/nonexistent/videos"])
    (tmp_path / "syn" / "ret_test.json").write_text("[]")
    with pytest.raises(RecipeError, match=r"evaluation\.0\.media_root: media folder"):
        check_data_paths(recipe, tmp_path / "syn")


def test_release_weight_decay_quirk_is_the_default_and_can_be_fixed():
    model = torch.nn.Module()
    model.temperature = torch.nn.Parameter(torch.tensor(0.07))
    model.cls_token = torch.nn.Parameter(torch.zeros(1, 1, 4))
    model.linear = torch.nn.Linear(4, 4)
    model.norm = torch.nn.LayerNorm(4)

    def decayed(rule):
        optimizer = build_optimizer(model, OptimizerSpec(lr=1.0, weight_decay=0.02, weight_decay_rule=rule))
        return {id(p) for group in optimizer.param_groups if group["weight_decay"] > 0 for p in group["params"]}

    release, fixed = decayed("release"), decayed("fixed")
    assert release == {id(model.temperature), id(model.cls_token), id(model.linear.weight)}
    assert fixed == {id(model.linear.weight)}
    optimizer = build_optimizer(model, OptimizerSpec(lr=1.0, lr_multipliers={"linear": 3.0, "linear.bias": 5.0}))
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert lr_of[id(model.linear.weight)] == 3.0 and lr_of[id(model.linear.bias)] == 5.0
    assert lr_of[id(model.norm.weight)] == 1.0


def test_schedule_warms_up_linearly_then_follows_a_floored_cosine():
    values = [learning_rate_multiplier(step, 100, 0.1, 0.05) for step in range(101)]
    assert values[0] == 0.05 and values[5] == 0.5 and values[10] == 1.0  # floored during warm-up too
    assert math.isclose(values[55], 0.5, abs_tol=1e-9)
    assert values[100] == 0.05 and all(a >= b for a, b in zip(values[10:], values[11:]))


def test_step_seeds_differ_by_stage_step_and_process():
    seeds = {step_seed(0, stage, step, process) for stage in range(3) for step in range(50) for process in range(2)}
    assert len(seeds) == 300


@pytest.mark.parametrize(
    ("world", "processes", "kind", "deepspeed", "wrapped", "problem"),
    [
        (2, 2, "MULTI_CPU", False, True, None),
        (2, 2, "DEEPSPEED", True, True, None),
        (1, 1, "NO", False, None, None),
        (2, 1, "NO", False, None, "each believes"),  # D: --multi_gpu on CPU without a backend
        (2, 1, "DEEPSPEED", True, None, "each believes"),  # A: DeepSpeed on CPU without the gloo backend
        (2, 2, "MULTI_CPU", True, None, "DeepSpeed was requested"),  # H: ACCELERATE_USE_CPU switches DeepSpeed off
        (2, 2, "MULTI_CPU", False, False, "not wrapped"),  # G: sharded data, unwrapped model
    ],
)
def test_launches_that_would_train_unsynchronised_copies_are_named(world, processes, kind, deepspeed, wrapped, problem):
    found = launch_problem(world, processes, kind, deepspeed, wrapped)
    assert (found is None) if problem is None else (problem in found)


def test_freezing_keeps_tied_parameters_trainable():
    from modeling_svitt import SViTTForPreTraining

    model = SViTTForPreTraining(tiny_config(loss_weight_mlm=0.0))
    frozen = freeze_unused_parameters(model, also=["svitt.vision_model.embeddings."])
    assert any(name.startswith("mlm_head.predictions.transform.") for name in frozen)
    assert "mlm_head.predictions.decoder.weight" not in frozen  # the word embeddings, used by the text tower
    assert model.svitt.text_model.embeddings.word_embeddings.weight.requires_grad
    assert not model.svitt.vision_model.embeddings.patch_embeddings.projection.weight.requires_grad


def test_motion_bias_init_points_heads_at_the_previous_next_and_same_frame():
    from modeling_svitt import SViTTForPreTraining
    from modeling_svitt.relative_position import relative_position_index

    model = SViTTForPreTraining(tiny_config(vision={"num_frames": 4}))
    vision = model.svitt.vision_model
    init_relative_bias_for_motion(vision, temporal=4.0, spatial_decay=2.0)
    config = vision.config
    per_frame = config.patches_per_side**2
    query = per_frame + 1  # frame 1, a patch of the first row
    keys = torch.arange(config.num_frames * per_frame)
    index = relative_position_index(torch.tensor([[query]]), keys[None], config.num_frames, config.patches_per_side)[0]
    for layer in vision.encoder.layer:
        table = layer.attention.attention.relative_position_bias.relative_position_bias_table
        favourite = table[index].argmax(dim=0)  # the key each head prefers
        assert favourite[:3].tolist() == [query - per_frame, query + per_frame, query]
        assert table[index, 3].max() == 0 and table[-3:].abs().sum() == 0  # no frame preferred; globals untouched


def test_tiny_recipe_is_valid(tmp_path):
    recipe = load_recipe(write_tiny_recipe(tmp_path))
    assert recipe.name == "tiny" and len(recipe.stages) == len(TINY_RECIPE["stages"])


def _tokenizer():
    from helpers.bert_vocab import bert_vocab_dir

    from modeling_svitt import SViTTTokenizer

    return SViTTTokenizer.from_pretrained(bert_vocab_dir())
