"""EnvSidePortal: serves env instances to authenticated agents.

Each agent connection gets its own thread, which reads a request, runs it on the
connection's env and replies, all in that one thread: no queue or hand-off sits
on the step path, so a step costs one wake-up on each side. An env belongs to
its connection and is closed when the connection ends, so no request can be
replayed against it after a reconnect.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import traceback
from pathlib import Path
from typing import Any, Callable, List, Optional, Set

from .. import config
from ..errors import EncodeError, PortalConnectionError, PortalEnvError, ProtocolError
from . import sharedmem, wire
from .hosted import EnvFactory, HostedEnv, HostedVectorEnv

logger = logging.getLogger(__name__)


def _error_reply(exc: BaseException) -> List[Any]:
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    return [1, [name, str(exc), "".join(traceback.format_exception(kind, exc, exc.__traceback__))]]


# Requests a connection's env answers (reset and step are wrapped in _host).
_ENV_OPS = ("reset", "step", "render", "call", "get_attr", "set_attr")


class Session:
    """The state of one agent connection: at most one hosted env or vector env."""

    def __init__(self, factory: EnvFactory, channel: Optional[wire.Channel] = None) -> None:
        self.factory = factory
        self.channel = channel
        self.hosted: Any = None
        self.layout: Any = None
        self.finished = False
        self._ops: dict = {
            "ping": lambda: "pong",
            "make": self.make,
            "make_vec": self.make_vec,
            "share_memory": self.share_memory,
            "close": self.close,
        }
        self._drop()  # the env ops answer "no env yet" until make

    @staticmethod
    def _no_env(name: str) -> Callable[..., Any]:
        def op(*args: Any) -> Any:
            raise PortalEnvError(f"'{name}' before an env was made on this connection")

        return op

    def _host(self, hosted: Any) -> dict:
        self.hosted = hosted
        for name in _ENV_OPS:
            self._ops[name] = getattr(hosted, name)  # bound once: no lookup per step
        # Results travel as lists: the agent rebuilds the tuples, which keeps a
        # nested tuple (a second msgpack pass) off the step path.
        self._ops["reset"] = lambda *args: list(hosted.reset(*args))
        self._ops["step"] = lambda action: list(hosted.step(action))
        extra = getattr(hosted, "extra_ops", dict)()  # a vector env's async stepping
        self._ops.update(extra)
        self._extra = list(extra)
        self.layout = hosted.layout()
        return hosted.describe()

    def share_memory(self, path: str, size: int) -> bool:
        """Map the agent's shared memory for observations; False if it cannot be used here."""
        layout = self.layout
        if layout is None or not layout.wants_shared_memory() or size % layout.capacity:
            return False
        ring = size // layout.capacity - 1  # observation slots beyond the first (single envs)
        if not 0 <= ring <= layout.max_ring:
            return False
        layout.shm = sharedmem.attach(path, size)
        layout.ring_slots = ring
        if self.channel is not None and layout.shm is not None:
            # General replies use the first slot only: the others may be in the agent's hands.
            self.channel.shm = memoryview(layout.shm)[: layout.capacity] if ring else layout.shm
        adopt = getattr(self.hosted, "adopt_agent_memory", None)
        if adopt is not None and layout.shm is not None:
            adopt(path, layout)  # worker processes write step observations straight there
        return layout.shm is not None

    def fast_step(self, payload: bytearray) -> Any:
        """A step request in the layout agreed from the spaces; the env's raw result."""
        if self.layout is None:
            raise ProtocolError("fast step request before an env was made on this connection")
        return self.hosted.step(self.layout.decode_action(payload))

    def make(self, args: List[Any], kwargs: dict) -> dict:
        self._drop()
        return self._host(HostedEnv(self.factory, args, kwargs))

    def make_vec(
        self, num_envs: int, args: List[Any], kwargs: dict, num_workers: Optional[int] = None
    ) -> dict:
        self._drop()
        return self._host(HostedVectorEnv(self.factory, num_envs, args, kwargs, num_workers))

    def handle(self, request: Any) -> List[Any]:
        """Run one request; returns [0, result] or [1, (type, message, traceback)]."""
        if not isinstance(request, list) or not request or request[0] not in self._ops:
            head = request[0] if isinstance(request, list) and request else request
            return _error_reply(ProtocolError(f"unknown request {head!r}"))
        try:
            return [0, self._ops[request[0]](*request[1:])]
        except Exception as exc:  # reported to the agent, which re-raises it
            return _error_reply(exc)

    def close(self) -> None:
        self.finished = True
        self._drop()

    def _drop(self) -> None:
        hosted, self.hosted, self.layout = self.hosted, None, None
        if self.channel is not None:
            self.channel.shm = None  # sized for the env that is going
        for name in _ENV_OPS:
            self._ops[name] = self._no_env(name)
        for name in getattr(self, "_extra", ()):
            self._ops.pop(name, None)
        self._extra: List[str] = []
        if hosted is not None:
            hosted.close()


