"""Conda channel mirrors: `.condarc` (and its variables) read as micromamba reads them, the
name `conda-forge` served from a local file:// channel through each key, locked to
canonical URLs, built, served and exported through a mirror, under both installers.

conda-forge is unreachable here, so the "mirror" is the conda tests' channel of real
packages (tests/conda_channel.py) under a temporary directory: `mirrored_channels`
points at it, `channel_alias` and `custom_channels` at a directory holding it as
`conda-forge/`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Dict

import pytest

from portal_env.errors import ChannelError, CondaConfigError
from portal_env.runtimes import LogReporter, catalog, condarc, export, mirrors, prefix
from portal_env.runtimes.micromamba import MicromambaBackend

from . import installers
from .conda_channel import build_channel
from .conftest import cli, closed_port, needs_netns, offline_cli

pytestmark = pytest.mark.conda

PY = "{}.{}".format(*sys.version_info[:2])
LOCK = "spec.conda-lock.yml"
CANONICAL = f"{mirrors.DEFAULT_ALIAS}/conda-forge/"
KEYS = ("mirrored_channels", "custom_channels", "channel_alias")
_CONDARC_VARS = ("CONDARC", "MAMBARC") + tuple(
    prefix + key.upper() for prefix in condarc.ENV_PREFIXES for key in condarc.KEYS
)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory that serves the local channel as `conda-forge` (MIRROR/conda-forge)."""
    channel = build_channel(tmp_path_factory.mktemp("mirror-channel"))
    root = tmp_path_factory.mktemp("mirror")
    (root / "conda-forge").symlink_to(channel, target_is_directory=True)
    return root


def setting(key: str, mirror: Path) -> Dict:
    """The .condarc mapping that serves conda-forge from mirror through key."""
    value = {
        "mirrored_channels": {"conda-forge": [(mirror / "conda-forge").as_uri()]},
        "custom_channels": {"conda-forge": mirror.as_uri()},
        "channel_alias": mirror.as_uri(),
    }[key]
    return {key: value}


@pytest.fixture(autouse=True)
def no_user_condarc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME of the test's own (no ~/.condarc of the machine's user), and no variables."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("UV_CACHE_DIR", installers.uv_cache_dir())
    for var in _CONDARC_VARS + ("XDG_CONFIG_HOME", "CONDA_PREFIX", "MAMBA_ROOT_PREFIX"):
        monkeypatch.delenv(var, raising=False)
    return home


def write_condarc(path: Path, data: Dict) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def cartpole(env_dir: Path, channel: str = "conda-forge") -> Path:
    """The example's CartPole env with a spec that names channel (not a URL)."""
    env_dir.mkdir(parents=True)
    example = Path(__file__).resolve().parent.parent / "examples" / "cartpole_env"
    shutil.copy(example / "env_main.py", env_dir / "env_main.py")
    (env_dir / "spec.yml").write_text(
        f"channels:\n  - {channel}\ndependencies:\n  - python={PY}\n  - cloudpickle\n"
        "  - pip:\n      - gymnasium\n"
    )
    return env_dir


def built_prefixes(cache: Path) -> list:
    return [p for p in (cache / "conda").glob("*") if p.is_dir()]


def conda_urls(lock_path: Path) -> list:
    return [p["url"] for p in prefix.locked_packages(lock_path, prefix.current_platform())
            if p["manager"] == "conda"]  # fmt: skip


# -- reading the settings ------------------------------------------------------------


def test_files_are_read_in_micromambas_order(no_user_condarc: Path, tmp_path: Path):
    home = no_user_condarc
    env = {"HOME": str(home), "CONDA_PREFIX": str(tmp_path / "active")}
    write_condarc(home / ".condarc", {"channel_alias": "https://from-condarc"})
    assert condarc.read(env).channel_alias.value == "https://from-condarc"
    # ~/.config/conda/condarc.d/*.yml is below ~/.condarc; $CONDA_PREFIX/.condarc above it
    write_condarc(home / ".config/conda/condarc.d/site.yml", {"channel_alias": "https://low"})
    write_condarc(tmp_path / "active" / ".condarc", {"custom_channels": {"x": "https://a"}})
    settings = condarc.read(env)
    assert settings.channel_alias.source == str(home / ".condarc")
    assert settings.custom_channels.source == str(tmp_path / "active" / ".condarc")
    # ~/.mambarc is above every conda file
    write_condarc(home / ".mambarc", {"channel_alias": "https://from-mambarc"})
    assert condarc.read(env).channel_alias.value == "https://from-mambarc"
    assert condarc.read(env).files[0] == home / ".mambarc"  # highest precedence first
    # a key is taken whole from the first file that sets it (maps are not merged)
    write_condarc(home / ".condarc", {"custom_channels": {"y": "https://b"}})
    assert condarc.read(env).custom_channels.value == {"x": "https://a"}


