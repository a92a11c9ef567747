"""The docker backend: an image per env, a container per server, driven by the Docker SDK.

An image comes from the env's `Dockerfile.env` (the seed's contract) or, when
there is none, from its conda lockfile: the locked prefix is installed on this
host (hash-checked, with the host's own index, proxy and CA settings) and
written as an OCI archive over a base image, then loaded. Either way the image
is tagged `portal-env/<name>:<hash of its inputs>`, so an unchanged env is
never rebuilt, and a build that fails or is interrupted tags nothing.

A server runs in a container named `env_portal_<name>` on the `portal_env_net`
network (where agents in other containers reach it by that name, port 7000),
with port 7000 published on 127.0.0.1 only. The token reaches it as a 0600
file mounted read-only, never as an environment variable (which `docker
inspect` shows). This host's portal_env package is mounted over the image's,
so both sides speak the same protocol; an image whose Python is older than 3.8
gets the small server's package instead (`image_python`, `legacy_shim`).
Containers carry labels naming their owner and supervisor; one whose supervisor
is gone is reaped.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import secrets
import socket
import tarfile
import threading
from pathlib import Path
from typing import IO, Any, Dict, List, Mapping, Optional

from .. import config
from ..errors import BackendUnavailableError, BuildError
from ..portal import wire
from ..serving import registry
from . import image_python
from .base import Reporter
from .catalog import EnvSource
from .image_layout import LIB  # where this host's portal_env package is mounted (as in exports)

logger = logging.getLogger(__name__)

NETWORK = "portal_env_net"
SERVER_PORT = config.DEFAULT_PORT  # inside the container; agents on the network use it
TOKEN_PATH = "/run/portal-env/token"  # the token file inside the container
IMAGE_REPO = "portal-env/"

LABEL = "org.portal-env"
LABEL_PORTAL = f"{LABEL}.portal"
LABEL_OWNER = f"{LABEL}.owner"  # uid@hostname: only this user's containers on this host
LABEL_SUPERVISOR = f"{LABEL}.supervisor"  # "pid start-time" of the supervising process
LABEL_INPUTS = f"{LABEL}.inputs"

# Docker's predefined proxy build args: passed through from this host, and (by
# Docker's design) left out of `docker history`, so no proxy credentials are baked in.
PROXY_ARGS = ("HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY")
# pip settings a Dockerfile.env may declare with ARG to reuse this host's index.
PIP_ARGS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST")
CA_FILE = "portal-env-ca.pem"  # where --ca-bundle lands in the build context
_SKIP = {".git", "__pycache__", ".mypy_cache", ".pytest_cache"}


def client(timeout: float = 120) -> Any:
    """A Docker SDK client that answered a ping, or a clear error naming the way out.
    timeout bounds each API call (builds stream, so it is per read)."""
    import docker

    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        docker_client = docker.from_env(timeout=timeout)
        docker_client.ping()
    except docker.errors.DockerException as exc:
        raise BackendUnavailableError(
            f"cannot reach the Docker daemon at {where} ({_short(exc)}). Start Docker "
            "(e.g. `sudo systemctl start docker`), or use a backend that needs no daemon: "
            "-b mm (conda prefix) or -b venv."
        ) from None
    return docker_client


def owner() -> str:
    """This user on this host, as recorded on every container we start."""
    return f"{os.getuid()}@{socket.gethostname()}"


# -- images --------------------------------------------------------------------------------


def inputs_digest(env_dir: Path, build_args: Mapping[str, str]) -> str:
    """A hash of what a Dockerfile build reads: the env dir's files and the build args."""
    digest = hashlib.sha256(b"portal-env-dockerfile-1\0")
    for path in _context_files(env_dir):
        digest.update(str(path.relative_to(env_dir)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    for key in sorted(build_args):
        digest.update(f"{key}={build_args[key]}\0".encode())
    return digest.hexdigest()


def build_args(dockerfile: Path, base_image: Optional[str]) -> Dict[str, str]:
    """Build args for dockerfile: --base-image as BASE_IMAGE, and the host's pip settings
    for the ARGs it declares (only those: an unused arg is just a warning, but a declared
    one is the Dockerfile's own choice to receive it)."""
    declared = set(re.findall(r"(?im)^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)", dockerfile.read_text()))
    args = {k: os.environ[k] for k in PIP_ARGS if k in declared and os.environ.get(k)}
    if base_image:
        if "BASE_IMAGE" not in declared:
            raise BuildError(
                f"--base-image {base_image} needs {dockerfile} to declare `ARG BASE_IMAGE` "
                "before its FROM line (`ARG BASE_IMAGE=python:3.11-slim` then "
                "`FROM ${BASE_IMAGE}`)"
            )
        args["BASE_IMAGE"] = base_image
    return args


def proxy_args() -> Dict[str, str]:
    """This host's proxy settings, as Docker's predefined (history-free) build args."""
    found = {}
    for name in PROXY_ARGS:
        for key in (name, name.lower()):
            if os.environ.get(key):
                found[key] = os.environ[key]
    return found


def context_tar(env_dir: Path, ca_bundle: Optional[Path]) -> io.BytesIO:
    """The build context: the env dir (minus caches and VCS) plus portal-env-ca.pem, the CA
    bundle (empty without one, so a Dockerfile can always COPY it and test `-s`)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in _context_files(env_dir):
            tar.add(str(path), arcname=str(path.relative_to(env_dir)), recursive=False)
        ca = ca_bundle.read_bytes() if ca_bundle is not None else b""
        info = tarfile.TarInfo(CA_FILE)
        info.size, info.mode = len(ca), 0o644
        tar.addfile(info, io.BytesIO(ca))
    buffer.seek(0)
    return buffer


def host_ca_bundle() -> Optional[Path]:
    """The CA bundle this host's pip uses ($PIP_CERT, else $SSL_CERT_FILE), if any: a
    private CA's certificate is public, so builds get it unless told otherwise."""
    for var in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        value = os.environ.get(var)
        if value and Path(value).is_file():
            return Path(value)
    return None


def _context_files(env_dir: Path) -> List[Path]:
    files = []
    for root, dirs, names in os.walk(env_dir):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP)
        files += [Path(root) / n for n in sorted(names) if not n.endswith(".pyc")]
    return files


def build_dockerfile_image(
    docker_client: Any,
    source: EnvSource,
    tag: str,
    args: Mapping[str, str],
    ca_bundle: Optional[Path],
    reporter: Reporter,
    no_cache: bool = False,
) -> None:
    """Build source's Dockerfile.env as tag; a BuildError with the failing step's output.
    no_cache (for -f) runs every step again, e.g. to take newer packages from an index."""
    import docker

    reporter.status(f"building image {tag} from {source.dockerfile}")
    api = docker_client.api
    output: List[str] = []
    try:
        stream = api.build(
            fileobj=context_tar(source.env_dir, ca_bundle),
            custom_context=True,
            dockerfile=source.dockerfile.name,
            tag=tag,
            buildargs={**proxy_args(), **args},
            labels={LABEL_PORTAL: source.name, LABEL_INPUTS: tag.rsplit(":", 1)[1]},
            nocache=no_cache,
            rm=True,
            forcerm=True,  # no intermediate containers left behind, even on failure
            network_mode="host",  # a proxy on this host's loopback works during the build
            decode=True,
        )
        for chunk in stream:
            if "stream" in chunk:
                output.append(chunk["stream"])
                line = chunk["stream"].strip()
                if line.startswith("Step "):
                    reporter.note(f"{source.name}: {line}")  # each step, TTY or not
                elif line and not line.startswith(" ---> "):
                    reporter.status(f"building {tag}: {line[:100]}")
            if "error" in chunk:
                raise BuildError(_build_failure(source, chunk["error"], output, args))
    except docker.errors.APIError as exc:
        raise BuildError(_build_failure(source, _short(exc), output, args)) from None


def _build_failure(
    source: EnvSource, error: str, output: List[str], args: Mapping[str, str]
) -> str:
    text = "".join(output)
    steps = [m.start() for m in re.finditer(r"(?m)^Step \d+/\d+ :", text)]
    failing = text[steps[-1] :] if steps else text
    lines = failing.rstrip().splitlines()
    head, body = (lines[0], lines[1:]) if steps else ("(before the first step)", lines)
    instruction = head.split(" : ", 1)[-1].strip()
    if instruction.upper().startswith("FROM "):
        image = _expand(instruction.split()[1], source.dockerfile, args)
        return _unpullable(source, image, error.strip())
    noise = (" ---> ", "Removing intermediate container")
    body = [line for line in body if not line.startswith(noise)][-60:]
    return (
        f"building the image of {source.name!r} from {source.dockerfile} failed at "
        f"{head.strip()}\n" + "\n".join(body) + f"\n{error.strip()}"
    )


def _expand(word: str, dockerfile: Path, args: Mapping[str, str]) -> str:
    """word with ${ARG}/$ARG replaced by the build args, else the ARG defaults."""
    values = dict(re.findall(r"(?im)^\s*ARG\s+(\w+)=(\S+)", dockerfile.read_text()))
    values.update(args)
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), word)


