"""The error hierarchy: everything portal-env raises derives from PortalEnvError."""

from __future__ import annotations


class PortalEnvError(Exception):
    """Base class of every error portal-env raises."""


class UnsupportedSpaceError(PortalEnvError):
    """A gymnasium space type that cannot be sent over the portal."""


class ProtocolError(PortalEnvError):
    """A peer sent data that does not follow the portal-env protocol."""


class EncodeError(PortalEnvError):
    """A value that cannot be encoded for the wire."""


class PortalConnectionError(PortalEnvError, ConnectionError):
    """The server cannot be reached, or the connection to it was lost."""


class AuthenticationError(PortalConnectionError):
    """A peer failed the token handshake: the server refused ours, or it did not prove its own."""


class DirectoryError(PortalEnvError):
    """A cache or state directory that cannot be created or written (read-only, full, denied)."""


class RemoteEnvError(PortalEnvError):
    """An exception raised inside the remote environment.

    Attributes:
        remote_type: Qualified name of the remote exception type.
        remote_message: str() of the remote exception.
        remote_traceback: The remote traceback, formatted as text.
    """

    def __init__(self, remote_type: str, remote_message: str, remote_traceback: str) -> None:
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        super().__init__(
            f"{remote_type}: {remote_message}\n\nRemote traceback:\n{remote_traceback.rstrip()}"
        )

    def __reduce__(self):  # keep it picklable (SB3 subprocess envs pickle exceptions)
        return type(self), (self.remote_type, self.remote_message, self.remote_traceback)


class CatalogError(PortalEnvError):
    """An env name that is not known, or an env directory that lacks a required file."""


class SpecError(PortalEnvError):
    """A spec.yml that cannot be read or that a backend cannot use."""


class LockError(PortalEnvError):
    """A spec that cannot be locked, or a lockfile that no longer matches its spec."""


class BuildError(PortalEnvError):
    """A runtime (venv, conda prefix, image) that could not be built."""


class BackendUnavailableError(PortalEnvError):
    """A backend that is unknown, or not available in this version or on this machine."""


class RegistryError(PortalEnvError):
    """The registry of running portals cannot be read or changed as asked."""


class AlreadyRunningError(RegistryError):
    """A portal of that name is already running."""


class ServerStartError(PortalEnvError):
    """A portal server exited or failed its health check before it was ready."""


class SupervisorError(PortalEnvError):
    """The supervisor gave up on a server (it kept dying) or could not stop it."""


class ChannelError(LockError, BuildError):
    """A conda channel or package URL that cannot be reached (while locking or building)."""


class FleetError(PortalEnvError):
    """A fleet of servers on a Ray cluster that could not be placed, started or reached."""


class CondaConfigError(LockError, BuildError):
    """A conda channel setting (.condarc, $CONDARC, MAMBA_/CONDA_ variables) that cannot be used."""
