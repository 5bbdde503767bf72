"""The model manager and the task coordinator on the book's own models: config validation, lazy loading, the memory
budget with pinning, unloading, concurrent loads, failures, routing, the embedding cache and feedback on disk."""
import asyncio
import contextlib
import json
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from storyteller.checks import ConfigError
from storyteller.integration.adapters import Capability, StoryWriterAdapter, UnsupportedCapability
from storyteller.integration.config import OFFLINE_CONFIG, parse_config, read_config, register_model_type
from storyteller.integration.coordinator import NoCapableModel, TaskCoordinator
from storyteller.integration.manager import BudgetExceeded, EmbeddingCache, ModelLoadError, ModelManager
from storyteller.world.scenes import render, sample_scene
from storyteller.world.text import caption

SCENES = [sample_scene(random.Random(i), 1) for i in range(4)]
IMAGES = [render(s, 32) for s in SCENES]
TEXTS = [caption(s) for s in SCENES]


@pytest.mark.parametrize("text, message", [
    ("models:\n  - {name: a, type: clipp, path: x}\n", "models[0] ('a'): field 'type' is 'clipp'; known types:"),
    ("models:\n  - {name: a, type: llava}\n", "models[0] ('a'): field 'path' is missing"),
    ("models:\n  - {name: a, type: clip, path: x, dtype: half}\n", "models[0] ('a'): field 'dtype' is 'half'"),
    ("models:\n  - {name: a, type: clip, path: x, quantization: 8bit}\n", "field 'quantization' needs a CUDA device"),
    ("models:\n  - {name: a, type: clip, path: x, quantization: 2bit, device: cuda}\n", "field 'quantization' is '2bit'"),
    ("models:\n  - {name: a, type: clip, path: x, device: tpu}\n", "field 'device' is 'tpu'"),
    ("models:\n  - {name: a, type: clip, path: x, colour: red}\n", "models[0] ('a'): unknown field 'colour'"),
    ("models:\n  - {name: a, type: blip2, path: x, options: {retrieval: y}}\n", "field 'options' has 'retrieval'"),
    ("models:\n  - {name: w, type: writer}\n  - {name: w, type: writer}\n", "models[1]: field 'name' repeats 'w'"),
    ("models:\n  - {type: writer}\n", "models[0]: field 'name' is missing"),
    ("models: {name: w}\n", "expected a mapping with a 'models' list"),
    ("models: [\n", "not valid YAML"),
])
def test_bad_configs_name_the_entry_and_the_field(tmp_path, text, message):
    path = tmp_path / "models.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)")):
        read_config(path)


def test_json_and_yaml_configs_agree(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(OFFLINE_CONFIG))
    (tmp_path / "a.yml").write_text("models:\n" + "".join(f"  - {{name: {m['name']}, type: {m['type']}}}\n"
                                                          for m in OFFLINE_CONFIG["models"]))
    assert read_config(tmp_path / "a.json") == read_config(tmp_path / "a.yml") == parse_config(OFFLINE_CONFIG)
    with pytest.raises(ConfigError, match="no such config file"):
        read_config(tmp_path / "missing.json")


def test_missing_model_and_no_capable_model():
    manager = ModelManager.from_config(OFFLINE_CONFIG)
    with pytest.raises(KeyError, match="no model named 'llava'; the config has miniclip, describer, writer, illustrator"):
        manager.get("llava")
    coordinator = TaskCoordinator(manager)
    with pytest.raises(NoCapableModel, match=r"no configured model offers captioning in 'fr'; models: miniclip "
                                             r"\(no captioning\); describer \(languages: en, zh\)"):
        coordinator.caption(IMAGES, language="fr")
    with pytest.raises(NoCapableModel, match="models: none"):
        TaskCoordinator(ModelManager([])).route(Capability.MATCHING)
    with pytest.raises(NoCapableModel, match="offers image_generation"):
        TaskCoordinator(manager, order=["miniclip", "describer"]).illustrate(["a red star"])
    assert manager.loaded() == []  # routing decided everything without loading a model


def test_load_failure_is_reported_with_its_cause_and_changes_nothing(tmp_path):
    manager = ModelManager.from_config({"models": [
        {"name": "ghost", "type": "clip", "path": str(tmp_path / "no-such-model")},
        {"name": "bad", "type": "describer", "path": str(tmp_path / "judge.safetensors")}, {"name": "w", "type": "writer"}]})
    manager.get("w")
    with pytest.raises(ModelLoadError, match=r"model 'ghost' \(type 'clip', path '.*no-such-model'\) failed to load"):
        manager.get("ghost")
    (tmp_path / "judge.safetensors").write_bytes(b"garbage")
    (tmp_path / "judge.json").write_text('{"name": "judge"}')
    with pytest.raises(ModelLoadError, match="model 'bad'") as info:
        manager.get("bad")
    assert info.value.__cause__ is not None
    assert manager.loaded() == ["w"] and [e.kind for e in manager.events] == ["load", "fail", "fail"]


