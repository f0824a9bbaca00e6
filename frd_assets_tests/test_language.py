"""The seed's language: detected on short instructions, stored by seed_dataset, overridden per run, held to by the
gate (`off_language`) and written to the dataset card."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, materialize

from benchmarks.short_instructions import SHORT_INSTRUCTIONS
from frd_assets.core.config_checks import ConfigError
from frd_assets.core.generation.self_instruct import GenerationConfig
from frd_assets.core.language import (
    OFF_LANGUAGE_BELOW,
    OTHER_AT_LEAST,
    SeedLanguage,
    detect,
    detect_seed_language,
    is_off_language,
    language_name,
    probabilities,
    seed_language,
)
from frd_assets.core.quality.dataset_card import dataset_card
from frd_assets.core.validation import OFF_LANGUAGE, ValidationConfig, validate
from frd_assets.defs.config import GenerationRunConfig, ValidationRunConfig

# A Russian seed written for these tests: varied tasks, some with an input.
RUSSIAN_SEED = [json.loads(line) for line in
                (Path(__file__).parent / "data" / "russian_seed.jsonl").read_text(encoding="utf-8").splitlines()]


def russian_seed_rows() -> list[dict]:
    return [{"id": f"ru-{i}", **task} for i, task in enumerate(RUSSIAN_SEED)]


# Generated-looking Russian records: distinct from the seed and from each other.
RUSSIAN_RECORDS = [
    {"instruction": "Предложи три идеи для выходных в дождливую погоду.", "input": "",
     "output": "Сходить в музей, испечь пирог, устроить вечер настольных игр."},
    {"instruction": "Объясни, зачем растениям нужен солнечный свет.", "input": "",
     "output": "На свету растения делают из воды и углекислого газа сахар, которым питаются."},
    {"instruction": "Сократи текст до одного предложения.", "input": "Кот проснулся рано. Он долго смотрел в окно.",
     "output": "Проснувшись рано, кот долго смотрел в окно."},
    {"instruction": "Придумай название для кафе у реки.", "input": "", "output": "«Тихая пристань»."},
    {"instruction": "Перечисли признаки простуды у взрослого человека.", "input": "",
     "output": "Насморк, боль в горле, кашель, слабость, иногда небольшая температура."},
]
ENGLISH_RECORD = {"instruction": "Write a limerick about a cat who learns to swim.", "input": "",
                  "output": "A cat from the coast of Peru..."}


def test_detection_on_short_instructions_is_at_least_95_percent_right():
    """benchmarks/short_instructions.py, 160 lines in eight languages (Ukrainian beside Russian): py3langid
    through core measured 97.5% (the misses: a four-word Russian line, a Ukrainian one, two short Spanish
    ones); 95% overall and 85% per language leave room for a model update, not for a broken detector."""
    right = {lang: sum(detect(text)[0] == lang for text in items) / len(items)
             for lang, items in SHORT_INSTRUCTIONS.items()}
    overall = sum(right[lang] * len(items) for lang, items in SHORT_INSTRUCTIONS.items()) / sum(
        len(items) for items in SHORT_INSTRUCTIONS.values())
    assert overall >= 0.95, right
    assert min(right.values()) >= 0.85, right


def test_a_seed_takes_its_majority_language_and_a_mixed_one_says_so():
    for lang, items in SHORT_INSTRUCTIONS.items():
        found = detect_seed_language(items)
        assert (found.code, found.name) == (lang, language_name(lang)) and not found.mixed
    mixed = detect_seed_language(SHORT_INSTRUCTIONS["ru"][:12] + SHORT_INSTRUCTIONS["en"][:8])
    assert mixed.code == "ru" and mixed.mixed and 0.5 < mixed.share < 0.8
    assert mixed.note.startswith("mixed seed") and "English" in mixed.note
    with pytest.raises(ValueError, match="set the run config's `language`"):
        detect_seed_language(["123", "---"])


def test_no_instruction_is_off_its_own_language_and_other_languages_mostly_are():
    """The drop rule never fires on an instruction in the expected language (the set's lowest probability
    for its own language is 0.059, above OFF_LANGUAGE_BELOW); held to another of the eight languages, 96.7%
    are caught; what escapes are close relatives (Ukrainian in a Russian seed: the safe side) and the
    shortest lines, where no language reaches OTHER_AT_LEAST."""
    assert not any(is_off_language(text, lang) for lang, items in SHORT_INSTRUCTIONS.items() for text in items)
    pairs = [is_off_language(text, other) for lang, items in SHORT_INSTRUCTIONS.items() for text in items
             for other in SHORT_INSTRUCTIONS if other != lang]
    assert sum(pairs) / len(pairs) >= 0.95
    assert is_off_language(ENGLISH_RECORD["instruction"], "ru")
    assert not is_off_language("2 + 2 = ?", "ru")  # nothing to detect: never dropped
    # Three words the detector cannot place: every language gets a few per cent, none is confident.
    assert probabilities("Define Sun.")["en"] < OFF_LANGUAGE_BELOW and not is_off_language("Define Sun.", "en")
    assert max(probabilities("Define Sun.").values()) < OTHER_AT_LEAST


def test_the_run_config_overrides_the_language_and_refuses_a_name():
    assert GenerationRunConfig(language="ru").core().language == "ru"
    assert ValidationRunConfig(language="zh").core().language == "zh"
    assert GenerationRunConfig().core().language == ValidationConfig().language == ""
    with pytest.raises(ConfigError, match="generation config: language must be '' .* got 'Russian'"):
        GenerationConfig(language="Russian")
    with pytest.raises(Exception, match="language must be"):
        ValidationRunConfig(language="xx")
    assert seed_language(SHORT_INSTRUCTIONS["en"], "ru").code == "ru"  # the override beats the seed
    stored = detect_seed_language(SHORT_INSTRUCTIONS["ru"])
    assert seed_language([], stored=stored) is stored  # seed_dataset's detection, read back, is used
    assert SeedLanguage.from_metadata(stored.metadata()) == stored


def test_the_gate_drops_a_record_in_another_language_and_counts_it():
    rows = RUSSIAN_RECORDS + [ENGLISH_RECORD]
    report = validate(rows, russian_seed_rows(), ValidationConfig())
    assert report.invalid_records == {OFF_LANGUAGE: 1}
    lang = report.language
    assert (lang.expected.code, lang.expected.name, lang.off_language, lang.checked) == ("ru", "Russian", 1, 6)
    assert lang.off_language_share == round(1 / 6, 4) and lang.expected.detector.startswith("py3langid")
    assert "off_language|detector:py3langid" in report.gates[0].signature
    # Overridden to English, the Russian records are the ones off the language.
    english = validate(rows, russian_seed_rows(), ValidationConfig(language="en"))
    assert english.invalid_records == {OFF_LANGUAGE: 5} and english.language.expected.detector == "run config"


def test_the_card_yaml_names_the_datasets_language():
    report = validate(RUSSIAN_RECORDS + [ENGLISH_RECORD], russian_seed_rows(), ValidationConfig())
    card = dataset_card(report, dataset_id="d", seed_name="seeds/ru.jsonl", teacher_name="t")
    front = yaml.safe_load(card[4:].partition("\n---\n")[0])
    assert front["language"] == ["ru"]
    assert "## Language" in card and "1 of 6 records (16.7%)" in card
    # No seed instruction and no configured language: the card does not claim one.
    unknown = validate(RUSSIAN_RECORDS, [], ValidationConfig())
    assert unknown.language is None and "language" not in yaml.safe_load(
        dataset_card(unknown, dataset_id="d", seed_name="s", teacher_name="t")[4:].partition("\n---\n")[0])


def test_seed_dataset_stores_the_language_in_its_metadata(dagster_instance, tmp_path, monkeypatch):
    from frd_assets.cli import main
    from frd_assets.defs.assets import seed_dataset
    from frd_assets.defs.io_managers import StoreIOManager
    from frd_assets.defs.partitions import dataset_partitions
    from frd_assets.defs.resources import StoreResource

    monkeypatch.setenv("FRD_LOCAL_STORE", str(tmp_path / "store"))
    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    seed_file = tmp_path / "seed.jsonl"
    seed_file.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in russian_seed_rows()) + "\n")
    dataset_id = str(uuid.uuid4())
    assert main(["seed", "upload", str(seed_file), "--uuid", dataset_id]) == 0
    resource = StoreResource(local_root=str(tmp_path / "store"))
    dagster_instance.add_dynamic_partitions(dataset_partitions.name, [dataset_id])
    assert materialize([seed_dataset], partition_key=dataset_id, instance=dagster_instance,
                       resources={"store": resource, "io_manager": StoreIOManager(store=resource)}).success
    event = dagster_instance.get_latest_materialization_event(AssetKey("seed_dataset"))
    meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    assert meta["language"] == "ru" and meta["language_name"] == "Russian"
    assert meta["language_share"] == 1.0 and meta["language_detector"].startswith("py3langid ")
    assert meta["language_counts"] == {"ru": len(RUSSIAN_SEED)}
    assert SeedLanguage.from_metadata(meta).code == "ru"
