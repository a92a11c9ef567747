"""The micromamba (mm) backend and its conda lock, against a local file:// channel.

conda-forge is unreachable here, so a session fixture makes a real channel of
real conda packages (tests/conda_channel.py) indexed with py-rattler; pip
packages come from PyPI. Every test runs twice, from the same lockfile: once
installing with py-rattler and once with the micromamba executable
(tests/installers.py; `.ci/run` builds micromamba and sets
PORTAL_ENV_TEST_MICROMAMBA).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest

from portal_env.errors import BuildError, ChannelError, LockError, SpecError
from portal_env.runtimes import Backend, LogReporter, Runtime, catalog, condalock, get, prefix
from portal_env.runtimes.cache import MARKER
from portal_env.runtimes.micromamba import MicromambaBackend

from . import installers
from .conda_channel import (
    ACTIVATE_VAR,
    OTHER_PLATFORM,
    PREFIX_VAR,
    TOOL,
    build_channel,
    locked_cartpole,
    write_spec,
)
from .conftest import CLI, cli, closed_port, interrupt_build, pid_alive, wait_gone

pytestmark = pytest.mark.conda

ROOT = Path(__file__).resolve().parent.parent
PY = "{}.{}".format(*sys.version_info[:2])
LOCK = "spec.conda-lock.yml"


class Notes(LogReporter):
    def __init__(self) -> None:
        self.notes = []

    def note(self, message: str) -> None:
        self.notes.append(message)


@pytest.fixture(scope="session")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_channel(tmp_path_factory.mktemp("conda-channel"))


@pytest.fixture(scope="session")
def locked_template(channel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An env dir (CartPole env_main.py, spec.yml) locked once per session."""
    env_dir = tmp_path_factory.mktemp("conda-env") / "cartpole"
    return locked_cartpole(env_dir, channel, conda=("cloudpickle", "portal-test-activate"))


