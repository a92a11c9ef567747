"""The micromamba (mm) backend and its conda lock, against a local file:// channel.

conda-forge is unreachable here, so a session fixture makes a real channel of
real conda packages (tests/conda_channel.py) indexed with py-rattler; pip
packages come from PyPI. Without a micromamba executable the prefix is
installed with py-rattler; the micromamba path is tested only where one exists.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from portal_env.errors import BuildError, LockError, SpecError
from portal_env.runtimes import Backend, LogReporter, Runtime, catalog, condalock, get
from portal_env.runtimes.base import ProcessHandle
from portal_env.runtimes.micromamba import MARKER, MicromambaBackend, micromamba_exe

from .conda_channel import ACTIVATE_VAR, build_channel, locked_cartpole, write_spec
from .conftest import interrupt_build, wait_gone

pytestmark = pytest.mark.conda

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "portal_env.cli"]
PY = "{}.{}".format(*sys.version_info[:2])
LOCK = "spec.conda-lock.yml"


class Notes(LogReporter):
    def __init__(self) -> None:
        self.notes = []

    def note(self, message: str) -> None:
        self.notes.append(message)


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_channel(tmp_path_factory.mktemp("conda-channel"))


@pytest.fixture(scope="session")
def locked_template(channel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An env dir (CartPole env_main.py, spec.yml) locked once per session."""
    env_dir = tmp_path_factory.mktemp("conda-env") / "cartpole"
    return locked_cartpole(env_dir, channel, conda=("cloudpickle", "portal-test-activate"))


@pytest.fixture
def env_dir(locked_template: Path, tmp_path: Path) -> Path:
    target = tmp_path / "cartpole"
    shutil.copytree(locked_template, target)
    return target


def ensure(env_dir: Path, force: bool = False):
    notes = Notes()
    source = catalog.find("mycart", env_dir)
    return MicromambaBackend().ensure(source, force=force, reporter=notes), notes.notes


# -- lock ------------------------------------------------------------------------


def test_spec_gets_python_and_serving_deps(tmp_path: Path):
    path = tmp_path / "spec.yml"
    path.write_text("channels: [c]\ndependencies:\n  - numpy\n  - pip:\n      - Gymnasium\n")
    spec = condalock.read_spec(path)
    assert spec.conda == ["numpy", "python"] and spec.pip == ["Gymnasium", "msgpack"]


def test_lock_is_deterministic_and_read_by_conda_lock_and_rattler(env_dir: Path):
    first = (env_dir / LOCK).read_bytes()
    done = cli("lock", "mycart", "-p", str(env_dir), "--platform", "linux-64")
    assert done.returncode == 0, done.stderr
    assert (env_dir / LOCK).read_bytes() == first  # byte-identical

    from conda_lock.lockfile import parse_conda_lock_file

    parsed = parse_conda_lock_file(env_dir / LOCK)
    by_manager = {m: {p.name for p in parsed.package if p.manager == m} for m in ("conda", "pip")}
    assert {"python", "cloudpickle", "portal-test-activate"} == by_manager["conda"]
    assert {"gymnasium", "numpy", "msgpack"} <= by_manager["pip"]
    assert "cloudpickle" not in by_manager["pip"]  # the conda package provides it
    assert all(p.hash.sha256 and p.url for p in parsed.package)
    spec_hash = condalock.lock.file_hash(env_dir / "spec.yml")
    assert parsed.metadata.custom_metadata == {condalock.SPEC_HASH_KEY: spec_hash}
    assert set(parsed.metadata.content_hash) == {"linux-64"}

    import rattler

    environment = rattler.LockFile.from_path(env_dir / LOCK).default_environment()
    platform = environment.platforms()[0]
    conda = environment.conda_repodata_records_for_platform(platform)
    assert sorted(r.name.normalized for r in conda) == sorted(by_manager["conda"])
    pypi = environment.pypi_packages_for_platform(platform)
    assert {p.name for p in pypi} == by_manager["pip"]


def test_changed_spec_is_detected_with_the_relock_command(env_dir: Path):
    with open(env_dir / "spec.yml", "a") as f:
        f.write("# edited\n")
    with pytest.raises(LockError, match=r"older version .*portal-env lock mycart -p .* -b mm"):
        ensure(env_dir)


