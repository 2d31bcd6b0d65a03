"""The one rule for names that become paths (core/paths.py), and its two copies where core cannot be imported: the
instance helper (core.transfer.INSTANCE_HELPER, run here with this Python as on an instance) and the agent."""

from __future__ import annotations

import json
import posixpath
import subprocess
import sys
from pathlib import Path

import pytest

from agent import paths as agent
from core.paths import PathEscapeError, check_all_safe, path_problem, safe_relative
from core.transfer import INSTANCE_HELPER, PARTIAL_PREFIX
from core.transfer import safe_relative as transfer_safe_relative

BAD = [
    "",
    "/",
    "/etc/passwd",
    "//server/share",
    ".",
    "..",
    "../x",
    "../../../../../tmp/x/ESCAPED.txt",
    "a/..",
    "a/../b",
    "a/../../x",
    "./a",
    "a/.",
    "a/./b",
    "a//b",
    "a/",
    "a\\b",
    "..\\..\\windows\\system32",
    "C:\\x",
    "x\x00y",
    "\x00",
    "line\nbreak",
    "carriage\rreturn",
    "tab\there",
    "\x1b[31mred",
    "del\x7f",
    "c1\x85control",
    "csi\x9b",
    "x" * 256,
    "a/" + "é" * 128,  # 256 bytes in one segment
    "a/" * 2048 + "a",  # 4,097 bytes, every segment short
    "bad\udcffutf8",  # a name from a non-UTF-8 filesystem (surrogateescape)
]

GOOD = [
    "a",
    "a/b/c/d.txt",
    "ünïcödé/файл 名前.txt",
    "with space/and more .txt",
    "*",
    "star*?[x]{y}.bin",
    'quote\'s "double" `tick`.txt',
    "-rf",
    "--help",
    "-/x",
    "...",
    "..a",
    "a..",
    ".hidden",
    "a/.b",
    "$HOME;rm -rf $(id)|&.txt",
    "~user",
    "emoji 🎉.txt",
    "x" * 255,
    "é" * 127,  # 254 bytes
    "a/" * 2047 + "a",  # 4,095 bytes
    "nbsp\xa0ok",  # the first character past the C1 controls
]


def test_bad_and_good_tables_are_large_enough() -> None:
    assert len(BAD) >= 25 and len(set(BAD)) == len(BAD) and not set(BAD) & set(GOOD)


@pytest.mark.parametrize("rel", BAD)
def test_every_bad_name_is_refused_and_named(rel: str) -> None:
    assert path_problem(rel) is not None
    with pytest.raises(PathEscapeError) as err:
        safe_relative(rel, what="S3 object", shown="s3://b/p/")
    # Named with repr, so control characters show as escapes on the one error line.
    assert repr("s3://b/p/" + rel) in str(err.value) and "\n" not in str(err.value)
    assert err.value.exit_code == 2


@pytest.mark.parametrize("rel", GOOD)
def test_good_names_are_kept_literally_and_stay_inside(rel: str) -> None:
    assert safe_relative(rel) == rel
    assert posixpath.normpath(posixpath.join("/dest", rel)) == "/dest/" + rel


def test_a_name_that_is_both_a_file_and_a_folder_is_refused() -> None:
    check_all_safe(["a/b", "a/c", "ab", "a b/c"], what="S3 object")
    for names, folder in ((["a", "a/b"], "a"), (["x/y/z", "x/y", "q"], "x/y"), (["k/l", "k/l/m/n"], "k/l")):
        with pytest.raises(PathEscapeError, match=f"{folder!r} is a file and also a folder"):
            check_all_safe(names, what="S3 object")


def test_transfers_also_reserve_their_partial_folders() -> None:
    assert path_problem(f"{PARTIAL_PREFIX}x/a") is None
    with pytest.raises(PathEscapeError, match="reserved prefix"):
        transfer_safe_relative(f"{PARTIAL_PREFIX}x/a")
    assert transfer_safe_relative(f"a/{PARTIAL_PREFIX}x") == f"a/{PARTIAL_PREFIX}x"  # only at the top


def _helper(*args: str) -> subprocess.CompletedProcess[str]:
    """The instance helper run as on an instance: `python3 - VERB ARGS` with the script on stdin."""
    return subprocess.run([sys.executable, "-", *args], input=INSTANCE_HELPER, capture_output=True, text=True)


def test_the_instance_helper_and_the_agent_apply_the_same_rule(tmp_path: Path) -> None:
    names = [*BAD, *GOOD, f"{PARTIAL_PREFIX}x/a", f"a/{PARTIAL_PREFIX}x"]
    (tmp_path / "names.json").write_text(json.dumps(names))
    run = _helper("problems", str(tmp_path / "names.json"))
    assert run.returncode == 0, run.stderr
    on_instance = {rel: why for rel, why in json.loads(run.stdout)}

    def transfer_refuses(rel: str) -> bool:
        try:
            transfer_safe_relative(rel)
        except PathEscapeError:
            return True
        return False

    for rel in names:
        assert (on_instance[rel] is not None) == transfer_refuses(rel), rel
        assert agent.path_problem(rel) == path_problem(rel), rel  # the agent has no partial folders


def test_the_helper_and_the_agent_refuse_a_file_that_is_also_a_folder(tmp_path: Path) -> None:
    for names, refused in ((["a/b", "a/c"], False), (["a", "a/b"], True), (["d/e", "d/e/f"], True)):
        (tmp_path / "select.json").write_text(json.dumps(names))
        select, out = str(tmp_path / "select.json"), str(tmp_path / "run.txt")
        run = _helper("cmds", "s5cmd", "s3://b/p/", str(tmp_path / "dst"), select, out, "50")
        assert (run.returncode != 0) == refused, run.stderr
        assert ("is a file and also a folder" in run.stderr) == refused
        if refused:
            with pytest.raises(agent.IntegrityError, match="is a file and a folder"):
                agent.check_paths(names)
        else:
            agent.check_paths(names)
            lines = (tmp_path / "run.txt").read_text().splitlines()
            assert lines == [f"cp --raw --part-size 50 s3://b/p/{rel} {tmp_path / 'dst' / rel}" for rel in names]
