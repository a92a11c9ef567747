"""EnvSidePortal for old runtimes: Python 2.7 and 3.5+, standard library, numpy, msgpack.

Where the runtime's Python is too old for portal-env (< 3.8), the backend puts this
package on the server's path as `portal_env`, so an unchanged `env_main.py`
(`from portal_env import EnvSidePortal`) serves through it. It speaks the same
handshake, framing and general codec as the main server, and offers none of its
extras (fast steps, shared memory, vector envs, frame hooks): the agent learns
that at the handshake and sends general frames. Each connection gets a thread
and owns one env, closed when the connection ends. Envs of old gym APIs are
answered with Gymnasium semantics (`gymapi.GymnasiumView`).
"""

import logging
import os
import signal
import socket
import sys
import threading
import traceback

from ..portal import protocol
from . import channel, gymapi, values

logger = logging.getLogger(__name__)

# The settings the supervisor passes (the names of portal_env.config; a test checks them).
HOST_VAR = "PORTAL_ENV_HOST"
PORT_VAR = "PORTAL_ENV_PORT"
SOCKET_VAR = "PORTAL_ENV_SOCKET"
TOKEN_VAR = "PORTAL_ENV_TOKEN"
TOKEN_FILE_VAR = "PORTAL_ENV_TOKEN_FILE"
READY_FILE_VAR = "PORTAL_ENV_READY_FILE"
HANDSHAKE_TIMEOUT_VAR = "PORTAL_ENV_HANDSHAKE_TIMEOUT"
IDLE_TIMEOUT_VAR = "PORTAL_ENV_IDLE_TIMEOUT"
SPIN_VAR = "PORTAL_ENV_SPIN_US"
DEFAULT_SPIN_US = 1000.0
DEFAULT_HOST, DEFAULT_PORT, DEFAULT_HANDSHAKE_TIMEOUT = "127.0.0.1", 7000, 10.0
_CLOSE_WAIT = 5.0  # seconds close() waits for each connection's thread to close its env

# How many arguments each request takes; what is not here is not offered.
_ARITY = {"ping": 0, "make": 2, "close": 0, "reset": 2, "step": 1, "render": 0}
_ARITY.update({"call": 3, "get_attr": 1, "set_attr": 2})
_NOT_OFFERED = protocol.MEMORY_OPS + protocol.VECTOR_OPS


class RequestError(Exception):
    """A request this server does not take (answered as an error, the connection lives)."""

    reported_as = "portal_env.errors.ProtocolError"  # what the main server answers


class NoEnvError(Exception):
    """An env request before make."""

    reported_as = "portal_env.errors.PortalEnvError"


def _error_reply(exc_type, exc, trace):
    module = getattr(exc_type, "__module__", "")
    name = getattr(exc_type, "__qualname__", exc_type.__name__)
    if module not in ("builtins", "exceptions", "__builtin__"):
        name = "%s.%s" % (module, name)
    name = getattr(exc_type, "reported_as", name)
    return [protocol.REPLY_ERROR, [_text(name), _text(_message(exc)), _text(trace)]]


def _message(exc):
    try:
        return values.TEXT(exc)
    except UnicodeError:  # Python 2: a byte-string message
        return str(exc).decode("utf-8", "replace")  # novm (Python 2 only)


def _text(value):
    return value if isinstance(value, values.TEXT) else value.decode("utf-8", "replace")