def test_first_start_locks_a_spec_without_lockfile_and_says_so(env_dir: Path):
    (env_dir / LOCK).unlink()
    _, notes = ensure(env_dir)
    assert any("no conda lockfile yet" in n for n in notes)
    assert (env_dir / LOCK).is_file()


@pytest.mark.parametrize(
    "conda, expected",
    [(("python=2.7",), r"python 2\.7"), (("no-such-conda-package",), "no-such-conda-package")],
)
def test_unsatisfiable_spec_names_the_packages(env_dir: Path, channel: Path, conda, expected):
    write_spec(env_dir, channel, conda=conda)
    (env_dir / LOCK).unlink()
    done = cli("lock", "mycart", "-p", str(env_dir))
    assert done.returncode == 1 and "cannot be satisfied" in done.stderr, done.stderr
    assert __import__("re").search(expected, done.stderr) and "Traceback" not in done.stderr


def test_malformed_spec_names_the_file_and_line(env_dir: Path):
    (env_dir / "spec.yml").write_text("channels:\n  - x\ndependencies:\n  - python\n - bad: [\n")
    with pytest.raises(SpecError, match=r"spec\.yml.*line 5"):
        condalock.read_spec(env_dir / "spec.yml")
    done = cli("lock", "mycart", "-p", str(env_dir))
    assert done.returncode == 1 and "spec.yml" in done.stderr and "line 5" in done.stderr


def test_unknown_platform_is_refused(env_dir: Path):
    done = cli("lock", "mycart", "-p", str(env_dir), "--platform", "linux-65")
    assert done.returncode == 1 and "unknown platform 'linux-65'" in done.stderr


# -- build -----------------------------------------------------------------------


def test_build_cache_hit_force_and_unfinished_prefix(env_dir: Path):
    runtime, _ = ensure(env_dir)
    marker = runtime.prefix / MARKER
    first = marker.stat().st_mtime_ns
    again, notes = ensure(env_dir)
    assert again.prefix == runtime.prefix and marker.stat().st_mtime_ns == first
    assert not any("built" in n for n in notes)
    _, notes = ensure(env_dir, force=True)
    assert marker.stat().st_mtime_ns != first and any("built the conda prefix" in n for n in notes)
    marker.unlink()
    _, notes = ensure(env_dir)
    assert marker.is_file() and any("built the conda prefix" in n for n in notes)


def test_prefix_is_isolated_activated_and_finds_portal_env(env_dir: Path):
    runtime, _ = ensure(env_dir)
    assert isinstance(runtime, Runtime) and runtime.backend == "micromamba" and runtime.local
    env = runtime.environment({})
    assert env[ACTIVATE_VAR] == f"yes-from-{runtime.prefix.name}"
    assert env["CONDA_PREFIX"] == str(runtime.prefix)
    assert env["PATH"].split(os.pathsep)[0] == str(runtime.prefix / "bin")
    code = (
        "import sys, cloudpickle, gymnasium, numpy, msgpack, portal_env, importlib.util as u\n"
        "print(sys.prefix); print(cloudpickle.__file__); print(portal_env.__file__)\n"
        "print([n for n in ('click', 'rich', 'rattler', 'conda_lock') if u.find_spec(n)])"
    )
    out = subprocess.check_output(["python", "-c", code], env=env, text=True, cwd=env_dir)
    prefix, cloudpickle, portal, extra = out.split("\n")[:4]
    assert prefix == str(runtime.prefix) and cloudpickle.startswith(f"{runtime.prefix}/lib/")
    assert "portal_env-src" in portal and extra == "[]"


def test_failing_env_setup_leaves_nothing(env_dir: Path):
    (env_dir / "env_setup.py").write_text("raise SystemExit('setup says no')\n")
    with pytest.raises(BuildError, match="setup says no"):
        ensure(env_dir)
    assert not list((Path(os.environ["PORTAL_ENV_CACHE_DIR"]) / "conda").glob(_key(env_dir)))


def _key(env_dir: Path) -> str:
    from portal_env.runtimes.micromamba import current_platform, prefix_key

    return prefix_key(env_dir / LOCK, current_platform(), catalog.find("m", env_dir).setup_script)


