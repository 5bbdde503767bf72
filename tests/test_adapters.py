"""The four Hugging Face families (CLIP, BLIP-2, LLaVA, Qwen2-VL / Qwen2.5-VL) through the model manager: tiny
random-weight models of the real classes, saved with `save_pretrained` and loaded by path with the hub offline; every
capability each adapter declares, exercised. Also the book's own models as adapters."""
import dataclasses
import os
import random

import pytest
import torch

from storyteller.integration.adapters import (
    BLIP2Adapter,
    Capability,
    CLIPAdapter,
    LLaVAAdapter,
    QwenVLAdapter,
    UnsupportedCapability,
    trim_prompts,
)
from storyteller.integration.config import MODEL_TYPES
from storyteller.integration.coordinator import TaskCoordinator
from storyteller.integration.manager import ModelManager
from storyteller.integration.tiny import tiny_hf_config
from storyteller.world.scenes import render, sample_scene
from storyteller.world.text import caption

SCENES = [sample_scene(random.Random(i), 1) for i in range(4)]
IMAGES = [render(s, 32) for s in SCENES]
TEXTS = [caption(s) for s in SCENES]


def weights(manager: ModelManager, name: str) -> int:
    "The estimate of model `name`'s weights alone (the manager's estimate adds the memory a generation works in)."
    spec = manager.spec(name)
    assert manager.estimate(name) == MODEL_TYPES[spec.type].estimate_bytes(spec) + MODEL_TYPES[spec.type].working_bytes(spec)
    return MODEL_TYPES[spec.type].estimate_bytes(spec)


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    "A manager over tiny models of every family, written to a temporary folder and named by path."
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    return ModelManager.from_config(tiny_hf_config(tmp_path_factory.mktemp("tiny")))


@pytest.mark.parametrize("name, adapter, model_class", [
    ("clip", CLIPAdapter, "CLIPModel"),
    ("blip2", BLIP2Adapter, "Blip2ForConditionalGeneration"),
    ("llava", LLaVAAdapter, "LlavaForConditionalGeneration"),
    ("qwen2-vl", QwenVLAdapter, "Qwen2VLForConditionalGeneration"),
    ("qwen2.5-vl", QwenVLAdapter, "Qwen2_5_VLForConditionalGeneration"),
])
def test_loads_by_path_as_the_real_class(hf, name, adapter, model_class):
    model = hf.get(name)
    assert type(model) is adapter and type(model.model).__name__ == model_class
    assert model.capabilities == hf.capabilities(name)  # what routing assumed before loading is what loaded
    sized = [model.model] + ([model.retrieval] if name == "blip2" else [])
    assert weights(hf, name) == sum(t.numel() * t.element_size() for m in sized for t in [*m.parameters(), *m.buffers()])


