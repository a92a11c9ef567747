"""EnvSidePortal: serves env instances to authenticated agents.

Each agent connection gets its own thread, which reads a request, runs it on the
connection's env and replies, all in that one thread: no queue or hand-off sits
on the step path, so a step costs one wake-up on each side. An env belongs to
its connection and is closed when the connection ends, so no request can be
replayed against it after a reconnect.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import signal
import socket
import stat
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Union

from .. import config
from ..errors import EncodeError, PortalConnectionError, PortalEnvError, ProtocolError
from . import protocol, sharedmem, wire
from .hosted import EnvFactory, HostedEnv
from .parentdeath import die_with_parent
from .protocol import REPLY_ERROR, REPLY_OK
from .vector.hosted import HostedVectorEnv

logger = logging.getLogger(__name__)


def _error_reply(exc: BaseException) -> List[Any]:
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    trace = "".join(traceback.format_exception(kind, exc, exc.__traceback__))
    return [REPLY_ERROR, [name, str(exc), trace]]


# Requests a connection's env answers (reset and step are wrapped in _host).
_ENV_OPS = protocol.ENV_OPS
# Requests only a vector env answers (its extra_ops).
_VEC_OPS = tuple(op for op in protocol.VECTOR_OPS if op != "make_vec")

# Every request the server answers, with the types of its arguments (`object`: any
# value, checked by the env itself). A request that does not match is answered
# with a ProtocolError before anything runs.
_OP_ARGS: Dict[str, Tuple[type, ...]] = {
    "ping": (),
    "make": (list, dict),
    # num_workers; batch_size (send/recv below num_envs; a bool from older agents)
    "make_vec": (int, list, dict, (int, type(None)), (int, bool, type(None))),
    "share_memory": (int,),
    "share_memory_ready": (bool,),
    "close": (),
    "reset": (object, object),
    "step": (object,),
    "render": (),
    "call": (str, list, dict),
    "get_attr": (str,),
    "set_attr": (str, object),
    # A vector env's EnvPool-style async stepping (HostedVectorEnv.extra_ops).
    "async_reset": (list, object),
    "send": (list, object),
    "recv": (int, int),  # batch size; the agent's ring slot for its observations (0: none)
}
_OPTIONAL = {"make_vec": 2, "recv": 1}  # how many trailing arguments a request may leave out
_KWARGS_AT = {"make": 1, "make_vec": 2, "call": 2}  # where a **kwargs dict is
_ALL_OPS = protocol.SESSION_OPS + protocol.ENV_OPS + protocol.MEMORY_OPS + protocol.VECTOR_OPS
if set(_OP_ARGS) != set(_ALL_OPS):  # the shared list and this table are one
    raise ImportError(f"op tables differ: {sorted(set(_OP_ARGS) ^ set(_ALL_OPS))}")


def parse_request(request: Any) -> Tuple[str, List[Any]]:
    """(op, args) of a well-formed request [op, *args]; ProtocolError naming what is wrong."""
    if type(request) is not list or not request:
        raise ProtocolError(f"a request is a list [op, *args]; got {type(request).__name__}")
    op, args = request[0], request[1:]
    types = _OP_ARGS.get(op) if type(op) is str else None
    if types is None:
        raise ProtocolError(f"unknown request {op!r:.80}")
    least = len(types) - _OPTIONAL.get(op, 0)
    if not least <= len(args) <= len(types):
        takes = f"{least} to {len(types)}" if least < len(types) else str(len(types))
        raise ProtocolError(f"request {op!r} takes {takes} arguments, got {len(args)}")
    for i, (arg, kind) in enumerate(zip(args, types)):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if object not in kinds and not any(
            type(arg) is k or (k is int and _is_int(arg)) for k in kinds
        ):
            names = " or ".join("None" if k is type(None) else k.__name__ for k in kinds)
            raise ProtocolError(
                f"argument {i + 1} of request {op!r} must be {names}, got {type(arg).__name__}"
            )
    at = _KWARGS_AT.get(op)
    if at is not None and not all(type(key) is str for key in args[at]):
        raise ProtocolError(f"keyword arguments of request {op!r} must have str keys")
    return op, args


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and type(value) is not bool


class Session:
    """The state of one agent connection: at most one hosted env or vector env."""

    def __init__(self, factory: EnvFactory, channel: Optional[wire.Channel] = None) -> None:
        self.factory = factory
        self.channel = channel
        self.hosted: Any = None
        self.layout: Any = None
        self.finished = False
        self._offered: Any = None  # (path, mapping, ring slots) offered, not yet answered
        self._ahead: Any = None  # the agent's next frame, read early by meanwhile()
        self._deferred: List[List[Any]] = []  # replies to requests run early, sent after
        self._ops: dict = {
            "ping": lambda: "pong",
            "make": self.make,
            "make_vec": self.make_vec,
            "share_memory": self.share_memory,
            "share_memory_ready": self.share_memory_ready,
            "close": self.close,
        }
        self._drop()  # the env ops answer "no env yet" until make

    @staticmethod
    def _no_env(name: str) -> Callable[..., Any]:
        def op(*args: Any) -> Any:
            raise PortalEnvError(f"'{name}' before an env was made on this connection")

        return op

    @staticmethod
    def _single_env(name: str) -> Callable[..., Any]:
        def op(*args: Any) -> Any:
            raise PortalEnvError(f"'{name}' needs a vector env (make_vec); this one is single")

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
        for name in _VEC_OPS:
            self._ops[name] = extra.get(name) or self._single_env(name)
        self.layout = hosted.layout()
        if self.channel is not None:
            self.layout.allow_pickle(self.channel.allow_pickle)
            listen = getattr(getattr(hosted, "pending", None), "listen", None)
            if listen is not None:  # a vector env's recv reads sends while it waits
                listen(self.channel.sock, self.channel.buffered, self.meanwhile)
        return hosted.describe()

    def meanwhile(self) -> bool:
        """Read the agent's next request while a vector env's recv waits for its workers.

        A send runs at once, so that instances sent meanwhile can finish first; its
        reply goes after recv's. Anything else waits its turn (next_frame). True if
        the next request may be read too.
        """
        channel: Any = self.channel  # set: listen() is only given to sessions with one
        try:
            kind, payload = channel.recv_frame()
            request = channel.decode(payload) if kind == wire.GENERAL else None
        except Exception as exc:  # the request loop raises it in its turn
            self._ahead = (exc, None, None)
            return False
        if kind == wire.GENERAL and type(request) is list and request[:1] == ["send"]:
            self._deferred.append(self.handle(request))
            return True
        self._ahead = (kind, payload, request)
        return False

    def next_frame(self) -> Optional[Tuple[int, Any, Any]]:
        """The frame meanwhile() read ahead as (kind, payload, decoded request), if any."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and isinstance(ahead[0], Exception):
            raise ahead[0]
        return ahead

    def deferred(self) -> List[List[Any]]:
        """Replies to requests meanwhile() ran, to send after the current reply."""
        replies, self._deferred = self._deferred, []
        return replies

    def share_memory(self, size: int) -> Optional[str]:
        """Offer a new mapping for observations: its path, or None if none is useful here.

        The server makes the file in its own private directory: it never maps a
        file a peer names.
        """
        layout = self.layout
        self._withdraw_offer()
        if layout is None or not layout.wants_shared_memory() or size % layout.capacity:
            return None
        ring = size // layout.capacity - 1  # observation slots beyond the first (obsring)
        if not 0 <= ring <= layout.max_ring:
            return None
        try:
            path, mapping = sharedmem.create(size)
        except OSError as exc:  # no /dev/shm, or full: the socket carries observations
            logger.info("no shared memory for observations (%s); using the socket", exc)
            return None
        self._offered = (path, mapping, ring)
        return path

    def share_memory_ready(self, accepted: bool) -> bool:
        """The agent mapped the offered file (or not): unlink it, and use it if mapped."""
        offered, self._offered = self._offered, None
        if offered is None:
            return False
        path, mapping, ring = offered
        try:
            if not accepted or self.layout is None:
                mapping.close()
                return False
            self._use_memory(path, mapping, ring)
            return True
        finally:
            sharedmem.remove(path)  # both sides have it mapped (or not): nothing to leak

    def _use_memory(self, path: str, mapping: Any, ring: int) -> None:
        layout = self.layout
        layout.shm, layout.ring_slots = mapping, ring
        if self.channel is not None:
            # General replies use the first slot only: the others may be in the agent's hands.
            self.channel.shm = memoryview(mapping)[: layout.capacity] if ring else mapping
        adopt = getattr(self.hosted, "adopt_agent_memory", None)
        if adopt is not None:
            # Worker processes write step observations straight there. They get a
            # descriptor of the file this server made (passed over their pipe), never a path.
            fd = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
            try:
                adopt(fd, layout)
            finally:
                os.close(fd)

    def _withdraw_offer(self) -> None:
        offered, self._offered = self._offered, None
        if offered is not None:
            sharedmem.remove(offered[0])
            offered[1].close()

    def fast_step(self, payload: bytearray) -> Any:
        """A step request in the layout agreed from the spaces; the env's raw result."""
        if self.layout is None:
            raise ProtocolError("fast step request before an env was made on this connection")
        return self.hosted.step(self.layout.decode_action(payload))

    def make(self, args: List[Any], kwargs: dict) -> dict:
        self._drop()
        return self._host(HostedEnv(self.factory, args, kwargs))

    def make_vec(
        self,
        num_envs: int,
        args: List[Any],
        kwargs: dict,
        num_workers: Optional[int] = None,
        batch_size: Union[int, bool, None] = None,
    ) -> dict:
        self._drop()
        if batch_size is True:  # an older agent: send/recv, its batch size unsaid
            batch_size = max(num_envs - 1, 1)
        elif batch_size is False:
            batch_size = None
        return self._host(
            HostedVectorEnv(self.factory, num_envs, args, kwargs, num_workers, batch_size)
        )

    def handle(self, request: Any) -> List[Any]:
        """Run one request: [REPLY_OK, result] or [REPLY_ERROR, [type, message, traceback]]."""
        try:
            op, args = parse_request(request)
            return [REPLY_OK, self._ops[op](*args)]
        except Exception as exc:  # reported to the agent, which re-raises it
            return _error_reply(exc)

    def close(self) -> None:
        self.finished = True
        self._drop()

    def _drop(self) -> None:
        self._withdraw_offer()  # sized for the env that is going
        hosted, self.hosted, self.layout = self.hosted, None, None
        if self.channel is not None:
            self.channel.shm = None  # sized for the env that is going
        for name in _ENV_OPS + _VEC_OPS:
            self._ops[name] = self._no_env(name)
        if hosted is not None:
            hosted.close()