@pytest.fixture(autouse=True, params=installers.ALL)
def installer(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> str:
    """Every test of this module runs with each installer (py-rattler, micromamba), each
    with a runtime cache of its own (a prefix's cache key is the lock, not the installer)."""
    if request.param == installers.MICROMAMBA and installers.micromamba() is None:
        pytest.skip(f"no micromamba executable here; set {installers.TEST_VAR} (see .ci/run)")
    root = tmp_path_factory.getbasetemp() / "mamba-root"
    for key, value in installers.environment(request.param, root).items():
        monkeypatch.setenv(key, value)
    cache = tmp_path_factory.getbasetemp() / f"conda-cache-{request.param}"
    monkeypatch.setenv("PORTAL_ENV_CACHE_DIR", str(cache))
    return request.param


@pytest.fixture
def env_dir(locked_template: Path, tmp_path: Path) -> Path:
    target = tmp_path / "cartpole"
    shutil.copytree(locked_template, target)
    return target


def ensure(env_dir: Path, force: bool = False):
    notes = Notes()
    source = catalog.find("mycart", env_dir)
    runtime = MicromambaBackend().ensure(source, force=force, reporter=notes)
    built_by = json.loads((runtime.prefix / MARKER).read_text())["installer"]
    assert built_by == prefix.installer()  # the test's installer built what it checks
    return runtime, notes.notes


def cache_dir() -> Path:
    return Path(os.environ["PORTAL_ENV_CACHE_DIR"])


def installed(prefix_dir: Path) -> List[tuple]:
    """(name, version, build, sha256) of each conda package in a prefix's conda-meta/."""
    records = [json.loads(p.read_text()) for p in (prefix_dir / "conda-meta").glob("*.json")]
    return sorted((r["name"], r["version"], r["build"], r["sha256"]) for r in records)


# -- lock ------------------------------------------------------------------------


def test_spec_gets_python_and_serving_deps(tmp_path: Path):
    path = tmp_path / "spec.yml"
    path.write_text("channels: [c]\ndependencies:\n  - numpy\n  - pip:\n      - Gymnasium\n")
    spec = condalock.read_spec(path)
    assert spec.conda == ["numpy", "python", "pip"] and spec.pip == ["Gymnasium", "msgpack"]


def test_lock_is_deterministic_and_read_by_conda_lock_and_rattler(env_dir: Path):
    first = (env_dir / LOCK).read_bytes()
    done = cli("lock", "mycart", "-p", str(env_dir), "--platform", "linux-64")
    assert done.returncode == 0, done.stderr
    assert (env_dir / LOCK).read_bytes() == first  # byte-identical

    from conda_lock.lockfile import parse_conda_lock_file

    parsed = parse_conda_lock_file(env_dir / LOCK)
    by_manager = {m: {p.name for p in parsed.package if p.manager == m} for m in ("conda", "pip")}
    assert {"python", "pip", "cloudpickle", "portal-test-activate"} == by_manager["conda"]
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


def test_invalid_yaml_is_reported_before_the_spec_hash(env_dir: Path):
    (env_dir / "spec.yml").write_text("channels:\n  - x\ndependencies: [python\n")
    with pytest.raises(SpecError, match=r"spec\.yml, line \d+, column \d+: not valid YAML"):
        ensure(env_dir)  # not "the spec's hash changed": the lockfile is still there
    done = cli("start", "mycart", "-p", str(env_dir), "-b", "mm", "-d")
    assert done.returncode == 1 and "not valid YAML" in done.stderr, done.stderr
    assert "older version" not in done.stderr


def test_first_start_locks_a_spec_without_lockfile_and_says_so(env_dir: Path):
    (env_dir / LOCK).unlink()
    _, notes = ensure(env_dir)
    assert any("no conda lockfile yet" in n for n in notes)
    spec_hash = condalock.lock.file_hash(env_dir / "spec.yml")
    assert condalock.recorded_spec_hash(env_dir / LOCK) == spec_hash
    locked = {(p["manager"], p["name"]) for p in prefix.locked_packages(env_dir / LOCK, "linux-64")}
    assert {("conda", "python"), ("conda", "cloudpickle"), ("pip", "gymnasium")} <= locked


@pytest.mark.parametrize(
    "conda, expected",
    [(("python=2.7",), r"python 2\.7"), (("no-such-conda-package",), "no-such-conda-package")],
)
def test_unsatisfiable_spec_names_the_packages(env_dir: Path, channel: Path, conda, expected):
    write_spec(env_dir, channel, conda=conda)
    (env_dir / LOCK).unlink()
    done = cli("lock", "mycart", "-p", str(env_dir), "-b", "mm")
    assert done.returncode == 1 and "cannot be satisfied" in done.stderr, done.stderr
    assert re.search(expected, done.stderr) and "Traceback" not in done.stderr


def test_malformed_spec_names_the_file_and_line(env_dir: Path):
    (env_dir / "spec.yml").write_text("channels:\n  - x\ndependencies:\n  - python\n - bad: [\n")
    with pytest.raises(SpecError, match=r"spec\.yml.*line 5"):
        condalock.read_spec(env_dir / "spec.yml")
    done = cli("lock", "mycart", "-p", str(env_dir), "-b", "mm")
    assert done.returncode == 1 and "spec.yml" in done.stderr and "line 5" in done.stderr


def test_unknown_platform_is_refused(env_dir: Path):
    done = cli("lock", "mycart", "-p", str(env_dir), "--platform", "linux-65")
    assert done.returncode == 1 and "unknown platform 'linux-65'" in done.stderr


def test_git_requirement_is_refused_before_solving(env_dir: Path, channel: Path):
    write_spec(env_dir, channel, pip=("gymnasium", "x @ git+https://example.invalid/x.git"))
    done = cli("lock", "mycart", "-p", str(env_dir), "-b", "mm")
    assert done.returncode == 1, done.stderr
    assert "cannot pin 'x @ git+https://example.invalid/x.git'" in done.stderr, done.stderr


@pytest.mark.parametrize("venv_ok", [True, False])
def test_unreachable_channel_says_so_and_suggests_venv(env_dir: Path, venv_ok: bool):
    url = f"http://127.0.0.1:{closed_port()}/conda-forge"
    conda = "" if venv_ok else "  - cmake\n"  # a conda package: no venv for this env
    (env_dir / "spec.yml").write_text(
        f"channels:\n  - {url}\ndependencies:\n  - python={PY}\n{conda}"
        "  - pip:\n      - gymnasium\n"
    )
    (env_dir / LOCK).unlink()
    with pytest.raises(ChannelError, match=r"cannot be reached") as caught:
        ensure(env_dir)
    hint = f"portal-env start mycart -p {env_dir} -b venv"
    assert (hint in str(caught.value)) == venv_ok, str(caught.value)
    done = cli("start", "mycart", "-p", str(env_dir), "-b", "mm", "-d")
    assert done.returncode == 1 and (hint in done.stderr) == venv_ok, done.stderr


def test_two_platform_lock_installs_this_platforms_half(env_dir: Path):
    done = cli(
        "lock", "mycart", "-p", str(env_dir), "--platform", "linux-64", "--platform", OTHER_PLATFORM
    )
    assert done.returncode == 0, done.stderr
    for platform in ("linux-64", OTHER_PLATFORM):
        entries = prefix.locked_packages(env_dir / LOCK, platform)
        python = [e for e in entries if e["name"] == "python"]
        assert len(python) == 1 and f"/{platform}/python-" in python[0]["url"]
        assert {"gymnasium", "numpy"} <= {e["name"] for e in entries if e["manager"] == "pip"}
    runtime, _ = ensure(env_dir)
    records = [json.loads(p.read_text()) for p in (runtime.prefix / "conda-meta").glob("*.json")]
    assert {r["name"]: r["subdir"] for r in records}["python"] == "linux-64"
    assert all(OTHER_PLATFORM not in r["url"] for r in records)
    out = subprocess.check_output(
        [str(runtime.python), "-c", "import gymnasium, cloudpickle; print('ok')"],
        env=runtime.environment({}),
        text=True,
    )
    assert out.strip() == "ok"


# -- build -----------------------------------------------------------------------


def test_build_cache_hit_force_and_unfinished_prefix(env_dir: Path, installer: str):
    runtime, _ = ensure(env_dir, force=True)
    marker = runtime.prefix / MARKER
    assert json.loads(marker.read_text())["installer"] == installer
    first = marker.stat().st_mtime_ns
    again, notes = ensure(env_dir)
    assert again.prefix == runtime.prefix and marker.stat().st_mtime_ns == first
    assert not any("built" in n for n in notes)
    _, notes = ensure(env_dir, force=True)
    assert marker.stat().st_mtime_ns != first and any("built the conda prefix" in n for n in notes)
    marker.unlink()
    _, notes = ensure(env_dir)
    assert marker.is_file() and any("built the conda prefix" in n for n in notes)


def test_packages_are_kept_in_PORTAL_ENV_PKGS_DIR(
    env_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    pkgs = tmp_path / "my-pkgs"
    monkeypatch.setenv("PORTAL_ENV_PKGS_DIR", str(pkgs))
    ensure(env_dir, force=True)
    # micromamba keeps file:// packages under pkgs/file/<channel path>/<subdir>/
    extracted = {p.parent.parent.name for p in pkgs.rglob("info/index.json")}
    python = f"python-{sys.version.split()[0]}-0_portal_test"
    assert {"cloudpickle-3.1.1-py_0", python} <= extracted, extracted


def test_prefix_is_isolated_activated_and_finds_portal_env(env_dir: Path):
    runtime, _ = ensure(env_dir)
    assert isinstance(runtime, Runtime) and runtime.backend == "micromamba"
    assert runtime.socket_dir() is not None  # on this host: a private Unix socket
    env = runtime.environment({})
    assert env[ACTIVATE_VAR] == f"yes-from-{runtime.prefix.name}"
    assert env[PREFIX_VAR] == str(runtime.prefix)  # the placeholder, rewritten at install
    assert env["CONDA_PREFIX"] == str(runtime.prefix)
    path = env["PATH"].split(os.pathsep)
    # the activation script's PATH change, then the prefix's bin/, then ours
    assert path[:2] == [str(runtime.prefix / "opt/portal-test/bin"), str(runtime.prefix / "bin")]
    assert path[2:] == os.environ["PATH"].split(os.pathsep)
    tool = subprocess.check_output([TOOL], env=env, text=True)
    assert tool.strip() == f"{TOOL} of {runtime.prefix}"
    code = (
        "import sys, cloudpickle, gymnasium, numpy, msgpack, portal_env, importlib.util as u\n"
        "print(sys.prefix); print(cloudpickle.__file__); print(portal_env.__file__)\n"
        "print([n for n in ('click', 'rich', 'rattler', 'conda_lock') if u.find_spec(n)])"
    )
    out = subprocess.check_output(["python", "-c", code], env=env, text=True, cwd=env_dir)
    prefix_line, cloudpickle, portal, extra = out.split("\n")[:4]
    assert prefix_line == str(runtime.prefix)
    assert cloudpickle.startswith(f"{runtime.prefix}/lib/")
    assert "portal_env-src" in portal and extra == "[]"


def test_env_setup_runs_once_in_the_activated_prefix(env_dir: Path):
    (env_dir / "env_setup.py").write_text(
        "import os, sys\n"
        f"line = [sys.prefix, os.environ[{ACTIVATE_VAR!r}], os.environ['PATH'].split(':')[0]]\n"
        "open('setup-ran', 'a').write(' '.join(line) + '\\n')\n"
    )
    runtime, _ = ensure(env_dir, force=True)
    ensure(env_dir)
    where = runtime.prefix
    expected = [f"{where} yes-from-{where.name} {where}/opt/portal-test/bin"]
    assert (env_dir / "setup-ran").read_text().splitlines() == expected


def test_failing_env_setup_leaves_nothing(env_dir: Path):
    (env_dir / "env_setup.py").write_text("raise SystemExit('setup says no')\n")
    with pytest.raises(BuildError, match="setup says no"):
        ensure(env_dir)
    assert not (cache_dir() / "conda" / _key(env_dir)).exists()


def _key(env_dir: Path) -> str:
    source = catalog.find("m", env_dir)
    return prefix.prefix_key(env_dir / LOCK, prefix.current_platform(), source.setup_script)


def _lock_then_tamper(
    env_dir: Path, private: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lock against the private channel, then swap cloudpickle's archive for another
    package's, and make the next build download into fresh pkgs."""
    assert cli("lock", "mycart", "-p", str(env_dir), "-b", "mm").returncode == 0
    archive = next((private / "noarch").glob("cloudpickle-*.tar.bz2"))
    shutil.copy(next((private / "noarch").glob("typing-extensions-*.tar.bz2")), archive)
    monkeypatch.setenv("PORTAL_ENV_PKGS_DIR", str(tmp_path / "pkgs"))


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
    assert not (cache_dir() / "conda" / _key(env_dir)).exists()


def test_tampered_download_fails_the_installers_hash_check(
    env_dir: Path, channel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, installer: str
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
        # each installer's own check: py-rattler's, or micromamba's
        checked = {"py-rattler": r"hash mismatch", "micromamba": r"tarball has incorrect SHA256"}
        with pytest.raises(BuildError, match=rf"(?s)cloudpickle.*{checked[installer]}"):
            ensure(env_dir)
    finally:
        server.shutdown()
        server.server_close()
    assert not (cache_dir() / "conda" / _key(env_dir)).exists()


@pytest.mark.slow
def test_interrupted_build_leaves_no_prefix(env_dir: Path):
    started = env_dir / "setup-started"
    (env_dir / "env_setup.py").write_text(
        "import time\nopen('setup-started', 'w')\ntime.sleep(60)\n"
    )
    prefix_dir = cache_dir() / "conda" / _key(env_dir)
    command = CLI + ["build", "-e", "mycart", "-p", str(env_dir), "-b", "mm"]
    interrupt_build(command, started, prefix_dir, wait=120)


# -- serve -----------------------------------------------------------------------


def _server_process(pid: int) -> tuple:
    """(argv, environment) of a running process, from /proc."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    environ = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    return argv, dict(item.split("=", 1) for item in environ if "=" in item)


@pytest.mark.slow
def test_lock_start_step_stop_end_to_end(env_dir: Path, reap_portals: None, installer: str):
    from portal_env import AgentSidePortal
    from portal_env.serving import registry

    (env_dir / LOCK).unlink()
    assert cli("lock", "mycart", "-p", str(env_dir), "-b", "mm").returncode == 0
    done = cli("start", "mycart", "-p", str(env_dir), "-b", "mm", "-d", "-f")
    assert done.returncode == 0 and "(micromamba, pid" in done.stdout, done.stderr
    record = registry.get("mycart")
    prefix_dir = cache_dir() / "conda" / _key(env_dir)
    assert json.loads((prefix_dir / MARKER).read_text())["installer"] == installer
    # the prefix's own python runs the server directly (no `micromamba run` in between),
    # with the prefix's activation
    argv, environ = _server_process(record.server_pid)
    assert argv == [str(prefix_dir / "bin" / "python"), str(env_dir / "env_main.py")]
    assert environ[ACTIVATE_VAR] == f"yes-from-{prefix_dir.name}"
    assert environ["PATH"].startswith(f"{prefix_dir}/opt/portal-test/bin:{prefix_dir}/bin:")
    env = AgentSidePortal("mycart", env_args=["CartPole-v1"])
    try:
        obs, _ = env.reset(seed=0)
        assert obs.shape == (4,) and env.step(env.action_space.sample())[1] == 1.0
    finally:
        env.close()
    stopped = cli("stop", "mycart")
    assert stopped.returncode == 0 and "stopped mycart" in stopped.stdout
    assert wait_gone(record.server_pid) and wait_gone(record.supervisor_pid)


@pytest.mark.slow
def test_ctrl_c_reaches_the_server(env_dir: Path, reap_portals: None):
    from portal_env.serving import registry

    ensure(env_dir)  # built here, so the wait below is for the server only
    command = CLI + ["start", "mycart", "-p", str(env_dir), "-b", "mm"]
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        record = None
        while time.monotonic() < deadline and proc.poll() is None:
            record = registry.get("mycart")
            if record is not None and record.server_pid and record.state == "ready":
                break
            time.sleep(0.1)
        assert record is not None and pid_alive(record.server_pid), proc.poll()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        assert proc.wait(30) in (0, 130)
        assert wait_gone(record.server_pid)
        assert registry.get("mycart") is None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_backend_protocol_and_alias():
    backend = get("mm")
    assert isinstance(backend, Backend) and backend.name == "micromamba"
    assert isinstance(backend, MicromambaBackend)


def test_installer_choice_and_how_to_force_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    fake = tmp_path / "micromamba"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.delenv("PORTAL_ENV_CONDA_INSTALLER")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("MAMBA_EXE", raising=False)
    assert prefix.installer() == "micromamba"  # found on PATH: used by default
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert prefix.installer() == "py-rattler"  # none found
    monkeypatch.setenv("MAMBA_EXE", str(fake))
    assert prefix.installer() == "micromamba" and prefix.micromamba_exe() == str(fake)
    monkeypatch.setenv("PORTAL_ENV_CONDA_INSTALLER", "rattler")
    assert prefix.installer() == "py-rattler"
    monkeypatch.delenv("MAMBA_EXE")
    monkeypatch.setenv("PORTAL_ENV_CONDA_INSTALLER", "micromamba")
    with pytest.raises(BuildError, match=r"PORTAL_ENV_CONDA_INSTALLER=micromamba.*MAMBA_EXE"):
        prefix.installer()
    monkeypatch.setenv("PORTAL_ENV_CONDA_INSTALLER", "conda")
    with pytest.raises(BuildError, match=r"'conda' is not an installer; use 'rattler' or"):
        prefix.installer()
