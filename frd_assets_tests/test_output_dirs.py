"""Issue 18, the CLI's share: commands write only what they own, `frd tune` names its study from its data,
and flags and task counts beyond a bound are refused with one line before any work.

Each test names the defect of issue 18 it proves fixed; on the main of 2026-12-07 each failed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from frd_assets.cli import main
from frd_assets.core.output_dirs import MARKER, OutputDirError, check_output_dir, publish_output_dir, staging_dir


def _users_folder(tmp_path: Path) -> Path:
    """A folder the way the issue found it: a note and a nested data file of the user's."""
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("my notes")
    (folder / "sub" / "data.bin").write_bytes(b"\x00\x01")
    return folder


def _untouched(folder: Path) -> bool:
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
    return (names == ["notes.txt", "sub", "sub/data.bin"] and (folder / "notes.txt").read_text() == "my notes"
            and (folder / "sub" / "data.bin").read_bytes() == b"\x00\x01")


def _publish(out: Path, files: dict[str, str], command: str = "frd tune") -> None:
    staging = staging_dir(out)
    staging.mkdir()
    for name, text in files.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_text(text)
    publish_output_dir(staging, out, command=command)


# --- defect 1: `frd tune --out DIR` deleted the user's files; `--out FILE` failed after training ---


def test_a_new_an_empty_and_an_own_previous_output_folder_are_written(tmp_path):
    new, empty = tmp_path / "new", tmp_path / "empty"
    empty.mkdir()
    for out in (new, empty):
        _publish(out, {"adapter_config.json": "{}", "deep/x.bin": "1"})
        assert sorted(p.name for p in out.iterdir()) == [MARKER, "adapter_config.json", "deep"]
    _publish(new, {"adapter_config.json": '{"second": 1}'})  # a re-run replaces its own previous output whole
    assert sorted(p.name for p in new.iterdir()) == [MARKER, "adapter_config.json"]
    assert json.loads((new / MARKER).read_text()) == {"command": "frd tune", "files": ["adapter_config.json"]}
    assert not list(tmp_path.glob(".*"))  # no staging or previous folder left beside it


def test_out_dot_is_the_current_folder_under_the_same_rule(tmp_path, monkeypatch):
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    _publish(Path("."), {"adapter_config.json": "1"})
    # The folder was replaced by the rename: a second command starts in the new one, as a new process would.
    monkeypatch.chdir(tmp_path / "here")
    _publish(Path("."), {"adapter_config.json": "2"})  # its own previous output, replaced
    assert (tmp_path / "here" / "adapter_config.json").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"]


@pytest.mark.parametrize("case", ["user's files", "another command's output", "own output plus a user file",
                                  "a file", "a marker that is not JSON"])
def test_a_folder_the_command_does_not_own_is_refused_and_left_as_it_was(case, tmp_path):
    out = tmp_path / "out"
    if case == "user's files":
        out = _users_folder(tmp_path)
    elif case == "another command's output":
        _publish(out, {"model.safetensors": "w"}, command="frd export")
    elif case == "own output plus a user file":
        _publish(out, {"adapter_config.json": "{}"})
        (out / "notes.txt").write_text("added later")
    elif case == "a file":
        out.write_text("a file")
    else:
        out.mkdir()
        (out / MARKER).write_text("not json")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(OutputDirError, match=r"^frd tune --out '.*out'|^frd tune --out '.*mine'") as refused:
        check_output_dir(out, command="frd tune")
    assert "\n" not in str(refused.value)
    with pytest.raises(OutputDirError):  # and again at publish time, with a finished output in hand
        _publish(out, {"adapter_config.json": "{}"})
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and ".staging-" not in str(p)} == before


def _tune_argv(tmp_path: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["tune", str(data), "--out", str(out), "--storage", f"sqlite:///{tmp_path / 'optuna.db'}",
            "--work-dir", str(tmp_path / "work"), "--trials", "1", "--epochs", "1", "--batch-size", "2",
            "--pruner", "none", *extra]


def test_an_out_under_a_file_is_refused_before_the_work(tmp_path):
    (tmp_path / "notes.txt").write_text("my notes")
    with pytest.raises(OutputDirError, match=r"lies under '.*notes.txt', which is a file"):
        check_output_dir(tmp_path / "notes.txt" / "adapter", command="frd tune")


@pytest.mark.parametrize("out_kind", ["user's folder", "a file"])
def test_frd_tune_refuses_an_out_it_does_not_own_in_one_line_before_any_work(out_kind, tmp_path, capsys):
    data = tmp_path / "tune.jsonl"
    data.write_text(json.dumps({"instruction": "Say hi.", "input": "", "output": "Hi."}) + "\n")
    out = _users_folder(tmp_path) if out_kind == "user's folder" else tmp_path / "adapter.bin"
    if out_kind == "a file":
        out.write_bytes(b"weights of mine")
    # A base model that does not exist: a refusal that came after the model lookup would name it instead.
    rc = main(_tune_argv(tmp_path, data, out, "--base-model", str(tmp_path / "no-model")))
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: frd tune --out ") and err.count("\n") == 1, err
    assert not (tmp_path / "work").exists() and not (tmp_path / "optuna.db").exists()  # no study, no trial
    assert _untouched(out) if out_kind == "user's folder" else out.read_bytes() == b"weights of mine"


def test_frd_export_refuses_an_out_it_does_not_own_in_one_line(tmp_path, capsys):
    out = _users_folder(tmp_path)
    (tmp_path / "adapter").mkdir()  # an adapter folder check would refuse this one too: --out is checked first
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter" / "adapter_model.safetensors").write_bytes(b"")
    rc = main(["export", str(tmp_path / "adapter"), "--merge", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: frd export --out ") and err.count("\n") == 1, err
    assert _untouched(out)


# --- defect 4: `frd tune` on other data under the same file name continued the old study ---


def _records(topic: str) -> str:
    return "".join(json.dumps({"instruction": f"Describe the {topic} number {i}.", "input": "",
                               "output": f"The {topic} {i} is calm, green and full of small fish."}) + "\n"
                   for i in range(16))


def test_frd_tune_on_other_data_starts_a_new_study_and_same_data_resumes_it(tmp_path, tiny_model_dir):
    """The one training test here: two one-trial searches, then a re-run that trains nothing."""
    first, second = tmp_path / "tune.jsonl", tmp_path / "other" / "tune.jsonl"
    second.parent.mkdir()
    first.write_text(_records("river"))
    second.write_text(_records("mountain"))
    out = tmp_path / "adapter"

    def tune(data: Path) -> subprocess.CompletedProcess:
        argv = _tune_argv(tmp_path, data, out, "--base-model", str(tiny_model_dir))
        done = subprocess.run([sys.executable, "-m", "frd_assets.cli", *argv], capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    tune(first)
    weights = (out / "adapter_model.safetensors").read_bytes()
    tune(second)  # into its own previous output: replaced, not refused
    studies = optuna.get_all_study_names(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(studies) == 2, studies  # other data under the same file name: a study of its own
    assert (out / "adapter_model.safetensors").read_bytes() != weights
    again = tune(second)
    assert "already holds 1 finished trials" in again.stdout  # same data and config: the same study resumes
    assert optuna.get_all_study_names(f"sqlite:///{tmp_path / 'optuna.db'}") == studies