def _unpullable(source: EnvSource, image: str, reason: str) -> str:
    """The error for a base image the daemon neither has nor can pull."""
    from .listing import backends

    others = [b for b in backends(source) if b != "docker"]
    instead = f", or use a backend without Docker: -b {' or -b '.join(others)}" if others else ""
    return (
        f"the base image {image} of {source.name!r} is not in the Docker daemon and cannot "
        f"be pulled ({reason}). Pull it where its registry is reachable (docker pull "
        f"{image}), or name an image this daemon has with --base-image IMAGE{instead}."
    )


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def image_id(docker_client: Any, tag: str) -> Optional[str]:
    """The id of the image tagged tag, or None if the daemon has none."""
    import docker

    try:
        return docker_client.images.get(tag).id
    except docker.errors.ImageNotFound:
        return None


def image_exists(docker_client: Any, tag: str) -> bool:
    """Whether the daemon has an image tagged tag."""
    return image_id(docker_client, tag) is not None


def _remove_untagged(docker_client: Any, image: str) -> None:
    """Remove an image a rebuild left without a tag, unless a container still uses it."""
    import docker

    try:
        if not docker_client.images.get(image).tags:
            docker_client.images.remove(image)
    except docker.errors.APIError:  # in use, or gone already
        pass


# -- runtime and containers ----------------------------------------------------------------


