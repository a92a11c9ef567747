"""The docs' examples run: every bash, console and python block of README.md, CONTRIBUTING.md and
docs/ (tests/docblocks.py collects them) is a test, or says visibly why it cannot run here.

Each test runs its blocks as a reader would: from a fresh working directory holding a copy of
examples/, with `portal-env`, `python` and `python3` resolving to this checkout, this test's
private state dir and the session's runtime cache. A test fails if a command fails, if a
console block's output differs from the one shown, or if its example leaves a portal running.
The services of a marked example are the real ones, made as the other tests make them: `docker`
a daemon; `conda` a `.condarc` ($CONDARC) that mirrors conda-forge to the conda tests' local
channel of real packages (conda-forge is unreachable here); `slurm` a two-node cluster on
127.0.0.1; `ray` a loopback-only network namespace for the example's local Ray cluster;
`charliecloud` ch-run. An example that builds an image over `rootfs.tar` finds the Docker
tests' debootstrap rootfs there. Two things differ from a reader's machine, on purpose: `pip
install ...` is not re-run (the suite runs from the installed package, which is what it makes),
and on a Docker daemon that lacks the base image an example's Dockerfile starts from
(`python:3.11-slim`, `debian:bullseye-slim`; no registry is reachable here) the tests' local
Debian image with the same Python is tagged as it for the test's span.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

from . import docblocks
from .conftest import ROOT

BLOCKS, FORMAT_ERRORS = docblocks.collect()
SESSIONS = docblocks.sessions(BLOCKS)

# Runs before every bash block: install commands are the suite's own setup, not re-run.
BASH_PRELUDE = """\
pip() {
    if [ "${1:-}" = install ]; then
        echo "docs test: not re-running 'pip $*' (the tests run from the installed package)" >&2
        return 0
    fi
    command pip "$@"
}
"""


def test_every_code_block_is_well_formed():
    assert FORMAT_ERRORS == []


def test_the_collector_finds_the_examples():
    pages = {b.path for b in BLOCKS}
    assert (ROOT / "README.md") in pages and (ROOT / "docs" / "getting-started.md") in pages
    assert len(SESSIONS) >= 10


def _params() -> List:
    params = []
    for session in SESSIONS:
        marks = [getattr(pytest.mark, m) for m in session.markers]
        marks.append(pytest.mark.timeout(session.timeout))
        params.append(pytest.param(session, id=session.name, marks=marks))
    return params


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A reader's checkout: a private copy of examples/ (examples may write into it)."""
    import shutil

    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(ROOT / "examples", work / "examples")
    return work


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """portal-env, python and python3 of this checkout, first on PATH."""
    path = tmp_path / "bin"
    path.mkdir()
    for name, body in (
        ("portal-env", f'exec {sys.executable} -m portal_env.cli "$@"\n'),
        ("python", f'exec {sys.executable} "$@"\n'),
        ("python3", f'exec {sys.executable} "$@"\n'),
    ):
        script = path / name
        script.write_text("#!/bin/sh\n" + body)
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return path


# The base images the examples' Dockerfiles start FROM, and the tests' local images that
# stand in for them (no registry is reachable here): Debian with the same Python.
STAND_INS = {"python:3.11-slim": "base_image", "debian:bullseye-slim": "bullseye_image"}


def dockerfile_bases(session: docblocks.Session) -> List[str]:
    """The `ARG BASE_IMAGE=` defaults of the examples/*/Dockerfile.env the session serves
    (`-p examples/NAME`)."""
    code = "\n".join(b.code for b in session.blocks)
    found = []
    for dockerfile in sorted((ROOT / "examples").glob("*/Dockerfile.env")):
        if f"-p examples/{dockerfile.parent.name}" in code:
            found += re.findall(r"^ARG BASE_IMAGE=(\S+)", dockerfile.read_text(), re.MULTILINE)
    return found


@pytest.fixture
def docker_ready(request: pytest.FixtureRequest) -> Iterator[None]:
    """For docker examples: a daemon, and the examples' base images present (stand-ins,
    tagged for the test's span only when the daemon lacks them)."""
    if "docker" not in request.node.keywords:
        yield
        return
    from . import dockerhost

    client = dockerhost.client()
    tagged = []
    for name in dockerfile_bases(request.node.callspec.params["session"]):
        if name in STAND_INS and not dockerhost._has_image(client, name):
            local = client.images.get(getattr(dockerhost, STAND_INS[name])())
            local.tag(*name.split(":"))
            tagged.append(name)
    try:
        yield
    finally:
        from portal_env.serving import lifecycle

        try:
            lifecycle.stop(all=True)  # the example's containers, before the tags go
            _remove_named(client, request.node.callspec.params["session"])
        finally:
            for name in tagged:
                client.images.remove(name, noprune=True)


