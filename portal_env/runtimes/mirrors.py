"""Where a conda channel is fetched from here, and what a lockfile records for it.

A lockfile records each package at its canonical URL: a channel given by name is
`DEFAULT_ALIAS/NAME` (conda's default channel_alias), a channel given by URL is that
URL. That is what the package is called wherever the lock is installed, so a lockfile
made through one site's mirror installs at another site, through its own mirror or
none (pixi keeps its lockfiles portable the same way). Fetching goes through this
machine's settings (`condarc`), tried in micromamba's order: `mirrored_channels` (the
first mirror of the list), then `custom_channels`, then `channel_alias`.

portal-env maps the URLs itself, for both installers: py-rattler's MirrorMiddleware
takes only http(s) mirrors (a file:// mirror fails with "URL scheme is not allowed"),
and micromamba 2.8.1 applies none of the three settings to the explicit package URLs
of a lockfile (checked: `micromamba create -f LOCK` still fetched from the canonical
host with `mirrored_channels` or `channel_alias` set), so it is given a copy of the
lock with the URLs mapped.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

from . import condarc
from .condarc import ChannelSettings, Setting

logger = logging.getLogger(__name__)

DEFAULT_ALIAS = "https://conda.anaconda.org"
_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def as_url(location: str) -> str:
    """A channel location (URL, or a local path as conda accepts one) as a URL without a
    trailing slash."""
    location = location.strip()
    if "://" not in location and location.startswith(("/", "~", "./", "../")):
        location = Path(os.path.expanduser(location)).resolve().as_uri()
    return location.rstrip("/")


def canonical(channel: str) -> str:
    """The URL a lockfile records for a spec's channel (a name or a URL)."""
    if "://" in channel or channel.startswith(("/", "~", "./", "../")):
        return as_url(channel)
    return f"{DEFAULT_ALIAS}/{channel.strip('/')}"


def shown(text: str) -> str:
    """text with the credentials of any URL in it hidden (`https://***@host/...`): a
    mirror's URL may hold a user and token, which messages must not print."""
    return _CREDENTIALS.sub(r"\1***@", text)


def channel_name(url: str) -> str:
    """How a canonical channel URL is named in a spec: NAME under the default alias."""
    rest = _under(url, DEFAULT_ALIAS)
    return rest.strip("/") if rest else url


def _under(url: str, base: str) -> Optional[str]:
    """The rest of url after base ('' or '/...'), or None when url is not under base."""
    if url == base or url.startswith(base + "/"):
        return url[len(base) :]
    return None


@dataclass(frozen=True)
class Route:
    """A channel as this machine reaches it.

    Attributes:
        channel: The channel as the spec lists it (a name or a URL).
        canonical: The URL a lockfile records for it.
        url: Where it is fetched from here.
        setting: The setting that sent it to url (None: fetched at its canonical URL).
    """

    channel: str
    canonical: str
    url: str
    setting: Optional[Setting] = None

    def __str__(self) -> str:
        return shown(
            f"{self.channel} -> {self.url} ({self.setting or 'no mirror setting applies'})"
        )


