"""The conda channel settings portal-env honours, read where micromamba reads them.

Three keys change where a channel is fetched from: `channel_alias` (the base URL of
every channel given by name), `custom_channels` (name -> base URL; the channel is
`<base>/<name>`) and `mirrored_channels` (name or URL -> list of mirror URLs of the
channel). `mirrors` turns them into URLs.

Where they are read, as micromamba 2.x reads them (libmamba's
`compute_default_rc_sources`), lowest precedence first: `/etc/conda/` and
`/var/lib/conda/` (`.condarc`, `condarc`, `condarc.d/*`, `.mambarc`),
`$MAMBA_ROOT_PREFIX` (the same names), `~/.config/conda/` (or `$XDG_CONFIG_HOME/conda/`),
`~/.conda/`, `~/.condarc`, `$CONDA_PREFIX/`, then `~/.config/mamba/`, `~/.mamba/`,
`~/.mambarc`. When `$CONDARC` or `$MAMBARC` is set, only the files they name are read
(`$MAMBARC` first), as in micromamba (which also skips such a file unless it is named
`.condarc`, `condarc`, `.mambarc`, `mambarc` or `*.yml`/`*.yaml`; portal-env reads it and
warns). Environment variables come before every file:
`MAMBA_CHANNEL_ALIAS`, `MAMBA_CUSTOM_CHANNELS`, `MAMBA_MIRRORED_CHANNELS` (micromamba's
names), then `CONDA_CHANNEL_ALIAS`, `CONDA_CUSTOM_CHANNELS`, `CONDA_MIRRORED_CHANNELS`;
a mapping is written in YAML, e.g. `MAMBA_MIRRORED_CHANNELS='{conda-forge: [URL]}'`.
As in micromamba, a key is taken whole from the first place that sets it (maps are
not merged across files).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..errors import CondaConfigError

logger = logging.getLogger(__name__)

KEYS = ("channel_alias", "custom_channels", "mirrored_channels")
ENV_PREFIXES = ("MAMBA_", "CONDA_")
_RC_NAMES = (".condarc", "condarc", "condarc.d", ".mambarc")
_CONFIG_NAMES = (".condarc", "condarc", ".mambarc", "mambarc")


@dataclass(frozen=True)
class Setting:
    """One key's value and where it was read (a file, or an environment variable)."""

    key: str
    value: Any
    source: str

    def __str__(self) -> str:
        return f"{self.key} in {self.source}"


@dataclass(frozen=True)
class ChannelSettings:
    """The channel settings in force, and the files they were read from.

    Attributes:
        channel_alias: The base URL of channels given by name (a str), if set.
        custom_channels: Channel name -> base URL (Dict[str, str]), if set.
        mirrored_channels: Channel name or URL -> mirror URLs (Dict[str, List[str]]), if set.
        files: Every configuration file that was read, highest precedence first.
    """

    channel_alias: Optional[Setting] = None
    custom_channels: Optional[Setting] = None
    mirrored_channels: Optional[Setting] = None
    files: Tuple[Path, ...] = ()

    def settings(self) -> List[Setting]:
        """The keys that are set."""
        found = [self.channel_alias, self.custom_channels, self.mirrored_channels]
        return [setting for setting in found if setting is not None]


def read(env: Mapping[str, str] = os.environ) -> ChannelSettings:
    """The channel settings from env's variables and the configuration files."""
    files = [path for path in reversed(search_path(env)) if path.is_file()]
    contents = [(path, _load(path)) for path in files]
    found: Dict[str, Setting] = {}
    for key in KEYS:
        setting = _from_environment(key, env) or _from_files(key, contents)
        if setting is not None:
            found[key] = _checked(setting)
    return ChannelSettings(files=tuple(files), **found)