# accept() errors that say "not now" (out of descriptors, memory or buffers, or a peer
# that gave up before we took it), not "this listener is broken": back off and go on.
_TRANSIENT_ACCEPT = {
    errno.EMFILE,
    errno.ENFILE,
    errno.ENOBUFS,
    errno.ENOMEM,
    errno.ECONNABORTED,
    errno.EPROTO,
    errno.EPERM,  # a firewall rule refused this one connection
    errno.ENETDOWN,
    errno.ENETUNREACH,
    errno.EHOSTUNREACH,
    errno.ETIMEDOUT,
}
_MAX_BACKOFF = 0.5  # seconds


class Throttle:
    """Logs at most `burst` lines per `window` seconds, then one line saying how many it left out.

    A flood of bad connections must not become a flood of log lines (a full disk).
    """

    def __init__(self, log: logging.Logger, burst: int = 5, window: float = 10.0) -> None:
        self._log = log
        self.burst, self.window = burst, window
        self._lock = threading.Lock()
        self._start = -window
        self._count = self._left_out = 0
        self._latest = ""

    def warning(self, message: str, *args: Any) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._start >= self.window:
                self._flush()
                self._start, self._count = now, 0
            if self._count < self.burst:
                self._count += 1
                self._log.warning(message, *args)
            else:
                self._left_out += 1
                self._latest = message % args

    def flush(self) -> None:
        """Say how many lines were left out, if any (at shutdown)."""
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        if self._left_out:
            self._log.warning(
                "... and %d more like it in %.0f s (the latest: %s)",
                self._left_out,
                self.window,
                self._latest,
            )
        self._left_out = 0


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
        handshake_timeout: Seconds a new connection has to authenticate, in all (default:
            $PORTAL_ENV_HANDSHAKE_TIMEOUT, else 10).
        idle_timeout: Close an authenticated connection (and its env) that sends nothing for
            this many seconds (default: $PORTAL_ENV_IDLE_TIMEOUT, else never).
        max_pending: Connections that may be authenticating at once; beyond it the oldest is
            dropped, so idle or dripping peers cannot use up threads and descriptors.
        allow_pickle: Send and accept pickled values for what the structured codec cannot
            carry (default: $PORTAL_ENV_ALLOW_PICKLE, else no). Only for agents you trust
            with a shell: unpickling runs code the sender chooses.
        name: The portal name a server started without a supervisor registers under, so
            agents find it by name (default: $PORTAL_ENV_NAME, else its script's directory
            for `env_main.py`, else the script's name).
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
        handshake_timeout: Optional[float] = None,
        idle_timeout: Optional[float] = None,
        max_pending: int = 64,
        allow_pickle: Optional[bool] = None,
        name: Optional[str] = None,
    ) -> None:
        if not callable(env_factory):
            raise TypeError(f"env_factory must be callable, got {env_factory!r}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending!r}")
        if os.environ.get(config.DIE_WITH_PARENT_VAR) == "1":  # e.g. under ch-run
            error = die_with_parent()
            if error:
                logger.warning("cannot ask to die with the parent process (errno %d)", error)
        self.env_factory = env_factory
        self.max_frame_bytes = max_frame_bytes
        self.handshake_timeout = config.seconds(
            handshake_timeout, config.HANDSHAKE_TIMEOUT_VAR, config.DEFAULT_HANDSHAKE_TIMEOUT
        )
        self.idle_timeout = config.seconds(idle_timeout, config.IDLE_TIMEOUT_VAR, None)
        self.max_pending = max_pending
        self.allow_pickle = config.allow_pickle(allow_pickle)
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
        self._socket_id = _file_id(self.address.path)
        self.token = config.explicit_token(token)
        self._token_file: Optional[Path] = None
        if self.token is None:
            self.token, self._token_file = config.publish_token(self.address)
        self._spin_us = config.spin_us()
        self._channels: Set[wire.Channel] = set()
        self._pending: collections.OrderedDict[socket.socket, str] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._closed = False
        self._stopped = threading.Event()
        self._refusals = Throttle(logger)
        self._bad_frames = Throttle(logger)
        self._accept_errors = Throttle(logger)
        self._registered: Optional[str] = None
        if not os.environ.get(config.SUPERVISED_VAR):
            self._register(config.portal_name(name))
        self._write_ready_file()

    def _register(self, name: str) -> None:
        """Record this unsupervised server under name, where agents look names up."""
        from ..serving import registry

        try:
            registry.register_server(name, str(self.address), self.token, os.getcwd())
        except PortalEnvError as exc:  # e.g. the name is taken: serve, unlisted
            logger.warning(
                "not registered as portal %r (%s); agents must pass address=%r and the "
                "token, or give this server another name (name=..., $%s)",
                name, exc, str(self.address), config.NAME_VAR,
            )  # fmt: skip
            return
        self._registered = name
        logger.info("registered as portal %r: AgentSidePortal(%r, env_args=...)", name, name)

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
        """Serve until closed, Ctrl-C or SIGTERM.

        A library leaves logging to the application; only when run from a
        script's top level (an env's `env_main.py`, `python -c ...`) and nothing
        configured logging does it log INFO lines to stderr, so a portal's log
        says where it serves.
        """
        if _called_from_main_script() and not logging.getLogger().handlers:
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
        """Accept connections until close() is called; transient accept() errors back off."""
        backoff = 0.0
        while not self._closed:
            try:
                sock, _ = self._listener.accept()
            except OSError as exc:
                if self._closed:
                    return
                if exc.errno not in _TRANSIENT_ACCEPT:
                    raise
                backoff = min(max(2 * backoff, 0.005), _MAX_BACKOFF)
                self._accept_errors.warning(
                    "accept() failed (%s); retrying in %.3f s", exc.strerror or exc, backoff
                )
                self._stopped.wait(backoff)
                continue
            backoff = 0.0
            if not self._admit(sock):
                self._stopped.wait(0.05)  # no thread to be had: let some finish

    def _admit(self, sock: socket.socket) -> bool:
        """Start the handshake of a new connection in its own thread; False if none could start."""
        peer = wire.peer_name(sock)
        with self._lock:
            if self._closed:
                sock.close()
                return True
            evicted = None
            if len(self._pending) >= self.max_pending:
                evicted = self._pending.popitem(last=False)
                # Under the lock: its thread closes it only after taking the lock, so
                # this never reaches a descriptor number already reused.
                _shut(evicted[0])  # its handshake thread wakes up, fails and closes it
            self._pending[sock] = peer
        if evicted is not None:
            self._refusals.warning(
                "dropped the oldest of %d unauthenticated connections (%s) for a new one from %s",
                self.max_pending,
                evicted[1],
                peer,
            )
        try:
            threading.Thread(target=self._serve_connection, args=(sock, peer), daemon=True).start()
        except (RuntimeError, MemoryError) as exc:  # "can't start new thread": memory, ulimit
            with self._lock:
                self._pending.pop(sock, None)
            sock.close()
            self._accept_errors.warning("refused a connection from %s: %s", peer, exc)
            return False
        return True

    def _serve_connection(self, sock: socket.socket, peer: str) -> None:
        try:
            channel: Optional[wire.Channel] = wire.Channel.accept(
                sock,
                self.token,
                self.max_frame_bytes,
                self._spin_us,
                self.handshake_timeout,
                self.allow_pickle,
            )
        except wire.HandshakeFailed as exc:
            channel, reason = None, str(exc)
        with self._lock:
            dropped = self._pending.pop(sock, None) is None
            if channel is not None and not (dropped or self._closed):
                self._channels.add(channel)
        if channel is None or dropped or self._closed:
            if channel is None and not dropped and not self._closed:
                self._refusals.warning("refused a connection from %s: %s", peer, reason)
            sock.close()
            return
        wire.set_timeout(sock, self.idle_timeout)
        session = Session(self.env_factory, channel)
        try:
            self._request_loop(channel, session, peer)
        finally:
            session.close()
            channel.close()
            with self._lock:
                self._channels.discard(channel)

    def _request_loop(self, channel: wire.Channel, session: Session, peer: str) -> None:
        while not session.finished:
            try:
                if session._ahead is None:  # the usual case: kept cheap, it is every step's
                    kind, payload = channel.recv_frame()
                    request = None
                else:
                    kind, payload, request = session.next_frame()
                if kind == wire.FAST_STEP:
                    self._fast_step(channel, session, payload)
                    continue
                if kind != wire.GENERAL:
                    raise ProtocolError(f"unexpected frame kind {kind}")
                reply = session.handle(channel.decode(payload) if request is None else request)
                self._reply(channel, reply)
                if session._deferred:  # requests run while this one waited
                    for later in session.deferred():
                        self._reply(channel, later)
            except wire.PeerTimeout:
                logger.info(
                    "closed the connection of %s: idle for %g s (idle_timeout)",
                    peer,
                    self.idle_timeout,
                )
                return
            except PortalConnectionError:
                return  # the agent went away; its env is closed by the caller
            except ProtocolError as exc:
                self._bad_frames.warning("closing the connection of %s: bad frame: %s", peer, exc)
                return

    def _fast_step(self, channel: wire.Channel, session: Session, payload: bytearray) -> None:
        try:
            result = session.fast_step(payload)
        except ProtocolError:
            raise
        except Exception as exc:  # reported to the agent, which re-raises it
            self._reply(channel, _error_reply(exc))
            return
        try:
            laid_out = session.layout.encode_result(result)
        except EncodeError as exc:  # e.g. an object in info that needs pickle
            self._reply(channel, _error_reply(exc))
            return
        if laid_out is not None:
            channel.send_parts(wire.FAST_REPLY, *laid_out)
        else:  # a value outside the layout: the general codec keeps it exact
            self._reply(channel, [REPLY_OK, list(result)])

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
            for sock in self._pending:  # under the lock, as in _admit
                _shut(sock)
            self._pending.clear()
        self._stopped.set()
        _shut(self._listener)
        self._listener.close()
        for channel in channels:
            channel.close()
        if self._socket_id is not None and _file_id(self.address.path) == self._socket_id:
            os.unlink(self.address.path)  # ours still: not a file someone put there since
        if self._token_file is not None:
            self._token_file.unlink(missing_ok=True)
        if self._registered is not None:
            from ..serving import registry

            registry.release(self._registered, os.getpid())
        for throttle in (self._refusals, self._bad_frames, self._accept_errors):
            throttle.flush()

    def __enter__(self) -> EnvSidePortal:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _file_id(path: Optional[str]) -> Optional[Tuple[int, int]]:
    """(device, inode) of path if it is a socket, else None."""
    if path is None:
        return None
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISSOCK(info.st_mode) else None


def _called_from_main_script() -> bool:
    """Whether the first caller outside this module is a script's top level (`__main__`)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame = frame.f_back
    return frame is not None and frame.f_globals.get("__name__") == "__main__"


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
