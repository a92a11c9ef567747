"""catalog: built-in and custom env lookup, and the errors for unknown or incomplete envs."""

from pathlib import Path

import pytest

from portal_env.errors import CatalogError, PortalEnvError
from portal_env.runtimes import catalog


def test_custom_dir_is_found(cartpole_dir: Path):
    source = catalog.find("mycart", cartpole_dir)
    assert source.main == cartpole_dir / "env_main.py"
    assert source.spec == cartpole_dir / "spec.yml"
    assert source.setup_script is None and source.dockerfile == cartpole_dir / "Dockerfile.env"
    assert source.lock_dir == cartpole_dir and not source.builtin


def test_dir_without_env_main_lists_what_it_has(tmp_path: Path):
    (tmp_path / "spec.yml").write_text("dependencies: []\n")
    (tmp_path / "README").write_text("hi")
    with pytest.raises(CatalogError, match=r"has no env_main.py \(found: README, spec.yml\)"):
        catalog.find("mycart", tmp_path)


def test_missing_dir(tmp_path: Path):
    with pytest.raises(CatalogError, match="does not exist"):
        catalog.find("mycart", tmp_path / "nope")


def test_unknown_builtin_name_lists_known_and_suggests_p():
    with pytest.raises(CatalogError, match=r"Unknown env 'atri'; known: .*Use -p PATH"):
        catalog.find("atri")


def test_builtin_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "envs" / "ale").mkdir(parents=True)
    (tmp_path / "envs" / "ale" / "env_main.py").write_text("")
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "ale.yml").write_text("dependencies: []\n")
    monkeypatch.setattr(catalog, "BUILTIN_ROOT", tmp_path)
    source = catalog.find("ale")
    assert source.builtin and source.spec == tmp_path / "specs" / "ale.yml"
    assert source.lock_dir == tmp_path / "lockfiles" and source.lock_stem == "ale"
    assert catalog.builtin_names() == ["ale"]
    with pytest.raises(CatalogError, match="known: ale"):
        catalog.find("atari")


def test_spec_required_by_backend(tmp_path: Path):
    (tmp_path / "env_main.py").write_text("")
    source = catalog.find("x", tmp_path)
    with pytest.raises(CatalogError, match=r"no spec.yml, which the venv backend needs"):
        source.require_spec("venv")


@pytest.mark.parametrize("name", ["", "../etc", "a/b", "-x", "a" * 65, "white space"])
def test_bad_names_are_refused(name: str):
    with pytest.raises(PortalEnvError, match="bad env name"):
        catalog.find(name)


def test_builtin_dir_ships_with_the_package():
    assert (catalog.BUILTIN_ROOT / "envs" / "README.md").is_file()