def test_clip_embeddings_are_unit_float32_and_similarity_is_clips_cosine(hf):
    clip = hf.get("clip")
    images, texts = clip.encode_image(IMAGES), clip.encode_text(TEXTS)
    assert images.dtype == texts.dtype == torch.float32 and images.shape[0] == 4 and texts.shape[0] == 4
    torch.testing.assert_close(images.norm(dim=1), torch.ones(4))
    inputs = clip.processor(images=IMAGES, text=TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        reference = clip.model(**inputs).logits_per_image / clip.model.logit_scale.exp()
    torch.testing.assert_close(clip.similarity(IMAGES, TEXTS), reference, atol=1e-5, rtol=1e-5)
    with pytest.raises(UnsupportedCapability, match="'clip' does not support captioning"):
        clip.caption(IMAGES)


def test_blip2_captions_answers_and_matches_through_the_retrieval_checkpoint(hf):
    blip2 = hf.get("blip2")
    captions = blip2.caption(IMAGES, max_new_tokens=5)
    assert len(captions) == 4 and all(isinstance(c, str) for c in captions)
    questions = ["what colour is the shape?", "where is the shape in the picture?"]
    batch = blip2.answer_question(IMAGES[:2], questions, max_new_tokens=5)
    assert batch == [blip2.answer_question([i], [q], max_new_tokens=5)[0] for i, q in zip(IMAGES[:2], questions)]
    assert all("question" not in a.lower() for a in batch)  # the prompt is cut off
    sim = blip2.similarity(IMAGES, TEXTS[:3])
    assert sim.shape == (4, 3) and sim.abs().max() <= 1 + 1e-5
    torch.testing.assert_close(blip2.similarity(IMAGES[2:3], TEXTS[1:2])[0, 0], sim[2, 1])
    torch.testing.assert_close(blip2.encode_text(TEXTS).norm(dim=1), torch.ones(4))
    with pytest.raises(UnsupportedCapability, match="image_embedding"):
        blip2.encode_image(IMAGES)


@pytest.mark.parametrize("name", ["llava", "qwen2-vl", "qwen2.5-vl"])
def test_chat_models_batch_mixed_inputs_trim_prompts_and_stream(hf, name):
    vlm = hf.get(name)
    prompts = ["tell a story about a red star", "describe the picture", "what colour is the shape on the left?"]
    mixed = vlm.generate_text(prompts, [None, IMAGES[0], IMAGES[1]], max_new_tokens=5)
    alone = [vlm.generate_text([p], [im], max_new_tokens=5)[0] for p, im in zip(prompts, [None, IMAGES[0], IMAGES[1]])]
    assert mixed == alone
    inputs = vlm._inputs(prompts, [None, IMAGES[0], IMAGES[1]])
    assert (inputs["attention_mask"][:, -1] == 1).all()  # left padding: every row ends in a real token
    with torch.no_grad():
        out = vlm.model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert all(len(t) == 3 for t in trim_prompts(inputs["input_ids"], out))  # new tokens only, per row
    assert vlm.caption(IMAGES[:2], "story") == vlm.generate_text(
        ["Tell a one-sentence story for children about this picture."] * 2, IMAGES[:2])
    answers = vlm.answer_question(IMAGES[:2], ["what colour?", "where is it?"], max_new_tokens=4)
    assert len(answers) == 2
    streamed = list(vlm.stream_text("describe the picture", IMAGES[0], max_new_tokens=6))
    assert "".join(streamed).split() == vlm.generate_text(["describe the picture"], [IMAGES[0]], 6)[0].split()


def test_qwen_takes_several_images_and_pixel_limits_and_chinese(hf):
    qwen = hf.get("qwen2.5-vl")  # configured with min_pixels 28², max_pixels 56²
    inputs = qwen._inputs(["compare the two pictures"], [[IMAGES[0], render(SCENES[1], 96)]])
    assert inputs["image_grid_thw"].tolist() == [[1, 2, 2], [1, 2, 2]]
    assert len(qwen.caption(IMAGES[:1], language="zh", max_new_tokens=3)) == 1
    llava = hf.get("llava")
    with pytest.raises(ValueError, match="one image per prompt"):
        llava.generate_text(["compare"], [[IMAGES[0], IMAGES[1]]])
    with pytest.raises(UnsupportedCapability, match="'llava' does not support captioning in 'zh'"):
        llava.caption(IMAGES[:1], language="zh")


def test_coordinator_routes_across_the_families(hf):
    coordinator = TaskCoordinator(hf)
    assert coordinator.route(Capability.MATCHING) == "clip"
    assert coordinator.route(Capability.CAPTIONING) == "blip2"
    assert coordinator.route(Capability.CAPTIONING, "zh") == "qwen2-vl"
    assert coordinator.route(Capability.STREAMING) == "llava"
    assert coordinator.route([Capability.IMAGE_EMBEDDING, Capability.TEXT_EMBEDDING]) == "clip"
    assert len(coordinator.retrieve(TEXTS[0], IMAGES, top_k=2)) == 2
    chosen = coordinator.ensemble_caption(IMAGES[:2], "short")
    assert all(name in ("blip2", "llava", "qwen2-vl", "qwen2.5-vl") for _, name in chosen)


def test_a_story_gets_a_storys_length_not_a_captions(hf, monkeypatch):
    "The writer may write `STORY_TOKENS` new tokens, streaming too, where a caption gets 60."
    from storyteller.integration.adapters import STORY_TOKENS

    coordinator = TaskCoordinator(hf)
    writer = hf.get(coordinator.route(Capability.TEXT_GENERATION))
    count = lambda text: len(writer.processor.tokenizer(text, add_special_tokens=False)["input_ids"])
    story = coordinator.write_story("A story about Pip.", max_new_tokens=120)  # a random tiny model rarely stops early
    assert 60 < count(story) <= 120 + 2  # decoding and re-encoding may merge or split a token at the seams
    assert "".join(coordinator.stream("A story about Pip.", max_new_tokens=120)) == story
    asked = []
    for name in ("llava", "qwen2-vl"):
        model = hf.get(name)
        monkeypatch.setattr(model, "generate_text", lambda prompts, images=None, max_new_tokens=60: asked.append(max_new_tokens) or ["…"])
    coordinator.write_story("A story about Pip."), coordinator.write_story("讲一个关于皮普的故事。")
    assert asked == [STORY_TOKENS, STORY_TOKENS] and STORY_TOKENS >= 300


def test_vqa_prompt_formats(hf, monkeypatch):
    blip2 = hf.get("blip2")
    seen = []
    original = blip2._generate
    monkeypatch.setattr(blip2, "_generate", lambda images, prompts, n: seen.append(prompts) or original(images, prompts, n))
    blip2.answer_question(IMAGES[:2], ["what colour is the star?", "where is it?"], max_new_tokens=2)
    assert seen == [["Question: what colour is the star? Answer:", "Question: where is it? Answer:"]]
    llava, qwen = hf.get("llava"), hf.get("qwen2-vl")
    template = llava.processor.apply_chat_template(llava.conversation("what colour is it?", IMAGES[0]),
                                                   add_generation_prompt=True)
    assert template == "USER: <image>\nwhat colour is it? ASSISTANT:"
    template = qwen.processor.apply_chat_template(qwen.conversation("它是什么颜色？", [IMAGES[0], IMAGES[1]]),
                                                  add_generation_prompt=True)
    assert template.count("<|vision_start|><|image_pad|><|vision_end|>") == 2
    assert template.endswith("它是什么颜色？<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_size_estimate_follows_dtype_and_float32_modules(hf, dtype):
    config = {"models": [{**{k: v for k, v in vars(hf.spec(name)).items() if v not in (None, {})}, "dtype": dtype}
                         for name in ("blip2", "qwen2-vl")]}
    manager = ModelManager.from_config(config)
    for name in ("blip2", "qwen2-vl"):
        adapter = manager.get(name)
        modules = [adapter.model] + ([adapter.retrieval] if name == "blip2" else [])
        loaded = sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()])
        assert weights(manager, name) == loaded, name  # BLIP-2 keeps its Q-Former in float32 under float16


