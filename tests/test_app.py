"""Chapter 8 end to end: the demo command, the story folder's round trip, bad input, and character adapters."""
import contextlib
import io
import json
import random
import re

import pytest
import torch

from storyteller.app import APP_CONFIG, StorytellerAI
from storyteller.cli import main
from storyteller.core import to_pil
from storyteller.integration.adapters import CharacterIllustrator, IllustratorAdapter
from storyteller.integration.coordinator import TaskCoordinator
from storyteller.integration.manager import ModelLoadError, ModelManager
from storyteller.models.characters import CharacterLook, adapter_weights, character_look, generate_regions, solo_caption
from storyteller.models.lora import ADAPTER_WEIGHTS, load_adapter, lora_disabled, read_adapter_config
from storyteller.story import Character, Story, StoryError, StoryScene, load_story, save_story
from storyteller.world.scenes import render, sample_scene


@pytest.fixture(scope="module")
def teller():
    "A storyteller on the default offline models with a two-character, illustrated story (shared: loading takes time)."
    teller = StorytellerAI()
    teller.create_story("Pip and Luna")
    teller.add_character("Pip", "a big orange star")
    teller.add_character("Luna", "a small pink triangle")
    teller.write_story()
    return teller


def picture(seed: int):
    return render(sample_scene(random.Random(seed), 1), 32)


def sample_story() -> Story:
    return Story("Pip and Luna", "en", "A story about Pip.",
                 {"Pip": Character("Pip", "a big orange star", picture(0)), "Luna": Character("Luna", "a small pink triangle")},
                 [StoryScene("Once upon a time, Pip lived in a meadow.", picture(1), "generated", "a meadow", ["Pip"],
                             [("What colour is Pip?", "orange")]),
                  StoryScene("Pip met Luna.", None, None, "", ["Pip", "Luna"]),
                  StoryScene("They went home.", picture(2), "user", "", [])])


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_demo_end_to_end(tmp_path, lang):
    "The main job: `storyteller demo` writes a complete, loadable story folder offline, with every picture in the page."
    out = tmp_path / "story"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["demo", "--lang", lang, "--out", str(out)]) == 0
    assert "storyteller demo: 100%" in err.getvalue()  # the progress bar ran to the end
    story = load_story(out)
    assert story.language == lang and len(story.characters) == 2 and len(story.scenes) == 6
    pictures = sorted(p.name for p in (out / "images").iterdir())
    assert len(pictures) == 8  # every scene illustrated, the reader's continuation too, and 2 character portraits
    page = (out / "story.html").read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') == 8 and all(c in page for c in story.characters)
    assert all(s.text and s.image is not None and s.questions for s in story.scenes)
    assert len({q for s in story.scenes for q, _ in s.questions}) >= 4  # the questions change from scene to scene
    assert not (tmp_path / "home" / "characters").exists()  # the demo's characters come shipped: nothing trained


def test_a_failed_save_leaves_the_old_story_whole(tmp_path, monkeypatch):
    import storyteller.app as app
    folder = save_story(sample_story(), tmp_path / "s")
    saved = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    changed = sample_story()
    changed.scenes[0].text = "A different opening."
    calls = iter(range(100))
    real = app.Path.write_bytes
    def write_bytes(path, data):  # the disk fills up on the third file
        if next(calls) >= 2:
            raise OSError("disk full")
        return real(path, data)
    monkeypatch.setattr(app.Path, "write_bytes", write_bytes)
    with pytest.raises(StoryError, match=r"cannot write the story \(disk full\)"):  # the user's error, in one line
        save_story(changed, folder)
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no staging folder left behind


def test_scene_index_out_of_range(teller):
    n = len(teller.current.scenes)
    for call in (lambda: teller.ask(n, "What colour?"), lambda: teller.illustrate_scene(n + 3),
                 lambda: teller.generate_scene_content(-n - 1)):
        with pytest.raises(StoryError, match=f"does not exist: the story has {n} scene"):
            call()


