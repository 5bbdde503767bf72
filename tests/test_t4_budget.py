"""GPU_CONFIG and the app's GPU config fit a 15 GB T4: each model's meta-device estimate, with the memory of a
story-length generation, stays within the manager's budget. The checkpoints' configs are written here from their
published sizes (the hub is offline in tests); Qwen2-VL-2B's is checked against its published weight total."""
import copy

import pytest
import torch
import transformers

from storyteller.lora import meta_model
from storyteller.manager import GPU_CONFIG, MODEL_TYPES, ModelManager, parse_config

T4 = 15 * 10**9  # the issue's yardstick: a T4's usable memory
BUDGET = int(0.85 * T4)  # the budget the chapters give the manager; the rest is CUDA's context and fragmentation
EVA_G = dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16, image_size=224,
             patch_size=14, qkv_bias=True)
QFORMER = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
               encoder_hidden_size=1408, vocab_size=30523)
CONFIGS = {  # published sizes of the checkpoints GPU_CONFIG names
    "openai/clip-vit-base-patch32": transformers.CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=8, max_position_embeddings=77),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=32), projection_dim=512),
    "Salesforce/blip2-opt-2.7b": transformers.Blip2Config(
        vision_config=EVA_G, qformer_config=QFORMER, num_query_tokens=32,
        text_config=dict(model_type="opt", vocab_size=50304, hidden_size=2560, ffn_dim=10240, num_hidden_layers=32,
                         num_attention_heads=32, word_embed_proj_dim=2560, max_position_embeddings=2048)),
    "Salesforce/blip2-itm-vit-g": transformers.Blip2Config(
        vision_config=EVA_G, qformer_config={**QFORMER, "use_qformer_text_input": True}, num_query_tokens=32,
        image_text_hidden_size=256),
    "llava-hf/llava-1.5-7b-hf": transformers.LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096,
                           num_hidden_layers=24, num_attention_heads=16, image_size=336, patch_size=14,
                           projection_dim=768),
        text_config=dict(model_type="llama", vocab_size=32064, hidden_size=4096, intermediate_size=11008,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32),
        image_token_index=32000, vision_feature_layer=-2),
    "Qwen/Qwen2-VL-2B-Instruct": transformers.Qwen2VLConfig(
        text_config=dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True,
                         rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}),
        vision_config=dict(depth=32, embed_dim=1280, hidden_size=1536, mlp_ratio=4, num_heads=16,
                           spatial_merge_size=2, patch_size=14, temporal_patch_size=2),
        tie_word_embeddings=True, dtype="bfloat16"),
}


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    "GPU_CONFIG with every hub id replaced by a folder holding that checkpoint's config (and no weights)."
    root = tmp_path_factory.mktemp("configs")
    folders = {}
    for hub_id, config in CONFIGS.items():
        folders[hub_id] = str(root / hub_id.replace("/", "--"))
        config.save_pretrained(folders[hub_id])

    def localise(config: dict) -> dict:
        config = copy.deepcopy(config)
        for entry in config["models"]:
            if entry.get("path"):
                entry["path"] = folders[entry["path"]]
            if "retrieval_path" in entry.get("options", {}):
                entry["options"]["retrieval_path"] = folders[entry["options"]["retrieval_path"]]
        return config
    return localise


def test_the_written_configs_are_the_published_checkpoints():
    qwen = meta_model(transformers.Qwen2VLForConditionalGeneration, CONFIGS["Qwen/Qwen2-VL-2B-Instruct"])
    assert sum(p.numel() for p in qwen.parameters()) * 2 == 4_417_971_200  # its model.safetensors.index.json total
    llava = meta_model(transformers.LlavaForConditionalGeneration, CONFIGS["llava-hf/llava-1.5-7b-hf"])
    assert round(sum(p.numel() for p in llava.parameters()) / 1e9, 2) == 7.06  # "7B": 7.06 billion parameters


@pytest.mark.parametrize("which", ["GPU_CONFIG", "APP_GPU_CONFIG"])
def test_every_model_fits_a_t4_while_it_generates(local, which):
    from storyteller.app import APP_GPU_CONFIG

    manager = ModelManager.from_config(local({"GPU_CONFIG": GPU_CONFIG, "APP_GPU_CONFIG": APP_GPU_CONFIG}[which]))
    sizes = {}
    for name, spec in manager.specs.items():
        kind = MODEL_TYPES[spec.type]
        sizes[name] = (kind.estimate_bytes(spec), kind.working_bytes(spec))
        assert manager.estimate(name) == sum(sizes[name]) <= BUDGET, (name, sizes[name], BUDGET)
    print("\n".join(f"{which} {n}: weights {w / 1e9:.2f} GB + generating {g / 1e9:.2f} GB" for n, (w, g) in sizes.items()))
    assert {"llava", "qwen2-vl", "blip2"} <= set(sizes)  # LLaVA in 4 bits is back beside the others


def test_llava_in_float16_would_not_fit(local):
    "The check can fail: LLaVA-1.5 7B unquantized takes 14 GB before it generates anything."
    config = local(GPU_CONFIG)
    entry = next(e for e in config["models"] if e["name"] == "llava")
    del entry["quantization"]
    spec = next(s for s in parse_config(config) if s.name == "llava")
    assert MODEL_TYPES["llava"].estimate_bytes(spec) > BUDGET