def test_blip2_retrieval_model_is_never_quantized_and_is_sized_as_loaded(hf, monkeypatch):
    """Beside an 8-bit caption model on CUDA, the retrieval model loads in float16 without bitsandbytes (its contrastive
    head casts activations to the projections' weight dtype, int8 when quantized), and the estimate counts it so."""
    import transformers

    spec, loads = hf.spec("blip2"), {}

    def recording(model_class):
        "`from_pretrained` that notes its arguments and loads on the CPU, unquantized: no GPU nor bitsandbytes here."
        original = model_class.from_pretrained

        def load(path, **kwargs):
            loads[model_class.__name__] = kwargs
            return original(path, dtype=kwargs["dtype"])
        return load

    for model_class in (transformers.Blip2ForConditionalGeneration, transformers.Blip2ForImageTextRetrieval):
        monkeypatch.setattr(model_class, "from_pretrained", recording(model_class))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    blip2 = BLIP2Adapter(spec.path, retrieval_path=spec.options["retrieval_path"], device="cuda", quantization="8bit")
    assert loads["Blip2ForConditionalGeneration"]["quantization_config"].load_in_8bit
    assert loads["Blip2ForImageTextRetrieval"] == {"device_map": {"": 0}, "dtype": torch.float16}
    quantized = MODEL_TYPES["blip2"].estimate_bytes(dataclasses.replace(spec, device="cuda", quantization="8bit"))
    captioner = MODEL_TYPES["blip2"].estimate_bytes(dataclasses.replace(spec, device="cuda", quantization="8bit", options={}))
    retrieval = sum(t.numel() * t.element_size() for t in [*blip2.retrieval.parameters(), *blip2.retrieval.buffers()])
    assert blip2.retrieval.qformer.layernorm.weight.dtype == torch.float32  # the Q-Former stays float32 under float16
    assert quantized - captioner == retrieval  # the retrieval model's estimate is what loaded