def test_the_file_that_wins_is_the_one_micromamba_reads(no_user_condarc: Path, tmp_path: Path):
    """Every user-level place holds a channel_alias of its own: the one micromamba itself
    reports is ours too, and again after removing it, until none is left."""
    import subprocess

    exe = installers.micromamba()
    if exe is None:
        pytest.skip(f"no micromamba executable here; set {installers.TEST_VAR} (see .ci/run)")
    home, root, active = no_user_condarc, tmp_path / "root", tmp_path / "active"
    env = {"HOME": str(home), "MAMBA_ROOT_PREFIX": str(root), "CONDA_PREFIX": str(active)}
    env["PATH"] = os.environ["PATH"]
    places = [root / name for name in (".condarc", "condarc", "condarc.d/a.yml", ".mambarc")]
    for directory in (home / ".config/conda", home / ".conda", active):
        places += [directory / name for name in (".condarc", "condarc", "condarc.d/a.yml")]
    for directory in (home / ".config/mamba", home / ".mamba"):
        places += [directory / name for name in (".mambarc", "mambarc", "mambarc.d/a.yml")]
    places += [home / ".condarc", home / ".mambarc"]
    for number, place in enumerate(places):
        write_condarc(place, {"channel_alias": f"https://alias-{number}"})
    command = [exe, "config", "list", "channel_alias", "--sources", "--json"]
    for _ in places:
        reported = json.loads(subprocess.check_output(command, env=env, text=True))
        theirs = reported["channel_alias"]["source"][0].replace("~", str(home), 1)
        ours = condarc.read(env).channel_alias
        assert (ours.source, ours.value) == (theirs, reported["channel_alias"]["value"])
        Path(theirs).unlink()
    assert condarc.read(env).channel_alias is None


def test_condarc_variable_replaces_the_default_places_and_variables_come_first(
    no_user_condarc: Path, tmp_path: Path
):
    home = no_user_condarc
    write_condarc(home / ".condarc", {"channel_alias": "https://home"})
    mine = write_condarc(tmp_path / "site.condarc", {"mirrored_channels": {"c": ["https://m"]}})
    env = {"HOME": str(home), "CONDARC": str(mine)}
    settings = condarc.read(env)
    assert settings.channel_alias is None and settings.files == (mine,)  # as micromamba
    env["MAMBA_CHANNEL_ALIAS"] = "https://from-env"
    env["CONDA_MIRRORED_CHANNELS"] = "{c: [https://env-mirror]}"
    settings = condarc.read(env)
    assert str(settings.channel_alias) == "channel_alias in $MAMBA_CHANNEL_ALIAS"
    assert settings.mirrored_channels.value == {"c": ["https://env-mirror"]}
    env["CONDARC"] = str(tmp_path / "missing.condarc")
    with pytest.raises(CondaConfigError, match=r"missing\.condarc \(\$CONDARC or \$MAMBARC\)"):
        condarc.read(env)


def test_bad_settings_name_the_file_line_and_key(no_user_condarc: Path):
    path = no_user_condarc / ".condarc"
    path.write_text("channel_alias: https://x\nmirrored_channels: [\n")
    with pytest.raises(CondaConfigError, match=rf"{path}, line \d+: not valid YAML"):
        condarc.read({"HOME": str(no_user_condarc)})
    write_condarc(path, {"mirrored_channels": {"conda-forge": "https://one-url-not-a-list"}})
    with pytest.raises(CondaConfigError, match=rf"mirrored_channels in {path} is .*should look"):
        condarc.read({"HOME": str(no_user_condarc)})
    with pytest.raises(CondaConfigError, match=r"\$MAMBA_CUSTOM_CHANNELS is not valid YAML"):
        condarc.read({"HOME": str(no_user_condarc), "MAMBA_CUSTOM_CHANNELS": "{a: [b"})


def test_routes_follow_micromambas_order_and_keep_canonical_urls():
    settings = condarc.ChannelSettings(
        channel_alias=condarc.Setting("channel_alias", "https://alias.example/", "a"),
        custom_channels=condarc.Setting("custom_channels", {"bioconda": "https://c.ex"}, "b"),
        mirrored_channels=condarc.Setting(
            "mirrored_channels", {"conda-forge": ["https://m1.ex/cf", "https://m2.ex/cf"]}, "c"
        ),
    )
    router = mirrors.Router(settings)
    routes = [router.route(c) for c in ("conda-forge", "bioconda", "pytorch", "https://own/ch")]
    assert [(r.canonical, r.url, r.setting and r.setting.key) for r in routes] == [
        (CANONICAL[:-1], "https://m1.ex/cf", "mirrored_channels"),
        (f"{mirrors.DEFAULT_ALIAS}/bioconda", "https://c.ex/bioconda", "custom_channels"),
        (f"{mirrors.DEFAULT_ALIAS}/pytorch", "https://alias.example/pytorch", "channel_alias"),
        ("https://own/ch", "https://own/ch", None),
    ]
    package = "https://m1.ex/cf/noarch/x-1-0.conda"
    assert router.canonical_url(package, routes) == CANONICAL + "noarch/x-1-0.conda"
    assert router.fetch_url(CANONICAL + "noarch/x-1-0.conda")[0] == package
    # a channel whose name starts like a mirrored one is not under it
    assert router.route("conda-forge-extra").url == "https://alias.example/conda-forge-extra"


