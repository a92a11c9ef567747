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


# -- user locks of built-in envs (issue 22) ----------------------------------------


def test_locking_a_builtin_writes_a_user_lock_used_before_the_shipped_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from portal_env.runtimes import lock

    from .conftest import cli

    source = catalog.find("ale")
    shipped = source.lock_dir / lock.venv_lock_name(source)
    before = (shipped.read_bytes(), shipped.stat().st_mtime_ns)
    done = cli("lock", "ale", "-b", "venv")
    assert done.returncode == 0, done.stderr
    mine = tmp_path / "state" / "lockfiles" / "ale.venv.lock.txt"
    assert f"locked ale: {mine}" in done.stdout and mine.is_file()
    assert (shipped.read_bytes(), shipped.stat().st_mtime_ns) == before  # package untouched
    assert lock.venv_lock_path(source) == mine and source.shadowed_lock(mine.name) == shipped
    row = next(line for line in cli("ls").stdout.splitlines() if line.startswith("ale "))
    assert "yours (over shipped)" in row, row
    built = cli("build", "-e", "ale", "-b", "venv")
    assert built.returncode == 0, built.stderr
    assert f"using your venv lock {mine}, not the one shipped" in built.stderr, built.stderr
    # PORTAL_ENV_LOCK_DIR moves them (a team's shared directory, or lockfiles/ to re-ship)
    monkeypatch.setenv("PORTAL_ENV_LOCK_DIR", str(tmp_path / "team-locks"))
    assert lock.venv_lock_path(source) == shipped  # none of ours there yet
    assert cli("lock", "ale", "-b", "venv").returncode == 0
    assert (tmp_path / "team-locks" / "ale.venv.lock.txt").is_file()