def _remove_named(client: Any, session: docblocks.Session) -> None:
    """The containers (`--name X`) and images (`--tag X`) the example made itself: gone
    even when it failed before removing them."""
    import docker

    code = "\n".join(b.code for b in session.blocks)
    for name in re.findall(r"--name[ =](\S+)", code):
        try:
            client.containers.get(name).remove(force=True)
        except docker.errors.APIError:  # not there, or already being removed (--rm)
            pass
    for tag in re.findall(r"--tag[ =](\S+)", code):
        try:
            client.images.remove(tag, force=True)
        except docker.errors.ImageNotFound:
            pass


@pytest.fixture
def reader_env(bin_dir: Path) -> Dict[str, str]:
    """The environment the examples see: this checkout's commands first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


# Ray examples run in a network namespace with only loopback: outside one, Ray advertises
# this machine's other addresses (tests talk to 127.0.0.0/8 only; see tests/test_ray.py).
LOOPBACK_ONLY = ["unshare", "--net", "bash", "-c", 'ip link set lo up && exec "$@"', "-"]


@pytest.fixture
def ray_prefix(request: pytest.FixtureRequest, workdir: Path, tmp_path: Path) -> List[str]:
    """For ray examples: the command prefix of a loopback-only namespace (empty otherwise),
    with the example env's runtime built first (there is no network in there)."""
    if "ray" not in request.node.keywords:
        return []
    import shutil

    pytest.importorskip("ray", reason="install the test extra: pip install -e '.[test]'")
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs root, unshare and ip to make a loopback-only network namespace")
    from portal_env.serving import lifecycle

    lifecycle.build("cartpole", path=workdir / "examples" / "cartpole_env", backend="venv")
    return LOOPBACK_ONLY


DEBIAN_PYTHON = Path("/usr/bin/python3.11")  # the Python of the tests' bookworm rootfs


def _mirror(root: Path, python: Optional[Path]) -> Path:
    """A .condarc that serves conda-forge from a local channel of real conda packages (the
    conda tests' channel, its python wrapping the given interpreter), as a site's mirror
    would: conda-forge is unreachable here."""
    from .conda_channel import build_channel

    channel = build_channel(root / "channel", python=python)
    (root / "mirror").mkdir()
    (root / "mirror" / "conda-forge").symlink_to(channel, target_is_directory=True)
    condarc = root / "condarc"
    url = f"{(root / 'mirror').as_uri()}/conda-forge"
    condarc.write_text(f"mirrored_channels:\n  conda-forge:\n    - {url}\n")
    return condarc


@pytest.fixture(scope="session")
def conda_mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _mirror(tmp_path_factory.mktemp("docs-conda"), None)


@pytest.fixture(scope="session")
def image_mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same for envs that go into an image over the rootfs: its python is Debian's."""
    if not DEBIAN_PYTHON.is_file():
        pytest.skip(f"{DEBIAN_PYTHON} (the rootfs's interpreter) is not on this host")
    return _mirror(tmp_path_factory.mktemp("docs-conda-image"), DEBIAN_PYTHON)


@pytest.fixture
def conda_env(request: pytest.FixtureRequest, workdir: Path, tmp_path: Path) -> Dict[str, str]:
    """For conda examples: $CONDARC naming such a mirror (it replaces the user's .condarc
    files), and py-rattler as the installer (micromamba would record the example's prefixes
    in the user's ~/.conda/environments.txt; tests/test_conda.py covers both installers).
    An example that builds an image over `rootfs.tar` gets the Docker tests' debootstrap
    rootfs there (made once, cached) and the mirror whose python that rootfs has."""
    session = request.node.callspec.params.get("session")
    over_rootfs = session is not None and "rootfs.tar" in "".join(b.code for b in session.blocks)
    if "conda" not in request.node.keywords and not over_rootfs:
        return {}
    from . import installers

    if over_rootfs:
        from . import dockerhost

        (workdir / "rootfs.tar").symlink_to(dockerhost.rootfs_tar())
    condarc = request.getfixturevalue("image_mirror" if over_rootfs else "conda_mirror")
    return {"CONDARC": str(condarc), **installers.environment(installers.RATTLER, tmp_path)}


@pytest.fixture
def slurm_env(request: pytest.FixtureRequest) -> Dict[str, str]:
    """For slurm examples: the cluster's SLURM_CONF. The jobs' servers listen on
    `hostname -i`, as on a cluster; here that must be a loopback address."""
    if "slurm" not in request.node.keywords:
        return {}
    found = subprocess.run(["hostname", "-i"], capture_output=True, text=True).stdout.split()
    if not found or not found[0].startswith("127."):
        pytest.skip(f"hostname -i is {found}, not loopback: the job's servers would listen there")
    return request.getfixturevalue("slurm").env()


