"""The dataset card: its YAML front matter parses as the Hub reads it, and `datasets` reads the kept rows."""

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from frd_assets.core.datasets import data_file_name
from frd_assets.core.evaluation import Judge
from frd_assets.core.quality.dataset_card import dataset_card, size_category
from frd_assets.core.records import Record, dumps_jsonl, records_to_rows
from frd_assets.core.validation import ValidationConfig, validate
from frd_assets_tests.test_quality import EVAL, GOOD, SCRIPT, SEEDS, SHARES_8, ScriptedTeacher

DATASET_ID = "0b8e8f7e-6c8b-4b53-9a59-1c1f3c0f7d10"


def generated_rows():
    """Rows as generated_dataset stores them: canonical records with provenance."""
    records = [Record(f"gen-{i}", r["instruction"], r["input"], r["output"],
                      {"source": "generated", "teacher": "SmolLM2-135M-Instruct"})
               for i, r in enumerate(GOOD + [SHARES_8, dict(GOOD[0])])]
    return records_to_rows(records)


@pytest.fixture
def report():
    return validate(generated_rows(), SEEDS, ValidationConfig(min_judge_score_mean=3.0), eval_tasks=[EVAL],
                    judge=Judge(ScriptedTeacher(SCRIPT)))


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    block, _, _ = card[4:].partition("\n---\n")
    return yaml.safe_load(block)


def test_front_matter_parses_with_the_hub_fields(report):
    card = dataset_card(report, dataset_id=DATASET_ID, seed_name="seeds/sample_seed.jsonl",
                        teacher_name="SmolLM2-135M-Instruct", license="apache-2.0")
    meta = front_matter(card)
    assert meta == {
        "license": "apache-2.0",
        "language": ["en"],
        "task_categories": ["text-generation"],
        "tags": ["synthetic", "self-instruct", "instruction-tuning"],
        "size_categories": ["n<1K"],
        "pretty_name": f"FRD.ai instructions {DATASET_ID}",
        "configs": [{"config_name": "default",
                     "data_files": [{"split": "train", "path": data_file_name("validated_dataset")}]}],
    }


def test_body_states_source_counts_and_every_gate_with_value_threshold_and_signature(report):
    card = dataset_card(report, dataset_id=DATASET_ID, seed_name="seeds/sample_seed.jsonl",
                        teacher_name="SmolLM2-135M-Instruct")
    assert "| seed | seeds/sample_seed.jsonl |" in card and "| teacher | SmolLM2-135M-Instruct |" in card
    assert "| judge | scripted |" in card
    assert f"{report.valid_records} of {report.records} records kept" in card
    for reason, count in report.invalid_records.items():
        assert f"| {reason} | {count} |" in card
    assert set(report.invalid_records) == {"contaminated", "duplicate", "low_judge_score"}
    for g in report.gates:
        signature = g.signature.replace("|", "\\|")  # a pipe would end the table cell
        assert f"| {g.name} | {g.value:.4g} | {g.threshold:g} | {'yes' if g.passed else 'no'} | {signature} |" in card
    assert "judge_score_mean" in {g.name for g in report.gates}
    assert f"| {SHARES_8['instruction']} | sky-1: {EVAL.instruction} |" in card
    assert "| unparsable | 1 |" in card


def test_without_a_judge_the_card_says_so():
    report = validate(generated_rows(), SEEDS, ValidationConfig())
    card = dataset_card(report, dataset_id=DATASET_ID, seed_name="s", teacher_name="t")
    assert "| judge | none |" in card and "no judge given: records were not scored" in card
    assert "no evaluation tasks given" in card


@pytest.mark.parametrize(
    "name",
    [
        'a "quoted": name # not a comment',
        "two\nlines\r\nand\ta tab",
        "backslash \\ and \\n literally",
        "emoji 🦙, accents é, CJK 数据",
        "control \x07 bell, \x00 nul, BOM \ufeff, NEL \x85, line separator \u2028",
        "- looks like a list item",
        "",
    ],
)
def test_any_name_round_trips_through_the_front_matter(report, name):
    card = dataset_card(report, dataset_id=DATASET_ID, seed_name=name, teacher_name=name, pretty_name=name or None)
    meta = front_matter(card)
    # On one line, as the body shows every name (a line break would start a heading there).
    assert meta["pretty_name"] == (" ".join(name.split()) or f"FRD.ai instructions {DATASET_ID}")


@settings(max_examples=300, deadline=None)
@given(st.text().filter(str.strip))
def test_any_text_round_trips_through_the_front_matter(text):
    card = dataset_card(_REPORT, dataset_id=DATASET_ID, seed_name="s", teacher_name="t", pretty_name=text)
    assert front_matter(card)["pretty_name"] == " ".join(text.split())


# One report for the property test: hypothesis runs its body hundreds of times, a fixture would be built once
# per test function anyway.
_REPORT = validate(generated_rows(), SEEDS, ValidationConfig(min_judge_score_mean=3.0), eval_tasks=[EVAL],
                   judge=Judge(ScriptedTeacher(SCRIPT)))


@pytest.mark.parametrize(
    "n, label", [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (50_000, "10K<n<100K"), (10**9, "n>1B")]
)
def test_size_category_uses_the_hub_buckets(n, label):
    assert size_category(n) == label


@pytest.fixture
def offline_datasets(monkeypatch):
    """`datasets` that never reaches the network: the flags are read at import, so set both places."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    return datasets


def test_load_dataset_reads_the_kept_rows_as_the_asset_writes_them(report, offline_datasets, tmp_path):
    folder = tmp_path / "validated"
    folder.mkdir()
    data = folder / data_file_name("validated_dataset")
    data.write_bytes(dumps_jsonl(report.valid_rows))
    (folder / "README.md").write_text(
        dataset_card(report, dataset_id=DATASET_ID, seed_name="s", teacher_name="t"), encoding="utf-8")

    ds = offline_datasets.load_dataset("json", data_files=str(data), cache_dir=str(tmp_path / "cache"))
    assert ds["train"].num_rows == report.valid_records
    assert ds["train"].column_names == ["id", "input", "instruction", "output", "provenance"]
    assert ds["train"].to_list() == report.valid_rows
    # The card's `configs` names the file, so loading the folder as a Hub repository finds the same rows.
    ds = offline_datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "cache-folder"))
    assert list(ds) == ["train"] and ds["train"].to_list() == report.valid_rows