# -- lock, build, serve and export through a mirror ----------------------------------


@pytest.fixture(scope="module")
def reference_lock(mirror: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The lockfile of the CartPole spec made through mirrored_channels in ~/.condarc."""
    root = tmp_path_factory.mktemp("reference")
    env = dict(os.environ, HOME=str(root))
    for var in _CONDARC_VARS:
        env.pop(var, None)
    write_condarc(root / ".condarc", setting("mirrored_channels", mirror))
    env_dir = cartpole(root / "cartpole")
    done = cli("lock", "cp", "-p", str(env_dir), "-b", "mm", env=env)
    assert done.returncode == 0, done.stderr
    return (env_dir / LOCK).read_bytes()


@pytest.mark.parametrize("form", ["file", "variable"])
@pytest.mark.parametrize("key", KEYS)
def test_each_key_locks_conda_forge_through_the_mirror_to_canonical_urls(
    key: str, form: str, mirror: Path, reference_lock: bytes, tmp_path: Path, no_user_condarc
):
    env = dict(os.environ)
    value = setting(key, mirror)[key]
    if form == "file":
        write_condarc(no_user_condarc / ".condarc", {key: value})
    else:  # micromamba's variable for mirrored_channels, conda's for the others
        prefix_ = "MAMBA_" if key == "mirrored_channels" else "CONDA_"
        env[prefix_ + key.upper()] = value if isinstance(value, str) else json.dumps(value)
    env_dir = cartpole(tmp_path / "cartpole")
    done = cli("lock", "cp", "-p", str(env_dir), "-b", "mm", env=env)
    assert done.returncode == 0, done.stderr
    text = (env_dir / LOCK).read_text()
    assert "file://" not in text and str(mirror) not in text  # no mirror URL at all
    urls = conda_urls(env_dir / LOCK)
    assert {"python", "pip", "cloudpickle"} <= {u.rsplit("/", 1)[1].split("-")[0] for u in urls}
    assert all(url.startswith(CANONICAL) for url in urls), urls
    assert text.encode() == reference_lock  # the same lockfile through any key or form


@pytest.fixture
def installer(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """The installer of this test (py-rattler or the micromamba executable), with a cache of
    the test's own so that every build is cold."""
    if request.param == installers.MICROMAMBA and installers.micromamba() is None:
        pytest.skip(f"no micromamba executable here; set {installers.TEST_VAR} (see .ci/run)")
    home = os.environ["HOME"]  # the test's own HOME: micromamba gets its root beside it
    for key, value in installers.environment(request.param, tmp_path / "mamba-root").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HOME", home)  # where the test writes its ~/.condarc
    monkeypatch.setenv("PORTAL_ENV_CACHE_DIR", str(tmp_path / "cache"))
    return request.param


@pytest.mark.slow
@pytest.mark.parametrize("installer", installers.ALL, indirect=True)
def test_a_lock_made_through_one_mirror_builds_serves_and_exports_through_another(
    installer: str, mirror: Path, reference_lock: bytes, tmp_path: Path, no_user_condarc,
    reap_portals: None,
):  # fmt: skip
    from portal_env import AgentSidePortal

    env_dir = cartpole(tmp_path / "cartpole")
    (env_dir / LOCK).write_bytes(reference_lock)  # made with mirrored_channels elsewhere
    write_condarc(no_user_condarc / ".condarc", setting("channel_alias", mirror))
    done = cli("start", "cp", "-p", str(env_dir), "-b", "mm", "-d")
    assert done.returncode == 0, done.stderr
    built = built_prefixes(tmp_path / "cache")[0]
    assert json.loads((built / ".portal-env-complete").read_text())["installer"] == installer
    records = [json.loads(p.read_text()) for p in (built / "conda-meta").glob("*.json")]
    assert {r["name"] for r in records} >= {"python", "pip", "cloudpickle"}
    env = AgentSidePortal("cp", env_args=["CartPole-v1"])
    try:
        assert env.reset(seed=0)[0].shape == (4,)
    finally:
        env.close()
    assert cli("stop", "cp").returncode == 0
    # export (py-rattler, made for the image's path) fetches through the mirror too
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    source = catalog.find("cp", env_dir)
    out = export.export_image(source, tmp_path / "cp.tar", rootfs, reporter=LogReporter())
    assert out.path.is_file() and out.size > 1_000_000


@needs_netns
def test_an_unreachable_channel_names_it_the_settings_read_and_how_to_add_a_mirror(
    tmp_path: Path, no_user_condarc: Path
):
    env_dir = cartpole(tmp_path / "cartpole")
    empty = write_condarc(no_user_condarc / ".condarc", {"channels": ["conda-forge"]})
    done = offline_cli("lock", "cp", "-p", str(env_dir), "-b", "mm")  # never the real one
    assert done.returncode == 1, done.stderr
    assert f"channel 'conda-forge' at {CANONICAL[:-1]} (no mirror setting applies)" in done.stderr
    assert f"Mirror settings read: none (portal-env read {empty};" in done.stderr
    assert "mirrored_channels:\n    conda-forge: [https://MIRROR/conda-forge]" in done.stderr
    dead = f"http://127.0.0.1:{closed_port()}/conda-forge"
    path = write_condarc(
        no_user_condarc / ".condarc", {"mirrored_channels": {"conda-forge": [dead]}}
    )
    done = cli("lock", "cp", "-p", str(env_dir), "-b", "mm")
    assert done.returncode == 1, done.stderr
    assert f"'conda-forge' at {dead} (mirrored_channels in {path}) cannot be reached" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("installer", installers.ALL, indirect=True)
def test_a_build_whose_mirror_is_gone_names_the_channel_mirror_and_setting(
    installer: str, mirror: Path, reference_lock: bytes, tmp_path: Path, no_user_condarc
):
    env_dir = cartpole(tmp_path / "cartpole")
    (env_dir / LOCK).write_bytes(reference_lock)
    for gone, needle in (
        ((tmp_path / "nowhere").as_uri(), "No such file"),
        (f"http://127.0.0.1:{closed_port()}/conda-forge", "onnect"),
    ):
        path = write_condarc(
            no_user_condarc / ".condarc", {"mirrored_channels": {"conda-forge": [gone]}}
        )
        with pytest.raises(ChannelError) as caught:
            MicromambaBackend().ensure(
                catalog.find("cp", env_dir), force=False, reporter=LogReporter()
            )
        message = str(caught.value)
        assert f"'conda-forge' at {gone} (mirrored_channels in {path})" in message, message
        assert needle in message and "mirrored_channels:\n    conda-forge:" in message
        assert built_prefixes(tmp_path / "cache") == []  # nothing half-made is left


def test_messages_hide_the_credentials_of_mirror_urls():
    token = "s3cret-token"
    settings = condarc.ChannelSettings(
        mirrored_channels=condarc.Setting(
            "mirrored_channels", {"conda-forge": [f"https://me:{token}@m.example/cf"]}, "f"
        )
    )
    router = mirrors.Router(settings)
    route = router.route("conda-forge")
    assert route.url == f"https://me:{token}@m.example/cf"  # fetched with them
    message = mirrors.unreachable([route], f"error sending request for url ({route.url})", router)
    assert token not in message and "https://***@m.example/cf" in message
    assert token not in str(route) and token not in router.describe()
    # an installer that drops the user:token from the records still maps them back
    assert router.canonical_url("https://m.example/cf/noarch/a-1-0.conda", [route]) == (
        CANONICAL + "noarch/a-1-0.conda"
    )


@pytest.mark.parametrize("installer", installers.ALL, indirect=True)
def test_an_http_mirror_locks_and_builds_like_a_file_one(
    installer: str, mirror: Path, reference_lock: bytes, tmp_path: Path, no_user_condarc,
    monkeypatch: pytest.MonkeyPatch,
):  # fmt: skip
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(mirror))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/conda-forge"
        write_condarc(no_user_condarc / ".condarc", {"mirrored_channels": {"conda-forge": [url]}})
        env_dir = cartpole(tmp_path / "cartpole")
        done = cli("lock", "cp", "-p", str(env_dir), "-b", "mm")
        assert done.returncode == 0, done.stderr
        assert (env_dir / LOCK).read_bytes() == reference_lock  # no trace of the mirror
        monkeypatch.setenv("PORTAL_ENV_PKGS_DIR", str(tmp_path / "pkgs"))  # downloaded here
        runtime = MicromambaBackend().ensure(
            catalog.find("cp", env_dir), force=False, reporter=LogReporter()
        )
        records = [
            json.loads(p.read_text()) for p in (runtime.prefix / "conda-meta").glob("*.json")
        ]
        assert {"python", "pip", "cloudpickle"} <= {r["name"] for r in records}
    finally:
        server.shutdown()
        server.server_close()