@pytest.fixture
def charliecloud_ready(request: pytest.FixtureRequest) -> None:
    """For charliecloud examples: Charliecloud's ch-run (`.ci/run` installs it)."""
    import shutil

    if "charliecloud" in request.node.keywords and shutil.which("ch-run") is None:
        pytest.skip("Charliecloud's ch-run is missing: .ci/run installs charliecloud")


@pytest.mark.parametrize("session", _params())
def test_example(
    session: docblocks.Session,
    workdir: Path,
    reader_env: Dict[str, str],
    docker_ready: None,
    ray_prefix: List[str],
    conda_env: Dict[str, str],
    slurm_env: Dict[str, str],
    charliecloud_ready: None,
    reap_portals: None,
    tmp_path: Path,
):
    reader_env.update(conda_env, **slurm_env)
    import shutil
    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="rd-")  # short: Ray's socket paths are long
    if ray_prefix:
        reader_env.pop("RAY_ADDRESS", None)  # a local cluster of the example's own
        reader_env["RAY_TMPDIR"] = ray_tmp
    try:
        run_session(session, workdir, reader_env, tmp_path, ray_prefix)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def run_session(
    session: docblocks.Session,
    cwd: Path,
    env: Dict[str, str],
    tmp: Path,
    prefix: Sequence[str] = (),
    grace: float = 30.0,
) -> None:
    """Run a session's steps (each command under prefix); AssertionError naming the block
    if one fails, or if a portal is left running."""
    runner = Runner(cwd, env, tmp, session.timeout, prefix)
    try:
        for step in session.steps():
            runner.run(step)
    finally:
        failures = runner.interrupt_background(grace)
    assert failures == [], "\n".join(failures)
    from portal_env.serving import lifecycle

    left = [r.name for r in lifecycle.running()]
    assert left == [], f"the example {session.name} left portals running: {left}; stop them"


class Runner:
    """Runs a session's steps in one working directory and environment."""

    def __init__(
        self, cwd: Path, env: Dict[str, str], tmp: Path, timeout: float, prefix: Sequence[str]
    ) -> None:
        self.cwd, self.env, self.tmp, self.timeout = cwd, env, tmp, timeout
        self.prefix = list(prefix)
        self.count = 0
        self.background: List[Tuple[docblocks.Step, subprocess.Popen, Path]] = []

    def run(self, step: docblocks.Step) -> None:
        self.count += 1
        if step.kind == "file":
            target = self.cwd / step.file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(step.code)
        elif step.kind == "console":
            for command, expected in docblocks.console_commands(step.code):
                done = self._run(self._bash(command))
                output = done.stdout + done.stderr
                if expected is None:
                    _check(done.returncode == 0, step, command, done)
                else:
                    _check(docblocks.output_matches(expected, output), step, command, done,
                           f"expected output:\n{expected}")  # fmt: skip
        elif step.background:
            self._start_background(step)
        else:
            command = self._python(step.code) if step.kind == "python" else self._bash(step.code)
            done = self._run(command)
            _check(done.returncode == 0, step, step.code, done)

    def _bash(self, code: str) -> List[str]:
        script = self.tmp / f"step{self.count}.sh"
        script.write_text(BASH_PRELUDE + code)
        return [*self.prefix, "bash", "-e", str(script)]

    def _python(self, code: str) -> List[str]:
        script = self.tmp / f"step{self.count}.py"
        script.write_text(code)
        return [*self.prefix, sys.executable, str(script)]

    def _run(self, command: List[str]) -> subprocess.CompletedProcess:
        proc = subprocess.Popen(
            command, cwd=self.cwd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True,
        )  # fmt: skip
        try:
            stdout, stderr = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            stderr += f"\n(killed after {self.timeout} s)"
        finally:
            _end_group(proc.pid)
        return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)

    def _start_background(self, step: docblocks.Step) -> None:
        log = self.tmp / f"background{self.count}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                self._bash(step.code), cwd=self.cwd, env=self.env, stdout=out, stderr=out,
                start_new_session=True,
            )  # fmt: skip
        self.background.append((step, proc, log))
        deadline = time.monotonic() + self.timeout
        while not any(word in log.read_text() for word in READY_WORDS):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"the example at {step.where} did not say it was ready "
                    f"(exit {proc.poll()}):\n{step.code}--- output\n{log.read_text()[-4000:]}"
                )
            time.sleep(0.1)

    def interrupt_background(self, grace: float) -> List[str]:
        """Ctrl-C to every background step; what did not exit 0 within grace seconds."""
        failures = []
        for step, proc, log in self.background:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
            try:
                code = proc.wait(grace)
            except subprocess.TimeoutExpired:
                code = None
            _end_group(proc.pid)
            proc.wait()
            if code != 0:
                failures.append(
                    f"the example at {step.where} did not exit 0 on Ctrl-C (exit {code}):\n"
                    f"{step.code}--- output\n{log.read_text()[-4000:]}"
                )
        return failures