def test_unknown_language(teller, tmp_path):
    with pytest.raises(StoryError, match="language is 'fr'; valid values: en, zh"):
        StorytellerAI(teller.coordinator, language="fr")
    with pytest.raises(StoryError, match="language is 'fr'; valid values: en, zh"):
        teller.set_language("fr")
    assert teller.language == "en"
    folder = save_story(sample_story(), tmp_path / "s")
    record = json.loads((folder / "story.json").read_text())
    (folder / "story.json").write_text(json.dumps({**record, "language": "fr"}))
    with pytest.raises(StoryError, match="language is 'fr'; valid values: en, zh"):
        load_story(folder)


@pytest.mark.parametrize("tamper, message", [
    (lambda r, f: r.update(schema_version=99), "schema version 99 is not supported"),
    (lambda r, f: r["scenes"][0].update(image="../outside.png"), "scenes[0]: image path '../outside.png' leaves the story folder"),
    (lambda r, f: r["characters"][0].update(image="/etc/hostname"), "characters[0]: image path '/etc/hostname' leaves"),
    (lambda r, f: (f / "images" / "scene-002.png").write_bytes(b"GIF89a broken"), "scenes[2]: image 'images/scene-002.png' cannot be read"),
    (lambda r, f: r["scenes"][1].update(characters=["Max"]), "scenes[1]: field 'characters' names ['Max']"),
    (lambda r, f: r["scenes"][0].pop("questions"), "scenes[0]: field 'questions' is missing"),
    (lambda r, f: r.update(scenes={}), "story: field 'scenes' must be list, got dict"),
])
def test_tampered_story_folder(tmp_path, tamper, message):
    folder = save_story(sample_story(), tmp_path / "s")
    (tmp_path / "outside.png").write_bytes((folder / "images" / "scene-000.png").read_bytes())
    record = json.loads((folder / "story.json").read_text())
    tamper(record, folder)
    (folder / "story.json").write_text(json.dumps(record))
    with pytest.raises(StoryError) as error:
        load_story(folder)
    assert message in str(error.value)


def test_character_illustrator_draws_each_prompt_with_its_heros_adapter(tmp_path):
    "A mixed batch equals drawing each prompt alone with its own adapter loaded by hand (or none)."
    artist = CharacterIllustrator()
    pip, luna = (artist.learn_character(character_look(n, d), progress=False)
                 for n, d in (("Pip", "a big orange star"), ("Luna", "a small pink triangle")))
    prompts = ["Luna in the centre of a meadow", "a red circle in a forest", "Pip and Luna at the beach"]
    mixed = artist.generate_image(prompts)
    base = IllustratorAdapter(recipe="unet")  # chapter 7's illustrator: adapters only as loaded here by hand
    for prompt, adapter, image in zip(prompts, [luna, None, pip], mixed):
        if adapter is None:
            with lora_disabled(base.model.denoiser):
                alone = base.generate_image([prompt])[0]
        else:
            load_adapter(base.model.denoiser, adapter)
            alone = base.generate_image([prompt])[0]
        assert alone.tobytes() == image.tobytes(), prompt


def test_two_characters_in_their_places_are_drawn_by_regions():
    """A prompt that places Pip and Luna is drawn by regions, as `generate_regions` draws them: a character whose look
    the prompt gives from its look words by the base model, one named only by its name with its adapter."""
    artist = CharacterIllustrator()
    folders = {n: artist.learn_character(character_look(n, d), progress=False)
               for n, d in (("Pip", "a big orange star"), ("Luna", "a small pink triangle"))}
    looks = artist.regions("a meadow with Pip the big orange star on the left, to the left of Luna the small pink triangle on the right")
    assert [(r.adapter, r.position) for r in looks] == [(None, "left"), (None, "right")]
    assert looks[1].caption == "a small pink triangle on the right of a meadow"
    prompt = "a meadow with Pip on the left, to the left of Luna the small pink triangle on the right"
    regions = artist.regions(prompt)
    assert [(r.adapter, r.position) for r in regions] == [("Pip", "left"), (None, "right")]
    assert regions[0].caption == solo_caption("Pip", "left", "meadow")
    assert artist.regions("Pip and Luna at the beach") is None  # no places: drawn with the hero's adapter
    assert artist.regions("Pip on the left and Luna on the left in a meadow") is None
    mixed = artist.generate_image(["Luna in the centre of a meadow", prompt])
    weights = {n: adapter_weights(artist.model.denoiser, f) for n, f in folders.items()}
    by_hand = generate_regions(artist.model, [regions], weights, steps=artist.steps,
                                    guidance_scale=artist.guidance_scale, generator=torch.Generator().manual_seed(artist.seed))
    assert to_pil(by_hand[0]).tobytes() == mixed[1].tobytes()