def _lock_then_tamper(
    env_dir: Path, private: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lock against the private channel, then swap cloudpickle's archive for another
    package's, and make the next build install with py-rattler into fresh pkgs."""
    assert cli("lock", "mycart", "-p", str(env_dir)).returncode == 0
    archive = next((private / "noarch").glob("cloudpickle-*.tar.bz2"))
    shutil.copy(next((private / "noarch").glob("typing-extensions-*.tar.bz2")), archive)
    monkeypatch.setenv("PORTAL_ENV_PKGS_DIR", str(tmp_path / "pkgs"))
    monkeypatch.setenv("PORTAL_ENV_CONDA_INSTALLER", "rattler")


def test_tampered_package_fails_its_hash_check(
    env_dir: Path, channel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    private = tmp_path / "channel"
    shutil.copytree(channel, private)
    write_spec(env_dir, private)
    (env_dir / LOCK).unlink()
    _lock_then_tamper(env_dir, private, tmp_path, monkeypatch)
    with pytest.raises(BuildError, match=r"hash mismatch for conda package cloudpickle at"):
        ensure(env_dir)
    assert not (Path(os.environ["PORTAL_ENV_CACHE_DIR"]) / "conda" / _key(env_dir)).exists()


def test_tampered_download_fails_rattlers_hash_check(
    env_dir: Path, channel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import functools
    import http.server
    import threading

    private = tmp_path / "channel"
    shutil.copytree(channel, private)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(private))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        (env_dir / "spec.yml").write_text(
            (env_dir / "spec.yml").read_text().replace(channel.as_uri(), url)
        )
        (env_dir / LOCK).unlink()
        _lock_then_tamper(env_dir, private, tmp_path, monkeypatch)
        with pytest.raises(BuildError, match=r"(?s)cloudpickle.*hash mismatch"):
            ensure(env_dir)
    finally:
        server.shutdown()
        server.server_close()
    assert not (Path(os.environ["PORTAL_ENV_CACHE_DIR"]) / "conda" / _key(env_dir)).exists()


@pytest.mark.slow
def test_interrupted_build_leaves_no_prefix(env_dir: Path):
    started = env_dir / "setup-started"
    (env_dir / "env_setup.py").write_text(
        "import time\nopen('setup-started', 'w')\ntime.sleep(60)\n"
    )
    prefix = Path(os.environ["PORTAL_ENV_CACHE_DIR"]) / "conda" / _key(env_dir)
    command = CLI + ["build", "-e", "mycart", "-p", str(env_dir), "-b", "mm"]
    interrupt_build(command, started, prefix, wait=120)


# -- serve -----------------------------------------------------------------------


@pytest.mark.slow
def test_lock_start_step_stop_end_to_end(env_dir: Path, reap_portals: None):
    from portal_env import AgentSidePortal

    (env_dir / LOCK).unlink()
    assert cli("lock", "mycart", "-p", str(env_dir), "-b", "mm").returncode == 0
    done = cli("start", "mycart", "-p", str(env_dir), "-b", "mm", "-d")
    assert done.returncode == 0 and "(micromamba, pid" in done.stdout, done.stderr
    from portal_env.serving import registry

    record = registry.get("mycart")
    env = AgentSidePortal("mycart", env_args=["CartPole-v1"])
    try:
        obs, _ = env.reset(seed=0)
        assert obs.shape == (4,) and env.step(env.action_space.sample())[1] == 1.0
    finally:
        env.close()
    stopped = cli("stop", "mycart")
    assert stopped.returncode == 0 and "stopped mycart" in stopped.stdout
    assert wait_gone(record.server_pid) and wait_gone(record.supervisor_pid)


def test_backend_protocol_and_alias():
    backend = get("mm")
    assert isinstance(backend, Backend) and backend.name == "micromamba"
    assert isinstance(backend, MicromambaBackend)
    assert ProcessHandle  # the runtime launches through the shared ProcessHandle


@pytest.mark.skipif(micromamba_exe() is None, reason="no micromamba executable on this machine")
def test_micromamba_executable_builds_the_same_lock(env_dir: Path, monkeypatch):
    monkeypatch.delenv("PORTAL_ENV_CONDA_INSTALLER", raising=False)
    runtime, _ = ensure(env_dir, force=True)
    info = (runtime.prefix / MARKER).read_text()
    assert '"installer": "micromamba"' in info
    out = subprocess.check_output(
        ["python", "-c", "import cloudpickle, gymnasium; print('ok')"],
        env=runtime.environment({}),
        text=True,
    )
    assert out.strip() == "ok"