READY_WORDS = ("ready at", "serving on")


def _check(
    ok: bool, step: docblocks.Step, code: str, done: subprocess.CompletedProcess, why: str = ""
) -> None:
    if not ok:
        raise AssertionError(
            f"the example at {step.where} failed (exit {done.returncode}):\n--- code\n{code}\n"
            f"{why}\n--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}"
        )


def _end_group(pid: int) -> None:
    """Whatever a step left in its process group (a detached supervisor has its own)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        time.sleep(0.2)


# -- the collector and the runner themselves: what they refuse and what they catch -------


@pytest.mark.parametrize(
    "page, message",
    [
        ("```\nls\n```\n", "a code block without a language"),
        ("<!-- test: skip -->\n```bash\nls\n```\n", "needs a visible line below it"),
        ("> **Not run here:** why\n\n```bash\nls\n```\n", "needs <!-- test: skip --> above"),
        ("<!-- test: sesion=x -->\n```bash\nls\n```\n", "unknown test directive 'sesion=x'"),
        ("<!-- test: lines=3 -->\n```bash\nls\n```\n", "lines=3 but the block has 1"),
        ("<!-- test: session=x -->\n```text\nls\n```\n", "```text block without file="),
        ("```bash\nls\n", "never closed"),
    ],
)
def test_the_collector_refuses_a_block_it_cannot_place(tmp_path: Path, page: str, message: str):
    path = tmp_path / "page.md"
    path.write_text(page)
    with pytest.raises(docblocks.DocsFormatError, match=re.escape(message)):
        docblocks.parse(path)


def _session(tmp_path: Path, page: str) -> docblocks.Session:
    path = tmp_path / "page.md"
    path.write_text(page)
    (session,) = docblocks.sessions(docblocks.parse(path))
    return session


@pytest.mark.parametrize(
    "page, message",
    [
        ("```bash\nfalse\n```\n", "failed (exit 1)"),
        ("```python\nraise SystemExit(3)\n```\n", "failed (exit 3)"),
        ("```console\n$ echo hi\nhello\n```\n", "expected output:\nhello"),
        ("```console\n$ false\n```\n", "failed (exit 1)"),
        ("<!-- test: background -->\n```bash\necho started; exit 0\n```\n", "did not say"),
    ],
)
def test_the_runner_catches_an_example_that_fails(
    tmp_path: Path, workdir: Path, reader_env: Dict[str, str], page: str, message: str
):
    with pytest.raises(AssertionError, match=re.escape(message)):
        run_session(_session(tmp_path, page), workdir, reader_env, tmp_path)


def test_the_runner_passes_matching_output_and_files_between_blocks(
    tmp_path: Path, workdir: Path, reader_env: Dict[str, str]
):
    page = (
        "<!-- test: session=s file=data/x.txt -->\n```text\nhello there\n```\n"
        "<!-- test: session=s -->\n```console\n$ cat data/x.txt\nhello ...\n```\n"
        "<!-- test: session=s -->\n```python\nvalue = 3\n```\n"
        "<!-- test: session=s -->\n```python\nassert value == 3  # the block before's\n```\n"
    )
    run_session(_session(tmp_path, page), workdir, reader_env, tmp_path)


def test_a_background_server_must_stop_on_ctrl_c(
    tmp_path: Path, workdir: Path, reader_env: Dict[str, str]
):
    page = "<!-- test: background -->\n```bash\ntrap '' INT; echo ready at x; sleep 60\n```\n"
    with pytest.raises(AssertionError, match="did not exit 0 on Ctrl-C"):
        run_session(_session(tmp_path, page), workdir, reader_env, tmp_path, grace=2.0)


def test_an_example_that_leaves_a_portal_running_fails(
    tmp_path: Path, workdir: Path, reader_env: Dict[str, str], reap_portals: None
):
    page = "```bash\nportal-env start -p examples/cartpole_env mycart -b venv -d\n```\n"
    with pytest.raises(AssertionError, match=r"left portals running: \['mycart'\]"):
        run_session(_session(tmp_path, page), workdir, reader_env, tmp_path)
