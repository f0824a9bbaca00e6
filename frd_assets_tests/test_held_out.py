"""Held-out seed tasks: set aside by seed_dataset, never shown to the teacher, in the novelty pool."""

import uuid

import pytest
from dagster import AssetKey, materialize

from frd_assets.core.generation.self_instruct import GenerationConfig, generate
from frd_assets.core.generation.teachers import Completion, TransformersTeacher
from frd_assets.core.held_out import HeldOutConfig, is_held_out, is_test, partition, split_held_out
from frd_assets.core.records import Record, parse_seed, rows_to_records
from frd_assets.defs.assets import seed_dataset
from frd_assets.defs.io_managers import StoreIOManager
from frd_assets.defs.partitions import dataset_partitions
from frd_assets.defs.resources import StoreResource


def tasks(n: int, instances: int = 1) -> list[Record]:
    return [Record(f"t{i}#{j}", f"Task number {i} about topic {i * 7}.", f"in {j}", f"out {i}.{j}")
            for i in range(n) for j in range(instances)]


def test_a_seeded_share_of_tasks_is_held_out_by_instruction():
    records = tasks(20, instances=2)
    split = split_held_out(records, HeldOutConfig(held_out_fraction=0.2, seed=3))
    held = {r.instruction for r in split.held_out}
    assert len(held) == 4 and len(split.held_out) == 8  # 4 tasks, both instances of each
    assert not held & {r.instruction for r in split.train}  # no task on both sides
    assert all(is_held_out(r) for r in split.held_out) and not any(is_held_out(r) for r in split.train)
    assert split_held_out(records, HeldOutConfig(held_out_fraction=0.2, seed=3)) == split  # seeded
    assert {r.instruction for r in split_held_out(records, HeldOutConfig(0.2, seed=4)).held_out} != held
    assert "4 of 20 seed tasks held out" in split.note


@pytest.mark.parametrize("n, fraction, note", [(9, 0.2, "fewer than 10: none held out"),
                                               (30, 0.0, "held_out_fraction is 0")])
def test_none_are_held_out_from_a_small_seed_or_a_zero_fraction(n, fraction, note):
    split = split_held_out(tasks(n), HeldOutConfig(held_out_fraction=fraction))
    assert split.held_out == [] and len(split.train) == n and note in split.note


@pytest.mark.parametrize("bad", [{"held_out_fraction": 0.9}, {"held_out_fraction": "x"}, {"seed": -1}])
def test_the_held_out_config_is_range_checked(bad):
    with pytest.raises(ValueError, match="held-out config"):
        HeldOutConfig(**bad)


class RecordingTeacher:
    """The real tiny teacher, with every prompt it is sent written down."""

    def __init__(self, teacher, script=None):
        self.teacher, self.name, self.prompts, self.script = teacher, teacher.name, [], script

    def complete(self, prompts, params):
        self.prompts.extend(prompts)
        out = self.teacher.complete(prompts, params)
        if self.script:  # put given proposals in front of the model's own, to drive the novelty filter
            out = [Completion(c.text.split("\n", 1)[0] + "\n" + self.script + "\n" + c.text, c.finish_reason,
                              c.completion_tokens) for c in out]
        return out


def test_held_out_tasks_never_reach_a_teacher_prompt_and_block_their_near_copies(tiny_model_dir,
                                                                                    sample_seed_bytes):
    records = parse_seed(sample_seed_bytes, "sample_seed.jsonl")
    split = split_held_out(records, HeldOutConfig())
    assert len({r.instruction for r in split.held_out}) >= 8  # what the demo holds out
    target = split.held_out[0].instruction
    near_copy = target.rstrip(".") + " please."
    teacher = RecordingTeacher(TransformersTeacher(str(tiny_model_dir), batch_size=4), script=f"9. {near_copy}")
    config = GenerationConfig(num_instructions=6, prompts_per_round=4, max_rounds=3, temperature=1.0,
                              max_new_tokens_instructions=64, max_new_tokens_instance=48)
    result = generate(split.train, teacher, config, held_out=split.held_out, log=lambda _m: None)
    sent = "\n".join(m["content"] for p in teacher.prompts for m in p.messages) + "".join(
        p.prefill for p in teacher.prompts)
    assert teacher.prompts and all(r.instruction not in sent for r in split.held_out)
    assert near_copy not in [r.instruction for r in result.records]
    assert result.rejected["not_novel"] + result.rejected["duplicate"] >= 1


def test_seed_dataset_marks_the_held_out_tasks_or_takes_an_uploaded_evaluation_set(
        dagster_instance, tmp_path, sample_seed_bytes, monkeypatch):
    from frd_assets.cli import main

    monkeypatch.setenv("FRD_LOCAL_STORE", str(tmp_path / "store"))
    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    resource = StoreResource(local_root=str(tmp_path / "store"))
    resources = {"store": resource, "io_manager": StoreIOManager(store=resource)}
    seed_file = tmp_path / "seed.jsonl"
    seed_file.write_bytes(sample_seed_bytes)

    def run(dataset_id):
        dagster_instance.add_dynamic_partitions(dataset_partitions.name, [dataset_id])
        assert materialize([seed_dataset], partition_key=dataset_id, instance=dagster_instance,
                           resources=resources).success
        event = dagster_instance.get_latest_materialization_event(AssetKey("seed_dataset"))
        meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
        loaded = StoreIOManager(store=resource)
        from frd_assets.core import versions
        from frd_assets.core.datasets import asset_location
        from frd_assets.core.records import loads_jsonl

        version = versions.current(resource.get_store(), *asset_location("seed_dataset", dataset_id))
        rows = loads_jsonl(versions.read(resource.get_store(), version, "seed_dataset.jsonl"), "x")
        assert loaded  # the IO manager is the one that wrote it
        return meta, rows_to_records(rows)

    split_id = str(uuid.uuid4())
    assert main(["seed", "upload", str(seed_file), "--uuid", split_id]) == 0
    meta, records = run(split_id)
    train, held = partition(records)
    assert meta["held_out"] == len(held) == 24 and meta["held_out_source"] == "split"
    assert len(train) + len(held) == meta["records"] == 118

    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text('{"instruction": "Name the capital of France.", "input": "", "output": "Paris"}\n'
                         '{"instruction": "Add 2 and 3.", "input": "", "output": "5"}\n'
                         '{"instruction": "No answer here.", "input": "", "output": ""}\n')
    eval_id = str(uuid.uuid4())
    assert main(["seed", "upload", str(seed_file), "--uuid", eval_id, "--eval", str(eval_file)]) == 0
    meta, records = run(eval_id)
    train, held = partition(records)
    # The uploaded set is the test part; 12 of the 118 seed tasks (0.2 x 0.5) are the validation part.
    assert [r.output for r in held if is_test(r)] == ["Paris", "5"] and len(train) == 106
    assert meta["validation_records"] == 12 and meta["test_records"] == 2
    assert meta["held_out_source"].endswith(f"{eval_id}.eval.jsonl")
    assert "1 without a reference" in meta["held_out_note"]