class DockerRuntime:
    """An image that launches each server in a fresh `env_portal_<name>` container."""

    backend = "docker"

    def __init__(self, source: EnvSource, image: str, docker_client: Any, lib: Path) -> None:
        self.source = source
        self.image = image
        self.location = image
        self.client = docker_client
        # The portal_env mounted at LIB: this host's package, or the small server's for an
        # image whose Python is older than 3.8 (image_python).
        self.lib = lib
        self.published_port: Optional[int] = None  # kept across restarts when still free

    def socket_dir(self) -> Optional[Path]:
        """None: the container has a filesystem of its own, so the server listens on TCP."""
        return None

    def launch(self, env: Mapping[str, str], log: IO[bytes]) -> ContainerHandle:
        """Start a container serving on port 7000, published on the host's loopback.

        env is what the supervisor gives any server; a container gets the token as a
        mounted file and listens on all of its own interfaces (only the published
        loopback port and portal_env_net reach them).
        """
        import docker

        reap_orphans(self.client)
        name = config.container_name(self.source.name)
        _remove_stale(self.client, name)
        token_path = _write_token_file(self.source.name, env[config.TOKEN_VAR])
        ensure_network(self.client)
        try:
            container = self._run(name, token_path, _publish_host(env), self.published_port)
        except docker.errors.APIError as exc:
            if self.published_port is None or "already allocated" not in str(exc):
                raise
            # its old port was taken meanwhile: take any
            container = self._run(name, token_path, _publish_host(env), None)
        handle = ContainerHandle(container, token_path, log)
        self.published_port = handle.published.port
        return handle

    def _run(self, name: str, token_path: Path, host: str, port: Optional[int]) -> Any:
        pid = os.getpid()
        try:
            return self.client.containers.run(
                self.image,
                name=name,
                hostname=name,
                detach=True,
                network=NETWORK,
                ports={f"{SERVER_PORT}/tcp": (host, port)},  # port None: Docker picks one
                environment={
                    config.HOST_VAR: "0.0.0.0",
                    config.PORT_VAR: str(SERVER_PORT),
                    config.TOKEN_FILE_VAR: TOKEN_PATH,
                    config.SUPERVISED_VAR: "1",
                    "PYTHONPATH": LIB,
                    "PYTHONUNBUFFERED": "1",
                },
                volumes={
                    str(token_path): {"bind": TOKEN_PATH, "mode": "ro"},
                    str(self.lib): {"bind": LIB, "mode": "ro"},
                },
                labels={
                    LABEL_PORTAL: self.source.name,
                    LABEL_OWNER: owner(),
                    LABEL_SUPERVISOR: f"{pid} {registry.process_start_time(pid)}",
                },
                init=True,  # signals reach the server; no zombie children
            )
        except BaseException:  # e.g. created but not started: leave no container behind
            _remove_stale(self.client, name)
            raise


def _publish_host(env: Mapping[str, str]) -> str:
    host = env.get(config.HOST_VAR) or config.DEFAULT_HOST
    return host if host not in ("localhost", "") else config.DEFAULT_HOST


