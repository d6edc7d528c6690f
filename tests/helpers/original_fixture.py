"""Reading the authors' reference fixture (`tests/fixtures/original_svitt_tiny`), shared by the parity tests."""

from modeling_svitt.sparse_attention import load_random_block_patterns

VARIANTS = ["sparse", "dense", "dense_pruned", "sparse_unpruned"]
TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


def fixture_overrides(meta: dict, variant: str) -> tuple[dict, dict]:
    """What the fixture's training config would have said (`vision_encoder_args`), per variant."""
    vision, info = meta["vision_config"], meta["variants"][variant]
    original_config = {
        "video_input": {"num_frames": meta["num_frames"]},
        "image_res": vision["image_size"],
        "vision_encoder_args": {
            "sparse_random_attn": info["effective_sparse_random_attn"],
            "sparse_local_attn": vision["sparse_local_attn"],
            "attn_block_size": vision["attn_block_size"],
            "token_keep_rate": info["effective_token_keep_rate"],
            "token_keep_strategy": vision["token_keep_strategy"],
            "token_drop_loc": vision["token_drop_loc"],
        },
    }
    special = meta["tokenizer"]["special_ids"]
    text_overrides = {
        "num_attention_heads": meta["text_config"]["num_attention_heads"],
        "cls_token_id": special["cls_token_id"],
        "sep_token_id": special["sep_token_id"],
        "mask_token_id": special["mask_token_id"],
    }
    return original_config, text_overrides


def recorded_blocks(fixture_dir, meta, variant, call):
    patterns_file = meta["variants"][variant]["patterns_file"]
    if patterns_file is None:
        return None
    return load_random_block_patterns(fixture_dir / patterns_file, call=call)