class Session(object):
    """One agent connection's state: at most one env."""

    def __init__(self, factory):
        self.factory = factory
        self.view = None
        self.finished = False

    def handle(self, request):
        """[REPLY_OK, result] or [REPLY_ERROR, [type, message, traceback]]."""
        try:
            op, args = _parse(request)
            return [protocol.REPLY_OK, getattr(self, "op_" + op)(*args)]
        except Exception as exc:  # reported to the agent, which re-raises it
            return _error_reply(type(exc), exc, traceback.format_exc())

    def op_ping(self):
        return "pong"

    def op_make(self, args, kwargs):
        self.drop()
        args, kwargs = values.native(args), values.native(kwargs)
        render_mode = kwargs.get("render_mode")
        try:
            env = self.factory(*args, **kwargs)
        except TypeError as exc:
            if render_mode is None or "render_mode" not in str(exc):
                raise
            # An old env: it renders with render(mode=...) instead of render_mode.
            del kwargs["render_mode"]
            env = self.factory(*args, **kwargs)
        view = gymapi.GymnasiumView(env, render_mode)
        try:
            described = view.describe()
        except Exception:
            view.close()
            raise
        self.view = view
        return described

    def _env(self, op):
        if self.view is None:
            raise NoEnvError("'%s' before an env was made on this connection" % op)
        return self.view

    def op_reset(self, seed, options):
        return list(self._env("reset").reset(seed, options))

    def op_step(self, action):
        return list(self._env("step").step(action))

    def op_render(self):
        return self._env("render").render()

    def op_call(self, name, args, kwargs):
        attr = self.op_get_attr(name)
        if callable(attr):
            return attr(*values.native(args), **values.native(kwargs))
        return attr

    def op_get_attr(self, name):
        env = self._env("get_attr").env
        # gymnasium >= 1.0 wrappers no longer forward attribute access; gym's do.
        getter = getattr(env, "get_wrapper_attr", None)
        return getter(values.native(name)) if getter else getattr(env, values.native(name))

    def op_set_attr(self, name, value):
        env = self._env("set_attr").env
        setter = getattr(env, "set_wrapper_attr", None)
        if setter:
            setter(values.native(name), value)
        else:
            setattr(getattr(env, "unwrapped", env), values.native(name), value)

    def op_close(self):
        self.finished = True
        self.drop()

    def drop(self):
        view, self.view = self.view, None
        if view is not None:
            view.close()


def _parse(request):
    if type(request) is not list or not request:
        raise RequestError("a request is a list [op, *args]; got %s" % type(request).__name__)
    op, args = request[0], request[1:]
    if not isinstance(op, (values.TEXT, values.NATIVE_TEXT)):
        raise RequestError("unknown request %r" % (op,))
    op = values.native(op) if values.PY2 else op
    if op in _NOT_OFFERED:
        raise RequestError(
            "request %r is not offered by the small server of an old runtime (it offered no "
            "shared memory and no vector envs at the handshake)" % op
        )
    arity = _ARITY.get(op)
    if arity is None:
        raise RequestError("unknown request %r" % (op[:80],))
    if len(args) != arity:
        raise RequestError("request %r takes %d arguments, got %d" % (op, arity, len(args)))
    if op == "make" and (type(args[0]) is not list or type(args[1]) is not dict):
        raise RequestError("request 'make' takes a list of arguments and a dict of keywords")
    if op == "call" and (type(args[1]) is not list or type(args[2]) is not dict):
        raise RequestError("request 'call' takes a name, a list and a dict")
    return op, args


