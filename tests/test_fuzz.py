"Fuzz tests: whatever a story folder or a config holds, the library answers with a result or its own error, never a traceback."
import copy
import json
import random
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from storyteller.checks import ConfigError
from storyteller.core import get_profile
from storyteller.integration.config import OFFLINE_CONFIG, parse_config, read_config
from storyteller.recipes import get_recipe, resolve_config
from storyteller.story import Character, Story, StoryError, StoryScene, load_story, png_ready, save_story, story_record

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


def slots(node, found=None) -> list:
    "Every (container, key) inside a parsed JSON value, the places a mutation can hit."
    found = [] if found is None else found
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        found.append((node, key))
        slots(value, found)
    return found


@st.composite
def mutated(draw, record: dict) -> dict:
    "`record` with one to three of its values replaced, removed, or given a stray sibling."
    record = copy.deepcopy(record)
    for _ in range(draw(st.integers(1, 3))):
        places = slots(record)
        if not places:
            break
        container, key = places[draw(st.integers(0, len(places) - 1))]
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if action == "replace":
            container[key] = draw(json_values)
        elif action == "remove":
            del container[key]
        elif isinstance(container, dict):
            container[draw(st.text(max_size=8))] = draw(json_values)
        else:
            container.insert(key, draw(json_values))
    return record


def picture(seed: int, mode: str = "RGB", size: tuple[int, int] = (6, 5)) -> Image.Image:
    rng = random.Random(seed)
    image = Image.new("RGB", size)
    image.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(size[0] * size[1])])
    return image if mode == "RGB" else image.convert(mode)


def base_story() -> Story:
    return Story("Pip", "en", "", {"Pip": Character("Pip", "a big orange star", picture(0))},
                 [StoryScene("Pip sang.", picture(1), "generated", "a meadow", ["Pip"], [("Who?", "Pip")]),
                  StoryScene("The end.")])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return save_story(base_story(), tmp_path_factory.mktemp("fuzz") / "story")


def copy_of(saved, tmp_path, name: str):
    target = tmp_path / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(saved, target)
    return target


def loads_or_refuses(folder) -> Story | None:
    "Load `folder`: a story, or a StoryError; a loaded story must save and load back unchanged."
    try:
        story = load_story(folder)
    except StoryError:
        return None
    again = load_story(save_story(story, folder.with_name(folder.name + "-again")))
    assert again == story
    return story


@FUZZ
@given(data=st.data())
def test_mutated_story_records(saved, tmp_path, data):
    record = data.draw(mutated(story_record(base_story())))
    folder = copy_of(saved, tmp_path, "mutated")
    (folder / "story.json").write_text(json.dumps(record), encoding="utf-8")
    loads_or_refuses(folder)


@FUZZ
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_arbitrary_story_json(saved, tmp_path, raw):
    folder = copy_of(saved, tmp_path, "raw")
    (folder / "story.json").write_bytes(raw)
    loads_or_refuses(folder)


@FUZZ
@given(data=st.data())
def test_damaged_pictures(saved, tmp_path, data):
    folder = copy_of(saved, tmp_path, "damaged")
    path = folder / "images" / "scene-000.png"
    png = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(png) - 1))
        if data.draw(st.booleans()):
            png[at] = data.draw(st.integers(0, 255))
        else:
            del png[at:at + data.draw(st.integers(1, 16))]
    path.write_bytes(bytes(png))
    loads_or_refuses(folder)


MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F", "CMYK", "YCbCr", "HSV", "RGBa", "PA", "RGBX"]
names = st.text(min_size=1, max_size=10)


@st.composite
def stories(draw) -> Story:
    "Any story the dataclasses can hold: any text, pictures in any mode Pillow converts, scenes naming its characters."
    images = st.builds(picture, st.integers(0, 99), st.sampled_from(MODES), st.tuples(st.integers(1, 5), st.integers(1, 5)))
    cast = draw(st.lists(names, max_size=3, unique=True))
    characters = {n: Character(n, draw(st.text(max_size=20)), draw(st.none() | images)) for n in cast}
    scenes = [StoryScene(draw(st.text(max_size=40)), image, draw(st.none() | st.sampled_from(["user", "generated", "retrieved"])),
                         draw(st.text(max_size=20)), draw(st.lists(st.sampled_from(cast), max_size=2)) if cast else [],
                         draw(st.lists(st.tuples(st.text(max_size=10), st.text(max_size=10)), max_size=2)))
              for image in draw(st.lists(st.none() | images, max_size=4))]
    return Story(draw(st.text(max_size=30)), draw(st.sampled_from(["en", "zh"])), draw(st.text(max_size=30)), characters, scenes)


def as_saved(image: Image.Image | None) -> tuple | None:
    "What a picture is after a save: PNG's mode for it, and its pixels."
    if image is None:
        return None
    image = png_ready(image)
    return image.mode, image.size, image.tobytes()


@FUZZ
@given(story=stories())
def test_any_story_round_trips(tmp_path, story):
    "Saving drops nothing: every field comes back, every picture as PNG holds it (`png_ready`)."
    back = load_story(save_story(story, tmp_path / "story"))
    assert story_record(back) == story_record(story)
    originals = [c.image for c in story.characters.values()] + [s.image for s in story.scenes]
    loaded = [c.image for c in back.characters.values()] + [s.image for s in back.scenes]
    assert [as_saved(i) for i in loaded] == [as_saved(i) for i in originals]


@FUZZ
@given(config=mutated(OFFLINE_CONFIG))
def test_mutated_model_configs(config):
    try:
        specs = parse_config(config)
    except ConfigError:
        return
    assert [s.name for s in specs] == [m["name"] for m in config["models"]]


@FUZZ
@given(text=st.text(max_size=200), suffix=st.sampled_from([".json", ".yaml"]))
def test_arbitrary_config_files(tmp_path, text, suffix):
    path = tmp_path / f"models{suffix}"
    path.write_text(text, encoding="utf-8")
    try:
        read_config(path)
    except ConfigError:
        pass


@FUZZ
@given(data=st.data())
def test_recipe_overrides(data):
    recipe = get_recipe(data.draw(st.sampled_from(["miniclip", "vqvae", "vqgan", "unet", "dit", "prior"])))
    fields = recipe.config_type.field_names()
    overrides = data.draw(st.dictionaries(st.sampled_from(fields) | st.text(max_size=8), json_values, max_size=3))
    try:
        config = resolve_config(recipe, get_profile("cpu"), **overrides)
    except ConfigError:
        return
    assert type(config) is recipe.config_type
    assert recipe.config_type.from_dict(config.to_dict()) == config  # what it stores reads back