def token_file(portal: str) -> Path:
    """The 0600 file holding portal's token: mounted into its container, and into agents'
    containers by their users (`portal-env token NAME --file`)."""
    return config.tokens_dir() / f"portal-{portal}"


def _write_token_file(portal: str, token: str) -> Path:
    path = token_file(portal)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    staging.replace(path)
    return path


def ensure_network(docker_client: Any) -> None:
    """Create the portal_env_net bridge network if it does not exist yet."""
    import docker

    if not docker_client.networks.list(names=[NETWORK]):
        try:
            docker_client.networks.create(NETWORK, driver="bridge", labels={LABEL_OWNER: owner()})
        except docker.errors.APIError as exc:  # created concurrently by another start
            if exc.status_code != 409:
                raise


def _remove_stale(docker_client: Any, name: str) -> None:
    """Remove a leftover container called name if it is ours; refuse to touch anyone else's."""
    import docker

    try:
        container = docker_client.containers.get(name)
    except docker.errors.NotFound:
        return
    if container.labels.get(LABEL_OWNER) != owner():
        raise BuildError(
            f"a container named {name} exists and was not started by portal-env for this "
            f"user; remove or rename it (docker rm -f {name}) and start again"
        )
    if _supervisor_alive(container) and container.labels.get(LABEL_SUPERVISOR) != _me():
        raise BuildError(f"container {name} belongs to a running portal; stop that one first")
    logger.info("removing the leftover container %s", name)
    container.remove(force=True)


def _me() -> str:
    pid = os.getpid()
    return f"{pid} {registry.process_start_time(pid)}"


def _supervisor_alive(container: Any) -> bool:
    pid, _, start = container.labels.get(LABEL_SUPERVISOR, "").partition(" ")
    return pid.isdigit() and registry.is_alive(int(pid), start)


def reap_orphans(docker_client: Any) -> List[str]:
    """Remove this user's portal containers whose supervisor is gone (e.g. SIGKILLed);
    the names of their portals."""
    reaped = []
    for container in docker_client.containers.list(
        all=True, filters={"label": f"{LABEL_OWNER}={owner()}"}
    ):
        if not _supervisor_alive(container):
            logger.warning("reaping container %s: its supervisor is gone", container.name)
            container.remove(force=True)
            reaped.append(container.labels.get(LABEL_PORTAL, container.name))
    return reaped


def _direct_address(container: Any) -> Optional[wire.Address]:
    """The container's address on portal_env_net, if this host is on that bridge (it holds
    the gateway address, as with Docker on Linux; not so with a VM in between)."""
    network = container.attrs["NetworkSettings"]["Networks"].get(NETWORK) or {}
    ip, gateway = network.get("IPAddress"), network.get("Gateway")
    if not ip or not gateway:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((ip, SERVER_PORT))  # only picks a route; nothing is sent
        except OSError:
            return None
        if probe.getsockname()[0] != gateway:
            return None
    return wire.Address(host=ip, port=SERVER_PORT)


class ContainerHandle:
    """A server running in a container: its output copied to the portal's log by a thread
    that also records the exit code when the container stops. Stopping removes the
    container and the token file."""

    def __init__(self, container: Any, token_path: Path, log: IO[bytes]) -> None:
        self.container = container
        self.token_path = token_path
        self._code: Optional[int] = None
        self._stopped = False
        container.reload()
        binding = container.ports[f"{SERVER_PORT}/tcp"][0]
        self.published = wire.Address(host=binding["HostIp"], port=int(binding["HostPort"]))
        # Agents on this host use the container's own address when the host sits on the
        # bridge: docker-proxy, which relays the published port, costs 2.4-2.5x in steps/s.
        self.address: Optional[wire.Address] = _direct_address(container) or self.published
        self._follower = threading.Thread(target=self._follow, args=(log,), daemon=True)
        self._follower.start()

    @property
    def pid(self) -> Optional[int]:
        return None

    @property
    def ident(self) -> str:
        return self.container.name

    def _follow(self, log: IO[bytes]) -> None:
        import docker
        import requests

        try:
            for chunk in self.container.logs(stream=True, follow=True):
                if not log.closed:
                    log.write(chunk)
        except (docker.errors.DockerException, requests.RequestException, ValueError):
            pass
        while self._code is None:
            try:
                self._code = int(self.container.wait(timeout=60)["StatusCode"])
            except docker.errors.NotFound:
                self._code = -1
            except requests.RequestException:  # still running after a minute: wait again
                continue
            except docker.errors.DockerException:
                self._code = -1

    def poll(self) -> Optional[int]:
        return self._code

    def stop(self, grace: float) -> Optional[int]:
        """SIGTERM the server, SIGKILL after grace seconds, remove the container; idempotent."""
        import docker

        if not self._stopped:
            self._stopped = True
            try:
                self.container.stop(timeout=max(1, int(round(grace))))
            except docker.errors.NotFound:
                pass
            self._follower.join(grace + 10)
            try:
                self.container.remove(force=True)
            except docker.errors.NotFound:
                pass
            self.token_path.unlink(missing_ok=True)
        return self._code


