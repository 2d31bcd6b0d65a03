"""The dependency set is the one DESIGN.md section 8 measured: current s3fs (not 0.4.2), Prefect 3; pyproject's
ranges, constraints.txt and the installed set agree."""

from __future__ import annotations

import tomllib
from importlib.metadata import Distribution, distributions, version
from pathlib import Path

import prefect
import s3fs
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version


def _major_minor(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


def test_s3fs_is_current() -> None:
    # Unpinned boto3 makes pip fall back to s3fs 0.4.2 (2020), which lacks the async filesystem we rely on.
    assert _major_minor(s3fs.__version__) >= (2024, 1), s3fs.__version__
    assert version("s3fs") == s3fs.__version__


def test_prefect_3() -> None:
    assert _major_minor(prefect.__version__)[0] == 3, prefect.__version__


def test_boto3_compatible_with_aiobotocore() -> None:
    # aiobotocore pins botocore to a range; the installed botocore must be inside it (pip would have told).
    assert version("boto3").split(".")[:2] == version("botocore").split(".")[:2]


# -- the ranges in pyproject.toml, constraints.txt and the installed set agree --------------------------------------
# `pip install -e .` (no constraints) must get a set that works, so pyproject's ranges exclude what is known to
# break; constraints.txt pins the set CI measured. These checks keep the two from drifting apart: every pin inside
# its range, every installed distribution the pinned version, every distribution's own requirements met.

ROOT = Path(__file__).resolve().parent.parent


def _pyproject_requirements() -> list[tuple[str | None, Requirement]]:
    """(extra or None, requirement) for the dependencies and every optional group."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found: list[tuple[str | None, Requirement]] = [(None, Requirement(r)) for r in project["dependencies"]]
    for extra, reqs in project.get("optional-dependencies", {}).items():
        found += [(extra, Requirement(r)) for r in reqs]
    return found


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            assert pinned, f"constraints.txt: {line!r} is not name==version"
            pins[canonicalize_name(name)] = Version(pinned)
    return pins


def _installed() -> dict[str, Distribution]:
    return {canonicalize_name(d.metadata["Name"]): d for d in distributions()}


def test_constraints_pins_lie_inside_pyproject_ranges() -> None:
    pins = _pins()
    outside = [
        f"{req.name}: pinned {pins[canonicalize_name(req.name)]} outside {req.specifier}"
        for _, req in _pyproject_requirements()
        if canonicalize_name(req.name) in pins
        and not req.specifier.contains(pins[canonicalize_name(req.name)], prereleases=True)
    ]
    assert outside == []
    missing = [
        req.name
        for extra, req in _pyproject_requirements()
        if extra is None and canonicalize_name(req.name) not in pins
    ]
    assert missing == [], "dependencies constraints.txt does not pin"


def test_installed_set_is_the_pinned_set_and_inside_the_ranges() -> None:
    installed, pins = _installed(), _pins()
    differs = {
        name: (dist.version, str(pins[name]))
        for name, dist in installed.items()
        if name in pins and Version(dist.version) != pins[name]
    }
    assert differs == {}, "installed (left) is not what constraints.txt pins (right): `make install` again"
    outside = [
        f"{req.name} {installed[canonicalize_name(req.name)].version} not in {req.specifier}"
        for _, req in _pyproject_requirements()
        if canonicalize_name(req.name) in installed
        and not req.specifier.contains(installed[canonicalize_name(req.name)].version, prereleases=True)
    ]
    assert outside == []


def test_every_installed_distribution_has_its_own_requirements_met() -> None:
    """What `pip check` says, for the resolved set: each distribution's Requires-Dist (markers evaluated for this
    interpreter, extras nobody asked for skipped) is installed in a version it accepts."""
    installed = _installed()
    unmet: list[str] = []
    for name, dist in installed.items():
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            got = installed.get(canonicalize_name(req.name))
            if got is None or not req.specifier.contains(got.version, prereleases=True):
                unmet.append(f"{name} needs {req}, has {got.version if got else 'nothing'}")
    assert unmet == []
