"""LoRA: parity with peft (outputs, gradients, merging, adapter files, parameter counts) on toy and Hugging Face
models, and the character-adapter data pipeline."""
import copy
import json

import peft
import pytest
import torch
from torch import nn
from transformers import CLIPModel

from storyteller.integration.tiny import save_tiny_blip2, save_tiny_clip
from storyteller.models.characters import CharacterLook, character_loader
from storyteller.models.lora import (
    PEFT_PREFIX,
    find_lora_targets,
    inject_lora,
    load_adapter,
    lora_layers,
    lora_state_dict,
    merge_lora,
    save_adapter,
    unmerge_lora,
)


def peft_copy(model: nn.Module, ours: nn.Module, **config) -> nn.Module:
    "`model` wrapped by peft with `config`, given the adapter weights of our LoRA model `ours`."
    twin = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(**config))
    weights = {PEFT_PREFIX + k.replace(".weight", ".default.weight"): v for k, v in lora_state_dict(ours).items()}
    result = twin.load_state_dict(weights, strict=False)
    assert not result.unexpected_keys
    assert {k for k in twin.state_dict() if "lora_" in k} == set(weights)
    return twin


def ours_with(model: nn.Module, targets, r: int, alpha: float, use_rslora: bool = False, dropout: float = 0.0):
    "A copy of `model` with our LoRA and random non-zero B (a zero B would make every comparison trivial)."
    ours = copy.deepcopy(model)
    inject_lora(ours, targets, r, alpha, dropout=dropout, use_rslora=use_rslora)
    torch.manual_seed(1)
    for layer in lora_layers(ours).values():
        nn.init.normal_(layer.lora_B.weight, std=0.1)
    return ours


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return CLIPModel.from_pretrained(save_tiny_clip(tmp_path_factory.mktemp("clip"))).eval()


@pytest.fixture(scope="module")
def clip_inputs():
    torch.manual_seed(0)
    ids = torch.randint(5, 40, (4, 7))
    ids[:, 0], ids[:, -1] = 2, 3
    return {"input_ids": ids, "pixel_values": torch.randn(4, 3, 32, 32)}


@pytest.mark.parametrize("targets, r, alpha, rslora", [(["q_proj", "v_proj"], 8, 16, False),
                                                       (["q_proj", "v_proj"], 8, 16, True),
                                                       (r".*text_model.*\.(k_proj|out_proj)", 4, 4, False),
                                                       ("all-linear", 2, 8, False)])
def test_clip_outputs_and_gradients_match_peft(clip, clip_inputs, targets, r, alpha, rslora):
    ours = ours_with(clip, targets, r, alpha, rslora)
    theirs = peft_copy(clip, ours, target_modules=targets, r=r, lora_alpha=alpha, use_rslora=rslora)
    a, b = ours(**clip_inputs, return_loss=True), theirs(**clip_inputs, return_loss=True)
    assert (a.logits_per_image - b.logits_per_image).abs().max() <= 1e-6
    a.loss.backward(), b.loss.backward()
    ours_grads = {k: p.grad for k, p in ours.named_parameters() if p.requires_grad}
    theirs_grads = {k.removeprefix(PEFT_PREFIX).replace(".default.", "."): p.grad
                    for k, p in theirs.named_parameters() if p.requires_grad}
    assert ours_grads.keys() == theirs_grads.keys()
    for k, g in ours_grads.items():
        torch.testing.assert_close(g, theirs_grads[k], rtol=0, atol=1e-6)


def test_merge_and_unmerge_equal_peft(clip, clip_inputs):
    ours = ours_with(clip, ["q_proj", "v_proj"], 8, 16)
    theirs = peft_copy(clip, ours, target_modules=["q_proj", "v_proj"], r=8, lora_alpha=16).eval()
    with torch.no_grad():
        unmerged = ours(**clip_inputs).logits_per_image
        merge_lora(ours), theirs.merge_adapter()
        merged = ours(**clip_inputs).logits_per_image
        torch.testing.assert_close(merged, unmerged, rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(merged, theirs(**clip_inputs).logits_per_image, rtol=0, atol=1e-6)
        for name, layer in lora_layers(ours).items():  # the merged weights are peft's merged weights
            torch.testing.assert_close(layer.base_layer.weight,
                                       theirs.get_submodule(PEFT_PREFIX + name).base_layer.weight, rtol=0, atol=1e-7)
        unmerge_lora(ours)
        for name, layer in lora_layers(ours).items():
            torch.testing.assert_close(layer.base_layer.weight, clip.get_submodule(name).weight, rtol=0, atol=1e-6)


def test_bf16_merge_matches_peft():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)).bfloat16()
    ours = ours_with(base, ["0"], 4, 8)
    theirs = peft_copy(base, ours, target_modules=["0"], r=4, lora_alpha=8)
    merge_lora(ours), theirs.merge_adapter()
    assert torch.equal(ours[0].base_layer.weight, theirs.base_model.model[0].base_layer.weight)