# -- backend -------------------------------------------------------------------------------


class DockerBackend:
    """Builds env images (Dockerfile.env, else the conda lockfile) and runs containers."""

    name = "docker"

    def __init__(self, base_image: Optional[str] = None, ca_bundle: Optional[Path] = None):
        self.base_image = base_image
        self.ca_bundle = ca_bundle

    def lock(self, source: EnvSource, reporter: Reporter) -> Path:
        """A docker image built from a lockfile uses the conda one: lock that."""
        from .micromamba import MicromambaBackend

        return MicromambaBackend().lock(source, reporter)

    def ensure(self, source: EnvSource, *, force: bool, reporter: Reporter) -> DockerRuntime:
        """The image of source, built only if no image has the hash of its inputs (or force)."""
        docker_client = client()
        if source.dockerfile is not None:
            tag = self._dockerfile_image(docker_client, source, force, reporter)
        elif source.spec is not None:
            tag = self._lockfile_image(docker_client, source, force, reporter)
        else:
            raise BuildError(
                f"{source.env_dir} has neither Dockerfile.env nor spec.yml; the docker backend "
                "builds its image from one of them"
            )
        lib = image_python.server_package(docker_client, tag, reporter)
        return DockerRuntime(source, tag, docker_client, lib)

    def _dockerfile_image(
        self, docker_client: Any, source: EnvSource, force: bool, reporter: Reporter
    ) -> str:
        ca_bundle = self.ca_bundle or host_ca_bundle()
        if ca_bundle is not None and not ca_bundle.is_file():
            raise BuildError(f"--ca-bundle {ca_bundle} is not a file")
        args = build_args(source.dockerfile, self.base_image)
        digest = inputs_digest(source.env_dir, args)
        if ca_bundle is not None:
            digest = hashlib.sha256((digest + _file_digest(ca_bundle)).encode()).hexdigest()
        tag = f"{IMAGE_REPO}{source.name.lower()}:{digest[:12]}"
        old = image_id(docker_client, tag)
        if force or old is None:
            build_dockerfile_image(
                docker_client, source, tag, args, ca_bundle, reporter, no_cache=force
            )
            reporter.note(f"built image {tag} from {source.dockerfile}")
            if old is not None and old != image_id(docker_client, tag):
                _remove_untagged(docker_client, old)  # what -f replaced
        return tag

    def _lockfile_image(
        self, docker_client: Any, source: EnvSource, force: bool, reporter: Reporter
    ) -> str:
        """The image export writes from source's conda lockfile over the base image, loaded
        into the daemon. Its tag hashes the inputs, base layers included, so that question
        is answered without saving the base or staging anything."""
        from . import export

        base_name = self.base_image or config.DOCKER_BASE_IMAGE
        base = _base_image(docker_client, base_name, source)
        lock_path = export.lockfile(source, reporter)
        inputs = export.inputs_hash(source, lock_path, base.attrs["RootFS"]["Layers"])
        tag = export.tag_for(source.name, inputs)
        if not force and image_exists(docker_client, tag):
            return tag
        with _scratch_file(".base.tar") as base_archive, _scratch_file(".tar") as archive:
            reporter.status(f"saving the base image {base_name}")
            with open(base_archive, "wb") as f:
                for chunk in base.save(named=True):
                    f.write(chunk)
            export.export_image(
                source, archive, base_archive, tag=tag, lock_path=lock_path, reporter=reporter
            )
            reporter.status(f"loading {tag} into the Docker daemon")
            with open(archive, "rb") as f:
                docker_client.images.load(f)
        reporter.note(f"built image {tag} from {source.name}'s conda lockfile over {base_name}")
        return tag


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _base_image(docker_client: Any, name: str, source: EnvSource) -> Any:
    import docker

    try:
        return docker_client.images.get(name)
    except docker.errors.ImageNotFound:
        raise BuildError(_unpullable(source, name, "not found")) from None


class _scratch_file:
    """A temporary file path under the cache dir, removed on exit (also on Ctrl-C)."""

    def __init__(self, suffix: str) -> None:
        root = config.cache_dir() / "tmp"
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = root / f"{secrets.token_hex(8)}{suffix}"

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)