class Router:
    """Maps canonical channel and package URLs to where this machine fetches them."""

    def __init__(self, settings: ChannelSettings) -> None:
        self.settings = settings

    @classmethod
    def from_environment(cls) -> Router:
        """A Router of the settings in force (files and variables read now)."""
        return cls(condarc.read())

    def route(self, channel: str) -> Route:
        """Where a spec's channel is fetched from, and what a lockfile records for it."""
        base = canonical(channel)
        url, setting = self.fetch_url(base)
        return Route(channel, base, url, setting)

    def fetch_url(self, url: str) -> Tuple[str, Optional[Setting]]:
        """Where the canonical URL url (a channel or a package in it) is fetched from here,
        and the setting that says so."""
        for base, target, setting in self._table:
            rest = _under(url, base)
            if rest is not None:
                return target + rest, setting
        return url, None

    @functools.cached_property
    def _table(self) -> List[Tuple[str, str, Setting]]:
        """(canonical base, fetched from, setting), in the order they apply; made on first
        use (a lock maps every package's URL)."""
        return self._mirrored() + self._custom() + self._alias()

    def _mirrored(self) -> List[Tuple[str, str, Setting]]:
        setting = self.settings.mirrored_channels
        if setting is None:
            return []
        pairs = [(canonical(key), as_url(urls[0])) for key, urls in setting.value.items()]
        return [(base, target, setting) for base, target in _longest_first(pairs)]

    def _custom(self) -> List[Tuple[str, str, Setting]]:
        setting = self.settings.custom_channels
        if setting is None:
            return []
        pairs = [
            (canonical(name), f"{as_url(base)}/{name.strip('/')}")
            for name, base in setting.value.items()
        ]
        return [(base, target, setting) for base, target in _longest_first(pairs)]

    def _alias(self) -> List[Tuple[str, str, Setting]]:
        setting = self.settings.channel_alias
        if setting is None or as_url(setting.value) == DEFAULT_ALIAS:
            return []
        return [(DEFAULT_ALIAS, as_url(setting.value), setting)]

    def package_routes(self, urls: Iterable[str]) -> List[Route]:
        """The routes of the channels that hold the packages at the canonical urls."""
        bases = sorted({url.rsplit("/", 2)[0] for url in urls})  # CHANNEL/SUBDIR/FILE
        return [self.route(channel_name(base)) for base in bases]

    def canonical_url(self, url: str, routes: Iterable[Route]) -> str:
        """The canonical URL of url, a package fetched through one of routes."""
        bare = _CREDENTIALS.sub(r"\1", url)  # an installer may drop a mirror's user:token
        for route in sorted(routes, key=lambda r: len(r.url), reverse=True):
            rest = _under(bare, _CREDENTIALS.sub(r"\1", route.url))
            if rest is not None:
                return route.canonical + rest
        logger.warning("%s is in none of the channels %s: recorded as it is", shown(url), routes)
        return url

    def describe(self) -> str:
        """The mirror settings read, for error messages (key, file or variable)."""
        settings = self.settings.settings()
        if settings:
            return "; ".join(_describe(setting) for setting in settings)
        files = ", ".join(map(str, self.settings.files))
        read = f"read {files}" if files else "found no .condarc or .mambarc"
        return (
            f"none (portal-env {read}; no channel_alias, custom_channels or mirrored_channels "
            "there nor in MAMBA_/CONDA_ variables)"
        )


def _longest_first(pairs: List[Tuple[str, str]]) -> List[Tuple[str, str]]:
    return sorted(pairs, key=lambda pair: len(pair[0]), reverse=True)


def _describe(setting: Setting) -> str:
    value = setting.value
    if isinstance(value, dict):
        value = ", ".join(f"{k}: {v}" for k, v in value.items())
    return shown(f"{setting.key} in {setting.source} ({value})")


def how_to_add(routes: List[Route]) -> str:
    """How to reach the channels of routes through a mirror: the lines for ~/.condarc."""
    keys = [route.channel for route in routes]
    lines = "".join(
        f"    {key}: [https://MIRROR/{channel_name(key).rsplit('/', 1)[-1]}]\n" for key in keys
    )
    return (
        "To use a mirror this machine reaches, add to ~/.condarc (or the file $CONDARC "
        f"names):\n  mirrored_channels:\n{lines}"
        "or `channel_alias: https://MIRROR` for every channel given by name. The lockfile "
        "keeps the canonical URLs, so it installs elsewhere too."
    )


def unreachable(routes: List[Route], error: str, router: Router) -> str:
    """An error message for channels that could not be reached: which ones (those whose
    URL the error names, else all), where they were fetched from and by which setting,
    the error, the settings read, and how to add a mirror."""
    named = [route for route in routes if route.url in error] or routes
    where = "; ".join(
        f"{route.channel!r} at {route.url} ({route.setting or 'no mirror setting applies'})"
        for route in named
    )
    return "\n".join(
        [
            shown(f"channel {where} cannot be reached:"),
            shown(error.strip()),
            f"Mirror settings read: {router.describe()}",
            how_to_add(named),
        ]
    )