def test_budget_evicts_least_recently_used_but_never_a_pinned_model():
    manager = ModelManager.from_config(OFFLINE_CONFIG)
    size = {n: manager.estimate(n) for n in manager.specs}
    small = ModelManager.from_config(OFFLINE_CONFIG, memory_budget=size["illustrator"] + size["describer"])
    small.get("miniclip"), small.get("describer")
    small.get("illustrator")  # too big for all three: miniclip, the least recently used, goes
    assert small.loaded() == ["describer", "illustrator"] and small.events[-2].kind == "evict"
    with small.use("illustrator"), small.use("describer"):
        with pytest.raises(BudgetExceeded, match="models in use or loading hold .* MiB: illustrator, describer"):
            small.get("miniclip")
        with pytest.raises(RuntimeError, match="'illustrator' is in use and cannot be unloaded"):
            small.unload("illustrator")
    assert small.loaded() == ["illustrator", "describer"]  # nothing evicted; least recently used first
    with small.use("illustrator"):
        small.get("miniclip")  # evicts the describer, not the pinned illustrator
    assert small.loaded() == ["illustrator", "miniclip"] and small.used_bytes <= small.memory_budget
    assert small.counts()["reload"] == 1


def test_registry_cache_and_feedback_persist(tmp_path):
    class TwoParagraphs(StoryWriterAdapter):
        type_name = "two-paragraphs"

        def __init__(self, name: str = "writer"):
            super().__init__(name, paragraphs=2)
    register_model_type(TwoParagraphs)
    manager = ModelManager.from_config({"models": [*OFFLINE_CONFIG["models"], {"name": "short", "type": "two-paragraphs"}]})
    coordinator = TaskCoordinator(manager, cache=EmbeddingCache(tmp_path / "cache.safetensors"),
                                  feedback_path=tmp_path / "feedback.json")
    assert len(coordinator.write_story("Pip").split("\n\n")) == 4
    coordinator.record_feedback(Capability.TEXT_GENERATION, "short", 1.0)
    assert len(TaskCoordinator(manager, feedback_path=tmp_path / "feedback.json").write_story("Pip").split("\n\n")) == 2
    assert coordinator.retrieve(TEXTS[2], IMAGES) == [2]
    coordinator.cache.save()
    reopened = EmbeddingCache(tmp_path / "cache.safetensors")
    reopened.embed(manager.get("miniclip"), IMAGES + [TEXTS[2]])
    assert (reopened.hits, reopened.misses) == (5, 0)


def test_streams_release_their_pin_and_raise_errors():
    manager = ModelManager.from_config(OFFLINE_CONFIG)
    coordinator = TaskCoordinator(manager)
    stream = coordinator.stream("A story about Pip.")
    next(stream)
    with pytest.raises(RuntimeError, match="in use"):
        manager.unload("writer")
    stream.close()
    manager.unload("writer")
    with pytest.raises(NoCapableModel, match=r"offers streaming \+ captioning in 'en'.*writer \(no captioning\)"):
        list(coordinator.stream("describe this", IMAGES[0]))  # a picture needs a model that sees

    async def collect():
        return [chunk async for chunk in coordinator.astream("A story about Pip.")]
    assert "".join(asyncio.run(collect())) == coordinator.write_story("A story about Pip.")

    async def first_only():
        async with contextlib.aclosing(coordinator.astream("A story about Pip.")) as chunks:
            async for chunk in chunks:
                return chunk
    assert asyncio.run(first_only()).startswith("Once upon a time")
    assert manager._pins["writer"] == 0  # left early, closed: the writer is free again

    async def failing():
        return [chunk async for chunk in coordinator.astream("describe this", IMAGES[0])]
    with pytest.raises(NoCapableModel):
        asyncio.run(failing())
    with pytest.raises(UnsupportedCapability, match="'writer' does not support captioning"):
        list(StoryWriterAdapter().stream_text("describe this", IMAGES[0]))


def test_different_models_load_in_parallel_and_bad_requests_are_named():
    barrier = __import__("threading").Barrier(2, timeout=10)

    class Rendezvous(StoryWriterAdapter):
        type_name = "rendezvous"

        @classmethod
        def from_spec(cls, spec):
            barrier.wait()  # both builds must be running at once, or this times out and the load fails
            return cls(spec.name)
    register_model_type(Rendezvous)
    manager = ModelManager.from_config({"models": [{"name": "a", "type": "rendezvous"}, {"name": "b", "type": "rendezvous"}]})
    with ThreadPoolExecutor(2) as pool:
        models = list(pool.map(manager.get, ["a", "b"]))
    assert [m.name for m in models] == ["a", "b"] and manager.counts()["fail"] == 0
    coordinator = TaskCoordinator(ModelManager.from_config(OFFLINE_CONFIG))
    from storyteller.integration.coordinator import Request
    with pytest.raises(ValueError, match=r"requests\[1\]: a 'caption' request needs field 'image'"):
        coordinator.run_batch([Request("caption", image=IMAGES[0]), Request("caption", text="a star")])
    with pytest.raises(ValueError, match="got 2 images and 1 questions"):
        coordinator.answer(IMAGES[:2], ["What is the background?"])
    assert coordinator.caption([]) == [] and coordinator.illustrate([]) == []