class EnvSidePortal:
    """Serves environments made by env_factory to any number of agents.

    Args:
        env_factory: Called as env_factory(*env_args, **env_kwargs) for each env an agent makes.
        port: TCP port (default: $PORTAL_ENV_PORT, else 7000; 0 picks a free one).
        host: Interface to bind (default: $PORTAL_ENV_HOST, else 127.0.0.1, loopback only).
        token: Shared secret agents must prove they hold (default: $PORTAL_ENV_TOKEN or
            $PORTAL_ENV_TOKEN_FILE, else a new random token recorded for agents of this user).
        socket_path: Listen on this Unix socket instead of TCP (default: $PORTAL_ENV_SOCKET).
        max_frame_bytes: Frames larger than this close the connection that sent them.
    """

    def __init__(
        self,
        env_factory: EnvFactory,
        port: Optional[int] = None,
        host: Optional[str] = None,
        token: Optional[str] = None,
        *,
        socket_path: Optional[str] = None,
        max_frame_bytes: int = wire.DEFAULT_MAX_FRAME,
    ) -> None:
        if not callable(env_factory):
            raise TypeError(f"env_factory must be callable, got {env_factory!r}")
        self.env_factory = env_factory
        self.max_frame_bytes = max_frame_bytes
        requested = (
            wire.Address(path=socket_path) if socket_path else config.server_address(host, port)
        )
        try:
            self._listener = wire.listen(requested)
        except OSError as exc:
            raise PortalEnvError(
                f"cannot listen on {requested}: {exc.strerror or exc}. "
                f"Choose another port (port=..., {config.PORT_VAR}) or stop the server using it."
            ) from exc
        self.address = wire.bound_address(self._listener, requested)
        self.token = config.explicit_token(token)
        self._token_file: Optional[Path] = None
        if self.token is None:
            self.token, self._token_file = config.publish_token(self.address)
        self._spin_us = config.spin_us()
        self._channels: Set[wire.Channel] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._write_ready_file()

    def _write_ready_file(self) -> None:
        target = os.environ.get(config.READY_FILE_VAR)
        if target:
            tmp = f"{target}.tmp"
            with open(tmp, "w") as f:
                f.write(str(self.address))
            os.replace(tmp, target)  # readers never see a partial address

    def start(self) -> None:
        """Serve until closed, Ctrl-C or SIGTERM (the seed's name for `run`)."""
        self.run()

    def run(self) -> None:
        """Serve until closed, Ctrl-C or SIGTERM."""
        if not logging.getLogger().handlers and not logger.handlers:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main else None
        logger.info("portal-env serving on %s", self.address)
        try:
            self.serve_forever()
        except KeyboardInterrupt:
            logger.info("portal-env server stopping")
        finally:
            self.close()
            if in_main:
                signal.signal(signal.SIGTERM, previous)

    def serve_forever(self) -> None:
        """Accept connections until close() is called."""
        while not self._closed:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                if self._closed:
                    return
                raise
            threading.Thread(target=self._serve_connection, args=(sock,), daemon=True).start()

    def _serve_connection(self, sock: socket.socket) -> None:
        channel = wire.Channel.accept(sock, self.token, self.max_frame_bytes, self._spin_us)
        if channel is None:
            logger.warning("refused a connection that failed authentication")
            sock.close()
            return
        with self._lock:
            if self._closed:
                channel.close()
                return
            self._channels.add(channel)
        session = Session(self.env_factory, channel)
        try:
            self._request_loop(channel, session)
        finally:
            session.close()
            channel.close()
            with self._lock:
                self._channels.discard(channel)

    def _request_loop(self, channel: wire.Channel, session: Session) -> None:
        while not session.finished:
            try:
                kind, payload = channel.recv_frame()
                if kind == wire.FAST_STEP:
                    self._fast_step(channel, session, payload)
                    continue
                if kind != wire.GENERAL:
                    raise ProtocolError(f"unexpected frame kind {kind}")
                reply = session.handle(channel.decode(payload))
                self._reply(channel, reply)
            except PortalConnectionError:
                return  # the agent went away; its env is closed by the caller
            except ProtocolError as exc:
                logger.warning("closing a connection that sent a bad frame: %s", exc)
                return

    def _fast_step(self, channel: wire.Channel, session: Session, payload: bytearray) -> None:
        try:
            result = session.fast_step(payload)
        except ProtocolError:
            raise
        except Exception as exc:  # reported to the agent, which re-raises it
            self._reply(channel, _error_reply(exc))
            return
        laid_out = session.layout.encode_result(result)
        if laid_out is not None:
            channel.send_parts(wire.FAST_REPLY, *laid_out)
        else:  # a value outside the layout: the general codec keeps it exact
            self._reply(channel, [0, list(result)])

    @staticmethod
    def _reply(channel: wire.Channel, reply: List[Any]) -> None:
        try:
            channel.send(reply)
        except EncodeError as exc:
            channel.send(_error_reply(exc))
        except OSError as exc:
            raise PortalConnectionError(str(exc)) from exc

    def close(self) -> None:
        """Stop serving, close every connection and env; safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            channels = list(self._channels)
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        for channel in channels:
            channel.close()
        if self.address.path and os.path.exists(self.address.path):
            os.unlink(self.address.path)
        if self._token_file is not None:
            self._token_file.unlink(missing_ok=True)

    def __enter__(self) -> EnvSidePortal:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
