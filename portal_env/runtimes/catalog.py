"""Where an env's files are: a built-in env of the catalog, or a custom directory.

A built-in env `NAME` is `envs/NAME/env_main.py` with its spec at `specs/NAME.yml`
and its shipped locks in `lockfiles/`: top-level directories of a source checkout,
shipped in the wheel as `portal_env/builtin/{envs,specs,lockfiles}`. A custom env is
a directory given with `-p PATH` that holds `env_main.py` and, depending on the
backend, `spec.yml` and/or `Dockerfile.env`, plus an optional `env_setup.py`;
its locks live beside its spec.

`portal-env lock NAME` of a built-in writes to the user's lock directory
($PORTAL_ENV_LOCK_DIR, else `<state dir>/lockfiles`), never into the installed
package (often read-only, and replaced on upgrade). A user's lock is used before a
shipped one of the same kind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Union

from .. import config
from ..errors import CatalogError


def _builtin_root() -> Path:
    """`portal_env/builtin` where the package is installed from a wheel, else the
    source checkout holding this package (its top-level envs/, specs/, lockfiles/)."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "builtin"
    return installed if (installed / "envs").is_dir() else package.parent


BUILTIN_ROOT = _builtin_root()
ENV_MAIN = "env_main.py"
SPEC = "spec.yml"
DOCKERFILE = "Dockerfile.env"
SETUP_SCRIPT = "env_setup.py"
LOCK_DIR_VAR = "PORTAL_ENV_LOCK_DIR"


def user_lock_dir() -> Path:
    """Where `portal-env lock` writes the locks of built-in envs: $PORTAL_ENV_LOCK_DIR,
    else `lockfiles/` in the state dir."""
    explicit = os.environ.get(LOCK_DIR_VAR)
    return Path(explicit).expanduser() if explicit else config.state_dir() / "lockfiles"


@dataclass(frozen=True)
class EnvSource:
    """The files that define one env.

    Attributes:
        name: The env's name (for a custom env, the portal name it was given).
        env_dir: Directory holding env_main.py (a custom env's server runs there).
        spec: The conda-style spec.yml, if there is one.
        dockerfile: Dockerfile.env, if there is one.
        setup_script: env_setup.py, run once in a new runtime, if there is one.
        lock_dir: Where its lockfiles are kept: beside a custom env's spec; for a
            built-in, the catalog's shipped lockfiles (see `lock_for_writing`).
        lock_stem: File-name stem of its lockfiles (`<lock_stem>.venv.lock.txt`).
        builtin: Whether it ships with portal-env.
    """

    name: str
    env_dir: Path
    spec: Optional[Path]
    dockerfile: Optional[Path]
    setup_script: Optional[Path]
    lock_dir: Path
    lock_stem: str
    builtin: bool

    @property
    def main(self) -> Path:
        """The server script, env_main.py."""
        return self.env_dir / ENV_MAIN

    @property
    def work_dir(self) -> Path:
        """The server's working directory: a custom env's own directory (the seed's
        layout, for relative paths to its files); for a built-in, a private directory
        in the state dir, since env libraries write files there (VizDoom's ini, MuJoCo's
        log) and an installed package's directory may even be read-only."""
        if not self.builtin:
            return self.env_dir
        path = config.state_dir() / "work" / self.name
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return path

    def lock_for_writing(self, filename: str) -> Path:
        """Where `portal-env lock` writes the lockfile filename: beside a custom env's spec;
        for a built-in, the user's lock directory (never the installed package)."""
        return user_lock_dir() / filename if self.builtin else self.lock_dir / filename

    def shipped_lock(self, filename: str) -> Optional[Path]:
        """The lockfile filename that ships with a built-in env, if there is one."""
        path = self.lock_dir / filename
        return path if self.builtin and path.is_file() else None

    def lock_in_use(self, filename: str) -> Path:
        """The lockfile filename that builds use: the user's (or a custom env's own), else
        the shipped one; where it would be written when there is neither."""
        written = self.lock_for_writing(filename)
        return written if written.is_file() else self.shipped_lock(filename) or written

    def shadowed_lock(self, filename: str) -> Optional[Path]:
        """A shipped lockfile that is not used because the user has one of their own."""
        shipped = self.shipped_lock(filename)
        used = self.lock_in_use(filename)
        return shipped if shipped is not None and used.resolve() != shipped.resolve() else None

    def require_spec(self, backend: str) -> Path:
        """The spec.yml, or an error saying the backend needs one."""
        if self.spec is None:
            raise CatalogError(
                f"{self.env_dir} has no {SPEC}, which the {backend} backend needs "
                f"(found: {_listing(self.env_dir)}). Add a {SPEC} (a conda environment file "
                "with a pip: section)."
            )
        return self.spec


