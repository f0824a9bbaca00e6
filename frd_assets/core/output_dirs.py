"""Output folders a command writes (`frd tune --out`, `frd export --out`): only what the command owns.

`frd tune --out DIR` once replaced DIR whole, deleting whatever the user kept there. A command now writes
only into a folder that does not exist, is empty, or holds exactly the command's own previous output, as
listed by the marker file (MARKER) it left there; anything else is refused with OutputDirError before any
work. The new output is built in a staging folder beside DIR (one file system, so the final rename is
atomic) and published by `publish_output_dir`, which checks DIR again first: training takes minutes, and a
file the user put into DIR meanwhile must survive too. One rule, one place: every command that writes a
folder calls these functions (and a command that writes one file, check_output_file).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

MARKER = ".frd-output.json"  # {"command": "frd tune", "files": [...]}, written last into every output


class OutputDirError(ValueError):
    """An output folder the command does not own: a file, or a folder holding someone else's files."""


def check_output_dir(out_dir: Path, *, command: str, flag: str = "--out") -> None:
    """Returns when command may write out_dir; OutputDirError naming the folder and the fix otherwise."""
    out_dir = Path(out_dir)
    where = f"{command} {flag} {str(out_dir)!r}"
    if out_dir.is_symlink():  # the rename at publish would replace the link, not fill the folder it names
        raise OutputDirError(f"{where} is a symbolic link; give the folder it points to, or a new one")
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputDirError(f"{where} is a file, not a folder; give a new or empty folder")
    if not out_dir.exists():
        # Its folders are made at publish time: a file among them would fail there, after the work.
        ancestor = next(p for p in out_dir.absolute().parents if p.exists())
        if not ancestor.is_dir():
            raise OutputDirError(f"{where} lies under {str(ancestor)!r}, which is a file; give a folder elsewhere")
        return
    entries = sorted(p.name for p in out_dir.iterdir())
    if not entries:
        return
    owner = _marker_command(out_dir)
    if owner != command:
        # No walk of the folder here: --out ~ must be refused at once, not after listing a home directory.
        shown = ", ".join(repr(e) for e in entries[:3]) + (", ..." if len(entries) > 3 else "")
        whose = f"the output of {owner}" if owner else f"files {command} did not write"
        raise OutputDirError(
            f"{where} holds {whose} ({shown}); give a new or empty folder, or a previous output of {command}"
        )
    extra = _unlisted(out_dir)
    if extra:
        raise OutputDirError(
            f"{where} holds {command}'s previous output and also {extra!r}, which it did not write; move that "
            "away or give a new folder"
        )


def check_output_file(out_file: Path, *, command: str, flag: str = "--out") -> None:
    """An output file (`frd generate --out`) may replace a file, its own earlier output or not, since one
    file is all it names; a folder there is refused before the work, not when the result is written."""
    if Path(out_file).is_dir():
        raise OutputDirError(f"{command} {flag} {str(out_file)!r} is a folder; give a file name, such as "
                             f"{str(Path(out_file) / 'generated.jsonl')!r}")


def staging_dir(out_dir: Path) -> Path:
    """A fresh folder name beside out_dir (created with its parents) for building the output in."""
    out_dir = Path(out_dir).resolve()  # `--out .` has no name to put a staging folder beside
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return out_dir.parent / f".{out_dir.name}.staging-{uuid.uuid4().hex[:8]}"


def publish_output_dir(staging: Path, out_dir: Path, *, command: str, flag: str = "--out") -> None:
    """Marks staging as command's output and renames it to out_dir, replacing only an empty out_dir or
    command's own previous output (checked again here). The previous output is moved aside before the
    rename and deleted after it, so out_dir holds one whole output at every moment but the rename's."""
    staging, out_dir = Path(staging), Path(out_dir)
    files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if not p.is_dir())
    (staging / MARKER).write_text(json.dumps({"command": command, "files": files}, indent=2) + "\n")
    check_output_dir(out_dir, command=command, flag=flag)
    target = out_dir.resolve()  # `--out .` names a folder, but has no name of its own to rename or move aside
    previous = None
    if target.is_dir() and any(target.iterdir()):
        previous = target.parent / f".{target.name}.previous-{uuid.uuid4().hex[:8]}"
        os.replace(target, previous)
    try:
        os.replace(staging, target)  # over an empty folder too: POSIX rename replaces an empty directory
    except BaseException:
        if previous is not None:
            os.replace(previous, target)
        raise
    if previous is not None:
        shutil.rmtree(previous)


def _marker_command(out_dir: Path) -> str | None:
    """The command a readable marker names, else None (no marker, or one that is not ours)."""
    try:
        body = json.loads((out_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict) or not isinstance(body.get("files"), list):
        return None
    command = body.get("command")
    return command if isinstance(command, str) else None


def _unlisted(out_dir: Path) -> str | None:
    """The first path under out_dir that the marker does not list (nor a folder of a listed file), or None."""
    listed = set(json.loads((out_dir / MARKER).read_text())["files"]) | {MARKER}
    folders = {parent.as_posix() for name in listed for parent in Path(name).parents if parent != Path(".")}
    for path in sorted(out_dir.rglob("*")):
        name = path.relative_to(out_dir).as_posix()
        if name not in (folders if path.is_dir() and not path.is_symlink() else listed):
            return name
    return None