def test_a_new_character_is_trained_once_then_cached(monkeypatch):
    "Max has no shipped adapter: `learn` trains one into STORYTELLER_HOME, and the second call only loads it."
    artist = CharacterIllustrator()
    max_look = CharacterLook("Max", "circle", "blue", "small")
    folder = artist.learn_character(max_look, steps=3, progress=False)
    assert folder.parent.name == "characters" and folder.name == f"Max-small-blue-circle-3-32pairs-{artist.base}"
    assert re.fullmatch(r"shipped-unet-[0-9a-f]{6}", artist.base)  # names the shipped U-Net it fits
    assert read_adapter_config(folder)["r"] == 8
    stamp = (folder / ADAPTER_WEIGHTS).stat().st_mtime_ns
    monkeypatch.setattr("storyteller.integration.adapters.teach_character", lambda *a, **k: pytest.fail("trained again"))
    assert CharacterIllustrator().learn_character(max_look, steps=3, progress=False) == folder
    assert (folder / ADAPTER_WEIGHTS).stat().st_mtime_ns == stamp


def test_a_config_can_name_character_adapters():
    "The `characters` option puts adapters to use by name (a Chinese name maps to its StoryWorld name)."
    pip = CharacterIllustrator().learn_character(character_look("Pip", "a big orange star"), progress=False)
    config = {"models": [{"name": "illustrator", "type": "character-illustrator", "options": {"characters": {"皮普": str(pip)}}}]}
    artist = ModelManager.from_config(config).get("illustrator")
    assert artist.adapters == {"Pip": pip} and artist.hero("皮普在草地上") == "Pip"


def test_bad_character_adapter_in_a_config_is_reported(tmp_path):
    config = {"models": [m for m in APP_CONFIG["models"] if m["name"] != "illustrator"] +
              [{"name": "illustrator", "type": "character-illustrator", "options": {"characters": {"Pip": str(tmp_path)}}}]}
    teller = StorytellerAI(TaskCoordinator(ModelManager.from_config(config)))
    teller.create_story("Pip")
    teller.add_character("Pip", "a big orange star")
    with pytest.raises(ModelLoadError, match="illustrator") as error:
        teller.write_story()
    assert "no adapter config" in str(error.value.__cause__)


def test_cli_user_errors_are_one_line(tmp_path):
    story = save_story(sample_story(), tmp_path / "s")
    config = tmp_path / "models.json"
    config.write_text(json.dumps({"models": [{"name": "x", "type": "character-illustrator", "options": {"colour": 1}}]}))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["demo", "--lang", "fr"]) == 2
        assert main(["models", "--config", str(config)]) == 2
        assert main(["tell", "--config", str(tmp_path / "none.yaml"), "--prompt", "Pip", "--out", str(story)]) == 2
    lines = err.getvalue().strip().split("\n")
    assert len(lines) == 3 and all(line.startswith("storyteller") and "error" in line for line in lines), lines
    assert "invalid choice: 'fr'" in lines[0] and "'colour'" in lines[1] and "no such config file" in lines[2]
    assert load_story(story) == sample_story()  # the failed `tell` left the story folder alone


def test_tell_learns_the_characters_the_prompt_names(tmp_path):
    config = tmp_path / "models.yaml"
    config.write_text("models:\n  - {name: writer, type: writer}\n  - {name: describer, type: describer}\n"
                      "  - {name: illustrator, type: character-illustrator}\n")
    assert main(["tell", "--config", str(config), "--prompt", "A story about Luna, a small pink triangle.",
                 "--out", str(tmp_path / "luna")]) == 0
    story = load_story(tmp_path / "luna")
    assert story.characters["Luna"].description == "a small pink triangle"
    assert all("Luna" in s.characters for s in story.scenes)
