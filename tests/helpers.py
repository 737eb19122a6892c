"""Helpers shared by several test modules (fixtures live in conftest.py; the CI rule's hooks in ci_rule.py)."""

#: the session phantom of conftest.py: 16 videos drawn from seed 3
PHANTOM_N = 16
PHANTOM_SEED = 3

UNET = dict(dim=8, dim_mults=(1, 2), num_resnet_blocks=1, max_text_len=1, layer_attns=False,
            layer_cross_attns=(False, True), cond_images_channels=3, attend_at_middle=False, attn_heads=2,
            attn_dim_head=8, init_cross_embed=False, use_global_context_attn=False)


def tiny_config(stages: int = 1, ef_kind: str | None = "ef_flag", dim: int = 8, channels: int | None = None) -> dict:
    """A cascade config of ``stages`` U-Nets of width ``dim`` that trains and samples in seconds: 4 frames at 8 fps,
    16 px (8 -> 16 px for two stages); ``channels`` 1 (grey) or 3, or the config's default when None."""
    sizes = [16] if stages == 1 else [8, 16]
    config = {"unets": {f"unet{i + 1}": dict(UNET, dim=dim) for i in range(stages)},
              "imagen": {"image_sizes": sizes, "temporal_downsample_factor": [1] * stages,
                         "num_sample_steps": 3, "sigma_data": 0.25, "S_churn": 40, "cond_drop_prob": 0.1},
              "frames": 4, "fps": 8.0}
    if ef_kind:
        config["ef_embedding"] = ef_kind
    if channels is not None:
        config["channels"] = channels
    return config
