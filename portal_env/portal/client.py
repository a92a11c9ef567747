"""One authenticated connection from an agent to a server, with call semantics."""

from __future__ import annotations

import weakref
from typing import Any, Callable, List, Optional, Tuple

from .. import config
from ..errors import PortalConnectionError, ProtocolError, RemoteEnvError
from . import obsring, protocol, sharedmem, wire

DEFAULT_TIMEOUT = 300.0  # seconds; generous for slow resets (emulators, Minecraft-likes)
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def endpoint(
    env_name: str, address: Optional[str], token: Optional[str], agent_in_docker: bool
) -> Tuple[wire.Address, str]:
    """The address and token an agent uses for env_name.

    An explicit address (argument, $PORTAL_ENV_ADDRESS, or the container name of an
    agent in Docker) wins, with the given token or the one a local server recorded
    for it; else the registry's record of the running portal named env_name (a
    supervised portal, or a bare EnvSidePortal, which registers itself); else a
    clear error listing the running portals.
    """
    where = config.agent_address(env_name, address, agent_in_docker)
    if where is not None:
        return where, config.explicit_token(token) or config.find_token(where)
    from ..serving import registry  # lazily: the agent's import path stays light

    record = registry.lookup(env_name)
    if record is None:
        raise registry.not_running(env_name)
    return wire.Address.parse(record.address), token or record.token