def search_path(env: Mapping[str, str] = os.environ) -> List[Path]:
    """The configuration files micromamba would read, lowest precedence first."""
    explicit = [env[var] for var in ("CONDARC", "MAMBARC") if env.get(var)]
    if explicit:  # micromamba: these replace the default places; $MAMBARC wins
        missing = [path for path in explicit if not Path(path).expanduser().is_file()]
        if missing:
            raise CondaConfigError(
                f"the conda configuration file {missing[0]} ($CONDARC or $MAMBARC) does not "
                "exist; create it or unset the variable"
            )
        for path in explicit:
            if not _is_config_name(Path(path).name):
                logger.warning(
                    "reading %s, which micromamba 2.x skips without a word: name it .condarc "
                    "or *.yml for micromamba too",
                    path,
                )
        return [Path(path).expanduser() for path in explicit]
    home = Path(env.get("HOME") or os.path.expanduser("~"))
    config = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    places: List[Path] = []
    for directory in (Path("/etc/conda"), Path("/var/lib/conda")):
        places += [directory / name for name in _RC_NAMES]
    if env.get("MAMBA_ROOT_PREFIX"):
        places += [Path(env["MAMBA_ROOT_PREFIX"]) / name for name in _RC_NAMES]
    for directory in (config / "conda", home / ".conda"):
        places += [directory / name for name in _RC_NAMES[:3]]
    places.append(home / ".condarc")
    if env.get("CONDA_PREFIX"):
        places += [Path(env["CONDA_PREFIX"]) / name for name in _RC_NAMES[:3]]
    for directory in (config / "mamba", home / ".mamba"):
        places += [directory / name for name in (".mambarc", "mambarc", "mambarc.d")]
    places.append(home / ".mambarc")
    return _expand_dirs(list(dict.fromkeys(places)))  # each place once, at its first position


def _expand_dirs(places: List[Path]) -> List[Path]:
    """Places with each `*.d` directory replaced by its configuration files, by name."""
    expanded = []
    for place in places:
        if place.name.endswith(".d") and place.is_dir():
            expanded += sorted(p for p in place.iterdir() if _is_config_name(p.name))
        else:
            expanded.append(place)
    return expanded


def _is_config_name(name: str) -> bool:
    return name in _CONFIG_NAMES or name.endswith((".yml", ".yaml"))


def _from_environment(key: str, env: Mapping[str, str]) -> Optional[Setting]:
    import yaml

    for prefix in ENV_PREFIXES:
        var = prefix + key.upper()
        raw = env.get(var)
        if not raw:
            continue
        try:
            value = raw if key == "channel_alias" else yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise CondaConfigError(
                f"${var} is not valid YAML ({exc}); write it as e.g. "
                f"{var}='{{conda-forge: [https://MIRROR/conda-forge]}}'"
            ) from None
        return Setting(key, value, f"${var}")
    return None


def _from_files(key: str, contents: List[Tuple[Path, Dict[str, Any]]]) -> Optional[Setting]:
    for path, data in contents:
        if data.get(key) is not None:
            return Setting(key, data[key], str(path))
    return None


def _load(path: Path) -> Dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CondaConfigError(f"cannot read the conda configuration file {path}: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f", line {mark.line + 1}" if mark else ""
        raise CondaConfigError(
            f"{path}{where}: not valid YAML ({exc.problem}); fix the file"
        ) from None
    except yaml.YAMLError as exc:
        raise CondaConfigError(f"{path}: not valid YAML ({exc}); fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CondaConfigError(f"{path} is not a conda configuration file (expected a mapping)")
    return data


def _checked(setting: Setting) -> Setting:
    """setting, if its value has the key's shape; else an error naming where it was read."""
    value, example = setting.value, _EXAMPLES[setting.key]
    if setting.key == "channel_alias":
        good = isinstance(value, str) and bool(value.strip())
    elif setting.key == "custom_channels":
        good = isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in value.items()
        )
    else:
        good = isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, list) and v and all(isinstance(u, str) for u in v)
            for k, v in value.items()
        )
    if not good:
        raise CondaConfigError(f"{setting} is {value!r:.120}; it should look like: {example}")
    return setting


_EXAMPLES = {
    "channel_alias": "channel_alias: https://MIRROR (channels by name: https://MIRROR/NAME)",
    "custom_channels": "custom_channels: {conda-forge: https://MIRROR} "
    "(conda-forge is then https://MIRROR/conda-forge)",
    "mirrored_channels": "mirrored_channels: {conda-forge: [https://MIRROR/conda-forge]}",
}