def test_dropout_acts_on_the_update_only_and_not_in_eval(clip, clip_inputs):
    ours = ours_with(clip, ["q_proj"], 4, 8, dropout=0.5)
    theirs = peft_copy(clip, ours, target_modules=["q_proj"], r=4, lora_alpha=8, lora_dropout=0.5)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        assert (ours(**clip_inputs).logits_per_image - theirs(**clip_inputs).logits_per_image).abs().max() <= 1e-6
    layer = next(iter(lora_layers(ours).values())).train()
    x = torch.randn(3, layer.base_layer.in_features)
    outs = torch.stack([layer(x) for _ in range(8)])
    assert outs.std(0).max() > 0  # dropout is live in training
    with torch.no_grad():
        nn.init.zeros_(layer.lora_B.weight)
        assert torch.equal(layer(x), layer.base_layer(x))  # and touches nothing but the update


def test_adapter_files_load_both_ways(clip, clip_inputs, tmp_path):
    ours = ours_with(clip, ["q_proj", "v_proj"], 8, 16)
    save_adapter(ours, tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(clip), tmp_path / "ours").eval()
    with torch.no_grad():
        expected = ours(**clip_inputs).logits_per_image
        assert (theirs(**clip_inputs).logits_per_image - expected).abs().max() <= 1e-6
    theirs.save_pretrained(tmp_path / "peft")
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    loaded = load_adapter(copy.deepcopy(clip), tmp_path / "peft")
    with torch.no_grad():
        assert (loaded(**clip_inputs).logits_per_image - expected).abs().max() <= 1e-6


@pytest.mark.parametrize("exclude", [["text_model.encoder.layers.0.self_attn.q_proj"], r".*vision_model.*"])
def test_peft_adapters_with_excluded_modules_load(clip, clip_inputs, tmp_path, exclude):
    "An adapter peft wrote with `exclude_modules` loads into the layers peft adapted, and computes what peft computes."
    theirs = peft.get_peft_model(copy.deepcopy(clip), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                                       exclude_modules=exclude))
    torch.manual_seed(2)
    for name, module in theirs.named_modules():
        if isinstance(module, nn.Linear) and name.endswith("lora_B.default"):
            nn.init.normal_(module.weight, std=0.1)
    theirs.save_pretrained(tmp_path / "peft")
    ours = load_adapter(copy.deepcopy(clip), tmp_path / "peft")
    adapted = {n.removeprefix(PEFT_PREFIX) for n, m in theirs.named_modules() if hasattr(m, "lora_A") and n}
    assert set(lora_layers(ours)) == adapted and len(adapted) < len(find_lora_targets(clip, ["q_proj", "v_proj"]))
    with torch.no_grad():
        expected = theirs.eval()(**clip_inputs).logits_per_image
        assert (ours.eval()(**clip_inputs).logits_per_image - expected).abs().max() <= 1e-6


def test_all_linear_picks_what_peft_picks(tmp_path):
    from transformers import Blip2ForConditionalGeneration
    model = Blip2ForConditionalGeneration.from_pretrained(save_tiny_blip2(tmp_path / "blip2"))
    ours = find_lora_targets(model, "all-linear")
    theirs = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(target_modules="all-linear", r=2))
    picked = {n.removeprefix(PEFT_PREFIX) for n, m in theirs.named_modules() if hasattr(m, "lora_A") and n}
    assert set(ours) == picked
    assert not any(n.endswith("lm_head") for n in ours)


def test_character_loader_mixes_in_the_prior_share():
    loader = character_loader(CharacterLook("Pip", "star", "orange", "big"), steps=40, batch_size=32, n_prior=64)
    captions = [c for batch in loader for c in batch["caption"]]
    assert len(captions) == 40 * 32
    share = sum("pip" not in c.lower() for c in captions) / len(captions)
    assert 0.2 < share < 0.3
    assert all(b["image"].shape == (32, 3, 32, 32) for b in loader)


def test_models_load_without_hub_kernels(clip):
    "Importing storyteller keeps transformers from swapping in kernels fetched from the Hub (USE_HUB_KERNELS=NO)."
    import os
    assert os.environ["USE_HUB_KERNELS"] == "NO" and not getattr(clip, "use_kernels", False)
