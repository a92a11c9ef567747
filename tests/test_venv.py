"""The venv backend and its lock: real uv, real PyPI packages, a per-session runtime cache."""

import subprocess
import sys
from pathlib import Path

import pytest

from portal_env import config
from portal_env.errors import BackendUnavailableError, BuildError, LockError, SpecError
from portal_env.runtimes import LogReporter, catalog, get, lock
from portal_env.runtimes.venv import MARKER, VenvBackend, is_complete, runtime_key

from .conftest import interrupt_build

CLI = [sys.executable, "-m", "portal_env.cli"]


class Notes(LogReporter):
    def __init__(self) -> None:
        self.notes = []

    def note(self, message: str) -> None:
        self.notes.append(message)


def _ensure(env_dir: Path, force: bool = False, name: str = "mycart"):
    notes = Notes()
    runtime = VenvBackend().ensure(catalog.find(name, env_dir), force=force, reporter=notes)
    return runtime, notes.notes


def _spec(env_dir: Path, pip: str, python: str = "python=3.11") -> None:
    (env_dir / "spec.yml").write_text(
        f"dependencies:\n  - {python}\n  - pip\n  - pip:\n      - {pip}\n"
    )


# -- spec and lock -----------------------------------------------------------


def test_read_spec(tmp_path: Path):
    path = tmp_path / "spec.yml"
    path.write_text("dependencies:\n  - python=3.10.*\n  - swig\n  - pip:\n      - gymnasium\n")
    spec = lock.read_spec(path)
    assert (spec.python, spec.pip, spec.ignored) == ("3.10", ["gymnasium"], ["swig"])
    assert lock.lock_input(spec) == ["gymnasium", "numpy", "msgpack"]


def test_spec_without_python_uses_ours(tmp_path: Path):
    path = tmp_path / "spec.yml"
    path.write_text("dependencies:\n  - pip:\n      - NumPy>=1\n")
    spec = lock.read_spec(path)
    assert spec.python == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert lock.lock_input(spec) == ["NumPy>=1", "gymnasium", "msgpack"]


def test_inexact_python_is_refused(tmp_path: Path):
    path = tmp_path / "spec.yml"
    path.write_text("dependencies:\n  - python>=3.9\n")
    with pytest.raises(SpecError, match=r"spec.yml.*python=3.11.*python>=3.9"):
        lock.read_spec(path)


def test_example_lock_is_current_and_hashed():
    source = catalog.find("mycart", Path(__file__).parent.parent / "examples" / "cartpole_env")
    assert lock.venv_lock_status(source, source.spec) == "current"
    text = lock.venv_lock_path(source).read_text()
    assert "gymnasium==" in text and "--hash=sha256:" in text and "click" not in text


def test_stale_lock_is_an_error_naming_the_lock_command(cartpole_dir: Path):
    with open(cartpole_dir / "spec.yml", "a") as f:
        f.write("# edited\n")
    with pytest.raises(LockError, match=r"portal-env lock mycart -p .*cartpole_env -b venv"):
        _ensure(cartpole_dir)


def test_uninstallable_package_names_the_package(cartpole_dir: Path):
    (cartpole_dir / "spec.venv.lock.txt").unlink()
    _spec(cartpole_dir, "portal-env-no-such-package-xyz")
    with pytest.raises(LockError, match="portal-env-no-such-package-xyz"):
        _ensure(cartpole_dir)
    assert not (cartpole_dir / "spec.venv.lock.txt").exists()


# -- building ----------------------------------------------------------------


def test_build_then_cache_hit_then_force(cartpole_dir: Path):
    runtime, _ = _ensure(cartpole_dir)
    marker = runtime.venv_dir / MARKER
    assert is_complete(runtime.venv_dir)
    first = marker.stat().st_mtime_ns
    again, notes = _ensure(cartpole_dir)
    assert again.venv_dir == runtime.venv_dir and marker.stat().st_mtime_ns == first
    assert not any("built" in n for n in notes)  # no rebuild
    _, notes = _ensure(cartpole_dir, force=True)
    assert marker.stat().st_mtime_ns != first and any("built the venv" in n for n in notes)


def test_runtime_holds_only_serving_deps_and_finds_portal_env(cartpole_dir: Path):
    runtime, _ = _ensure(cartpole_dir)
    code = (
        "import importlib.util as u, sys, portal_env\n"
        "names = ['gymnasium', 'numpy', 'msgpack', 'click', 'rich', 'uv', 'docker', 'yaml']\n"
        "print(sys.version_info[:2], portal_env.__file__, [n for n in names if u.find_spec(n)])"
    )
    env = runtime.environment({})
    out = subprocess.check_output(
        [str(runtime.python), "-c", code], env=env, text=True, cwd=cartpole_dir
    )
    assert "(3, 11)" in out and str(config.cache_dir()) in out
    assert out.strip().endswith("['gymnasium', 'numpy', 'msgpack']")


def test_first_start_locks_a_spec_without_lockfile_and_says_so(cartpole_dir: Path):
    (cartpole_dir / "spec.venv.lock.txt").unlink()
    _, notes = _ensure(cartpole_dir)
    assert any("no venv lockfile yet" in n for n in notes)
    assert (cartpole_dir / "spec.venv.lock.txt").is_file()


def test_unfinished_runtime_is_removed_and_rebuilt(cartpole_dir: Path):
    runtime, _ = _ensure(cartpole_dir)
    (runtime.venv_dir / MARKER).unlink()
    _, notes = _ensure(cartpole_dir)
    assert is_complete(runtime.venv_dir) and any("built the venv" in n for n in notes)


def _setup_dir(cartpole_dir: Path, script: str) -> Path:
    (cartpole_dir / "env_setup.py").write_text(script)
    source = catalog.find("mycart", cartpole_dir)
    key = runtime_key(lock.venv_lock_path(source), "3.11", source.setup_script)
    return config.cache_dir() / "venv" / key


def test_env_setup_runs_once_in_the_runtime(cartpole_dir: Path):
    venv_dir = _setup_dir(
        cartpole_dir,
        "import sys, os\nopen('setup-ran', 'a').write(sys.prefix + os.linesep)\n",
    )
    _ensure(cartpole_dir)
    _ensure(cartpole_dir)
    assert (cartpole_dir / "setup-ran").read_text().split() == [str(venv_dir)]


def test_failing_env_setup_leaves_nothing(cartpole_dir: Path):
    venv_dir = _setup_dir(cartpole_dir, "raise SystemExit('setup says no')\n")
    with pytest.raises(BuildError, match="setup says no"):
        _ensure(cartpole_dir)
    assert not venv_dir.exists()


@pytest.mark.slow
def test_interrupted_build_leaves_no_unmarked_runtime(cartpole_dir: Path):
    started = cartpole_dir / "setup-started"
    venv_dir = _setup_dir(cartpole_dir, "import time\nopen('setup-started', 'w')\ntime.sleep(60)\n")
    command = CLI + ["build", "-e", "mycart", "-p", str(cartpole_dir), "-b", "venv"]
    interrupt_build(command, started, venv_dir, wait=60)


def test_venv_backend_implements_the_protocols(cartpole_dir: Path):
    from portal_env.runtimes import Backend, Runtime

    backend = get("venv")
    assert isinstance(backend, Backend) and backend.name == "venv"
    runtime, _ = _ensure(cartpole_dir)
    assert isinstance(runtime, Runtime) and runtime.backend == "venv"


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(BackendUnavailableError, match="unknown backend 'conda'"):
        get("conda")
