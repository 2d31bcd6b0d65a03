import subprocess

import pytest

from core.shell import argv, on_instance, quote


@pytest.mark.parametrize("nasty", ["; rm -rf /", "$(touch pwned)", "`id`", "a'b\"c", "line\nbreak", "*", "$HOME"])
def test_quoted_values_reach_the_program_literally(nasty: str, tmp_path: object) -> None:
    out = subprocess.run(["bash", "-c", f"printf %s {quote(nasty)}"], capture_output=True, text=True, check=True)
    assert out.stdout == nasty
    out = subprocess.run(
        ["bash", "-c", argv(["printf", "%s|", nasty, "x"])], capture_output=True, text=True, check=True
    )
    assert out.stdout == f"{nasty}|x|"


def test_instance_paths_expand_the_root_but_nothing_else() -> None:
    env = {"TRAINCTL_ROOT": "/srv/i-1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        ["bash", "-c", f"printf %s {on_instance('/mnt/$(x) data')}"], capture_output=True, text=True, env=env
    )
    assert out.stdout == "/srv/i-1/mnt/$(x) data"
    out = subprocess.run(["bash", "-c", f"printf %s {on_instance('/mnt/data')}"], capture_output=True, text=True)
    assert out.stdout == "/mnt/data"
    with pytest.raises(ValueError):
        on_instance("relative/path")