class EnvSidePortal(object):
    """Serves environments made by env_factory to authenticated agents (small server).

    The arguments of the main server's EnvSidePortal that apply here; the rest are
    accepted and ignored, so an env_main.py written for it runs unchanged. A token
    is required ($PORTAL_ENV_TOKEN or $PORTAL_ENV_TOKEN_FILE, as the supervisor gives
    one): this server keeps no registry of its own.
    """

    def __init__(self, env_factory, port=None, host=None, token=None, **options):
        # Keyword-only options (Python 2 has no `*`): socket_path, max_frame_bytes,
        # handshake_timeout, idle_timeout; the main server's others are ignored.
        # $PORTAL_ENV_SPIN_US sets how long a connection polls before blocking, as there.
        if not callable(env_factory):
            raise TypeError("env_factory must be callable, got %r" % (env_factory,))
        self.env_factory = env_factory
        self.max_frame_bytes = options.get("max_frame_bytes", protocol.DEFAULT_MAX_FRAME)
        self.handshake_timeout = _seconds(
            options.get("handshake_timeout"), HANDSHAKE_TIMEOUT_VAR, DEFAULT_HANDSHAKE_TIMEOUT
        )
        self.idle_timeout = _seconds(options.get("idle_timeout"), IDLE_TIMEOUT_VAR, None)
        self.spin_us = _spin_us()
        self._token = _token(token)
        explicit_tcp = host is not None or port is not None
        path = options.get("socket_path") or (None if explicit_tcp else os.environ.get(SOCKET_VAR))
        host = host or os.environ.get(HOST_VAR) or DEFAULT_HOST
        family, target, self.address = channel.parse_address(host, _port(port), path)
        self._listener = channel.listen(family, target)
        if family != socket.AF_UNIX:
            self.address = channel.parse_address(host, self._listener.getsockname()[1], None)[2]
        self._path = path
        self._lock = threading.Lock()
        self._connections = {}  # connection -> the thread serving it
        self._closed = False
        self._write_ready_file()

    def _write_ready_file(self):
        target = os.environ.get(READY_FILE_VAR)
        if target:
            with open(target + ".tmp", "w") as f:
                f.write(self.address)
            os.rename(target + ".tmp", target)  # readers never see a partial address

    def start(self):
        """Serve until closed, Ctrl-C or SIGTERM (the seed's name for `run`)."""
        self.run()

    def run(self):
        """Serve until closed, Ctrl-C or SIGTERM."""
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        in_main = isinstance(threading.current_thread(), threading._MainThread)
        previous = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main else None
        version = sys.version.split()[0]
        logger.info("portal-env small server (Python %s) serving on %s", version, self.address)
        try:
            self.serve_forever()
        except KeyboardInterrupt:
            logger.info("portal-env server stopping")
        finally:
            self.close()
            if in_main:
                signal.signal(signal.SIGTERM, previous)

    def serve_forever(self):
        while not self._closed:
            try:
                sock, _ = self._listener.accept()
            except socket.error:
                if self._closed:
                    return
                raise
            thread = threading.Thread(target=self._serve_connection, args=(sock,))
            thread.daemon = True
            thread.start()

    def _serve_connection(self, sock):
        try:
            channel.accept(sock, self._token, self.handshake_timeout)
        except channel.HandshakeFailed as exc:
            logger.warning("refused a connection: %s", exc)
            sock.close()
            return
        connection = channel.Connection(sock, self.max_frame_bytes, self.idle_timeout, self.spin_us)
        with self._lock:
            if self._closed:
                connection.close()
                return
            self._connections[connection] = threading.current_thread()
        session = Session(self.env_factory)
        try:
            self._request_loop(connection, session)
        except Exception:  # a fault of this server: say so, close only this connection
            logger.exception("closing a connection after an internal error")
        finally:
            session.drop()
            connection.close()
            with self._lock:
                self._connections.pop(connection, None)

    def _request_loop(self, connection, session):
        decoder, encoder = values.Decoder(), values.Encoder()
        while not session.finished:
            try:
                kind, payload = connection.recv_frame()
                if kind != protocol.GENERAL:
                    raise values.MalformedFrame("unexpected frame kind %d" % kind)
                reply = session.handle(decoder.decode(payload))
            except channel.PeerTimeout:
                logger.info("closed an idle connection (idle_timeout %s s)", self.idle_timeout)
                return
            except channel.Closed:
                return
            except (values.MalformedFrame, ValueError) as exc:
                logger.warning("closing a connection: bad frame: %s", exc)
                return
            try:
                parts, size = encoder.encode(reply)
            except Exception as exc:  # e.g. a value of a type the codec does not carry
                parts, size = encoder.encode(_error_reply(type(exc), exc, traceback.format_exc()))
            try:
                connection.send(protocol.GENERAL, parts, size)
            except channel.Closed:
                return

    def close(self):
        """Stop serving, close every connection and env; safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            connections = list(self._connections.items())
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except socket.error:
            pass
        self._listener.close()
        for connection, _ in connections:
            connection.close()
        for _, thread in connections:  # each closes its env before the interpreter goes
            thread.join(_CLOSE_WAIT)
        if self._path and os.path.exists(self._path):
            os.unlink(self._path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _seconds(value, var, default):
    if value is None:
        raw = os.environ.get(var, "")
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ValueError("%s=%r is not a number of seconds" % (var, raw))
    return value or None


def _spin_us():
    raw = os.environ.get(SPIN_VAR, "")
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_SPIN_US
    except ValueError:
        raise ValueError("%s=%r is not a number of microseconds" % (SPIN_VAR, raw))


def _port(port):
    if port is not None:
        return int(port)
    raw = os.environ.get(PORT_VAR, str(DEFAULT_PORT))
    if not raw.isdigit():
        raise ValueError("%s=%r is not a port number" % (PORT_VAR, raw))
    return int(raw)


def _token(token):
    if not token:
        token = os.environ.get(TOKEN_VAR)
    if not token and os.environ.get(TOKEN_FILE_VAR):
        with open(os.environ[TOKEN_FILE_VAR]) as f:
            token = f.read().strip()
    if not token:
        raise RuntimeError(
            "the small server of an old runtime needs a token: set %s or %s (portal-env start "
            "does), since it keeps no registry for agents to find one" % (TOKEN_VAR, TOKEN_FILE_VAR)
        )
    return token.encode("utf-8") if isinstance(token, values.TEXT) else token