class Client:
    """Sends requests and returns results; a lost connection is never retried.

    Retrying could apply a step twice, so once the connection breaks every
    call raises PortalConnectionError until a new Client is made.

    Attributes:
        layout: The step layout agreed from the env's spaces (a `fastpath`
            layout), set once an env is made; None sends steps as general calls.
    """

    def __init__(
        self,
        env_name: str,
        address: wire.Address,
        token: str,
        timeout: Optional[float],
        allow_pickle: Optional[bool] = None,
    ):
        self.env_name = env_name
        self.address = address
        self.broken = False
        self.layout: Any = None
        self._posted: List[str] = []  # requests sent whose replies are not read yet
        self._step_sent = False  # a fast step request awaits its reply
        self.allow_pickle = config.allow_pickle(allow_pickle)
        self._channel = wire.Channel.connect(
            address, token, timeout, config.spin_us(), self.allow_pickle
        )
        self._finalizer = weakref.finalize(self, self._channel.close)  # no I/O, just close

    @classmethod
    def for_env(
        cls,
        env_name: str,
        address: Optional[str],
        token: Optional[str],
        agent_in_docker: bool,
        timeout: Optional[float],
        allow_pickle: Optional[bool] = None,
    ) -> Client:
        """Find the server for env_name (arguments, environment, registry, defaults); connect."""
        where, secret = endpoint(env_name, address, token, agent_in_docker)
        return cls(env_name, where, secret, timeout, allow_pickle)

    def adopt_layout(self, layout: Any) -> None:
        """Use layout for steps; share memory for large array data when on one host.

        The server makes the file and says where; we map it only if it is a
        private file of ours where a server makes them (see sharedmem.attach).
        """
        if not self.offers(protocol.FEATURE_FAST_STEP):
            return  # a small server of an old runtime: steps go as general calls
        self.layout = layout
        layout.allow_pickle(self.allow_pickle)
        local = self.address.path is not None or self.address.host in _LOOPBACK
        if not (local and layout.wants_shared_memory()):
            return
        if not self.offers(protocol.FEATURE_SHARED_MEMORY):
            return  # the server has no share_memory ops
        # We ask for a ring of observation (batch) slots beyond the first (obsring);
        # the server makes the file of that size, we only map what it made.
        slots = obsring.slots_for(layout.capacity) if layout.max_ring else 0
        size = layout.capacity * (1 + slots)
        path = self.call("share_memory", size)
        if path is None:
            return
        mapping = sharedmem.attach(path, size)
        if not (self.call("share_memory_ready", mapping is not None) and mapping is not None):
            if mapping is not None:
                mapping.close()
            return
        layout.shm = mapping
        # General replies use the first slot only: the others may be in the agent's hands.
        self._channel.shm = memoryview(mapping)[: layout.capacity] if slots else mapping
        if slots:
            layout.ring = obsring.Ring(mapping, layout.capacity, slots)

    def offers(self, feature: int) -> bool:
        """Whether the server offered feature (protocol.FEATURE_*) at the handshake."""
        return bool(self._channel.features & feature)

    def call(self, op: str, *args: Any) -> Any:
        """Run op on the server; remote exceptions re-raise as RemoteEnvError."""

        def exchange() -> Any:
            self._channel.send([op, *args])
            return self._unwrap(op, self._channel.recv())

        if self._posted:
            self.collect()
        return self._guarded(op, exchange)

    def post(self, op: str, *args: Any) -> None:
        """Send op without waiting for its reply; the next call reads it (and raises its error).

        The server answers requests in order, so the agent can go on with its own
        work while the server runs op.
        """
        self._guarded(op, lambda: self._channel.send([op, *args]))
        self._posted.append(op)

    def call_next(self, op: str, *args: Any) -> Any:
        """call(), but op goes out before the replies to posted requests are read.

        Saves a round trip when the server runs op correctly whatever became of
        the posted requests (recv after send: a failed send raises from recv,
        before it takes any result). The posted requests' errors raise first.
        """
        if not self._posted:
            return self.call(op, *args)
        self._guarded(op, lambda: self._channel.send([op, *args]))
        try:
            self.collect()
        except RemoteEnvError:
            self._guarded(op, self._channel.recv)  # op's own reply, so replies stay in step
            raise
        return self._guarded(op, lambda: self._unwrap(op, self._channel.recv()))

    def take_posted(self, op: str) -> Any:
        """The reply to the first posted op; replies to requests posted before it are read
        first, and the first error among them raises once op's reply is read too."""
        failure: Optional[BaseException] = None
        while self._posted:
            first = self._posted.pop(0)
            try:
                result = self._guarded(
                    first, lambda op=first: self._unwrap(op, self._channel.recv())
                )
            except RemoteEnvError as exc:
                if first == op and failure is None:
                    raise
                failure = failure or exc
                continue
            if first == op:
                if failure is not None:
                    raise failure
                return result
        raise RuntimeError(f"no posted {op!r} request to take the reply of")

    def collect(self) -> None:
        """Read the replies to posted requests; raise the first error among them."""
        posted, self._posted = self._posted, []
        failure: Optional[BaseException] = None
        for op in posted:
            try:
                self._guarded(op, lambda op=op: self._unwrap(op, self._channel.recv()))
            except RemoteEnvError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    def step(self, action: Any) -> Any:
        """A step, in the fast layout when the action fits it; the result as a sequence."""
        self.step_send(action)
        return self.step_receive()

    def step_send(self, action: Any) -> None:
        """Send a step request; step_receive() returns its result."""
        if self._posted:
            self.collect()
        request = self.layout.encode_action(action) if self.layout is not None else None
        if request is None or self.broken:
            self.post("step", action)
            return
        try:  # inline rather than through _guarded: this is the hot path
            self._channel.send_parts(wire.FAST_STEP, [request], len(request))
        except (PortalConnectionError, OSError) as exc:
            raise self._lost("step", exc) from exc
        self._step_sent = True

    def step_receive(self) -> Any:
        """The result of the step step_send() sent, as a sequence."""
        if not self._step_sent:  # sent as a general call
            if self._posted[-1:] != ["step"]:
                raise RuntimeError("step_receive() without a step_send() before it")
            self._posted.pop()
            return self._guarded("step", lambda: self._unwrap("step", self._channel.recv()))
        self._step_sent = False
        channel = self._channel
        try:
            kind, payload = channel.recv_frame()
        except (PortalConnectionError, OSError) as exc:
            raise self._lost("step", exc) from exc
        if kind == wire.FAST_REPLY:
            try:
                return self.layout.decode_result(payload)
            except ProtocolError:
                raise
            except Exception as exc:  # garbage in the agreed layout
                raise ProtocolError(
                    f"malformed step reply from {self.address}: {type(exc).__name__}: {exc}"
                ) from exc
        if kind != wire.GENERAL:
            raise ProtocolError(f"unexpected frame kind {kind} from {self.address}")
        return self._unwrap("step", channel.decode(payload))

    def _guarded(self, op: str, exchange: Callable[[], Any]) -> Any:
        if self.broken:
            raise PortalConnectionError(
                f"the connection to the '{self.env_name}' portal at {self.address} was lost "
                "earlier; its env instance is gone. Make a new env (or call reset())."
            )
        try:
            return exchange()
        except (PortalConnectionError, OSError) as exc:
            raise self._lost(op, exc) from exc

    def _lost(self, op: str, exc: BaseException) -> PortalConnectionError:
        self.broken = True
        self._channel.close()
        return PortalConnectionError(
            f"lost the connection to the '{self.env_name}' portal at {self.address} during "
            f"'{op}' ({exc}); the request may or may not have run and is not resent. "
            "Make a new env (or call reset()) once the server is back."
        )

    def _unwrap(self, op: str, reply: Any) -> Any:
        # type(...) is int: True and 1.0 equal 1, yet no server sends them as a status
        if type(reply) is not list or len(reply) != 2 or type(reply[0]) is not int:
            raise ProtocolError(f"malformed reply to '{op}' from {self.address}: {reply!r:.200}")
        if reply[0] not in (protocol.REPLY_OK, protocol.REPLY_ERROR):
            raise ProtocolError(
                f"reply to '{op}' from {self.address} with status {reply[0]}, not 0 or 1"
            )
        status, payload = reply
        if status == protocol.REPLY_ERROR:
            if (
                type(payload) is not list
                or len(payload) != 3
                or not all(type(part) is str for part in payload)
            ):
                raise ProtocolError(
                    f"malformed error reply to '{op}' from {self.address}: {payload!r:.200}"
                )
            raise RemoteEnvError(*payload)
        return payload

    def close(self, goodbye: bool = True) -> None:
        """Tell the server to close the env (best effort), then close the socket."""
        if goodbye and not self.broken:
            try:
                wire.set_timeout(self._channel.sock, 2.0)
                self.call("close")
            except (PortalConnectionError, RemoteEnvError, ProtocolError):
                pass
        self._finalizer()
