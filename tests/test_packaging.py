"""The wheel lists every package of the source tree (setuptools is given the list by hand,
because the built-in catalog is mapped in from the top of the repository)."""

from __future__ import annotations

import tomllib

from .conftest import ROOT


def test_every_package_with_an_init_is_in_the_wheel() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "portal_env").rglob("__init__.py")
    }
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