def check_name(name: str) -> str:
    """The name unchanged if it is usable as a portal/env name, else a clear error."""
    if not config.NAME_PATTERN.match(name):
        raise CatalogError(
            f"bad env name {name!r}: use letters, digits, '.', '_' or '-' "
            "(up to 64, starting with a letter or digit)"
        )
    return name


def builtin_names() -> List[str]:
    """Names of the built-in envs shipped in this version."""
    root = BUILTIN_ROOT / "envs"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / ENV_MAIN).is_file())


def find(name: str, path: Union[str, Path, None] = None) -> EnvSource:
    """The files of env `name`: the custom directory `path`, else the built-in env."""
    check_name(name)
    if path is not None:
        return _custom(name, Path(path))
    return _builtin(name)


def _custom(name: str, path: Path) -> EnvSource:
    env_dir = path.expanduser().resolve()
    if not env_dir.is_dir():
        raise CatalogError(f"env directory {path} does not exist (or is not a directory)")
    if not (env_dir / ENV_MAIN).is_file():
        raise CatalogError(
            f"{path} has no {ENV_MAIN} (found: {_listing(env_dir)}). "
            f"A custom env dir needs {ENV_MAIN} plus {SPEC} and/or {DOCKERFILE}."
        )
    return EnvSource(
        name=name,
        env_dir=env_dir,
        spec=_optional(env_dir / SPEC),
        dockerfile=_optional(env_dir / DOCKERFILE),
        setup_script=_optional(env_dir / SETUP_SCRIPT),
        lock_dir=env_dir,
        lock_stem="spec",
        builtin=False,
    )


def _builtin(name: str) -> EnvSource:
    env_dir = BUILTIN_ROOT / "envs" / name
    if not (env_dir / ENV_MAIN).is_file():
        known = ", ".join(builtin_names()) or "none in this version"
        raise CatalogError(f"Unknown env {name!r}; known: {known}. Use -p PATH for a custom env.")
    return EnvSource(
        name=name,
        env_dir=env_dir,
        spec=_optional(BUILTIN_ROOT / "specs" / f"{name}.yml"),
        dockerfile=_optional(env_dir / DOCKERFILE),
        setup_script=_optional(env_dir / SETUP_SCRIPT),
        lock_dir=BUILTIN_ROOT / "lockfiles",
        lock_stem=name,
        builtin=True,
    )


def in_image(name: str, image: Union[str, Path]) -> EnvSource:
    """Env name as an image holds it (`--image PATH`): its files are all inside the image,
    none on this host."""
    check_name(name)
    path = Path(image).expanduser().resolve()
    return EnvSource(
        name=name,
        env_dir=path,
        spec=None,
        dockerfile=None,
        setup_script=None,
        lock_dir=path.parent,
        lock_stem=name,
        builtin=name in builtin_names(),
    )


def _optional(path: Path) -> Optional[Path]:
    return path if path.is_file() else None


def _listing(directory: Path) -> str:
    names = sorted(p.name for p in directory.iterdir())
    return ", ".join(names) if names else "nothing, it is empty"
