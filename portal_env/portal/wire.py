"""Sockets, framing and the mutual authentication handshake.

A frame is a u32 little-endian payload length, a kind byte and the payload: a
`codec` value, or a step message laid out by `fastpath`. Before a connection
carries any frame, each side proves it holds the token by answering the
other's random nonce with an HMAC: the server sends its nonce, the client
answers with its own nonce and its proof, and the server (if the proof holds)
answers with the features it offers (protocol.FEATURE_*: the small server of
old runtimes offers none, so its agents use general frames only) and its proof
over them and both nonces. The token never crosses the wire, the
server reads nothing but fixed-size bytes until the client has proved itself,
and the client neither sends a request nor decodes a byte of a frame until the
server has proved itself, so a tokenless impostor on the server's port or path
learns no request and can make the agent decode nothing.
"""

from __future__ import annotations

import hmac
import os
import secrets
import socket
import stat
import struct
import time
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

from ..errors import AuthenticationError, PortalConnectionError, PortalEnvError, ProtocolError
from . import codec, protocol
from . import spin as spin_policy
from .protocol import (  # noqa: F401  (re-exported: the names the tests and peers use)
    ACCEPTED,
    DEFAULT_MAX_FRAME,
    DIGEST_BYTES,
    FAST_REPLY,
    FAST_STEP,
    GENERAL,
    MAGIC,
    NONCE_BYTES,
    REFUSED,
)

HANDSHAKE_TIMEOUT = 10.0
_HEADER = struct.Struct(protocol.HEADER_FORMAT)  # payload length, frame kind
_READ_CHUNK = 1 << 16
# A large frame's buffer starts at this size and doubles as its bytes arrive, so a
# header alone (5 bytes claiming 1 GiB) never makes a peer allocate the declared size.
_FIRST_GROWTH = 1 << 20
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Address:
    """Where a server listens: a TCP host and port, or a Unix socket path."""

    host: str = "127.0.0.1"
    port: int = 0
    path: Optional[str] = None

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse `host:port`, `[v6]:port` or `unix:/path/to/socket`."""
        if text.startswith("unix:"):
            return cls(path=text[len("unix:") :])
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"bad address {text!r}: expected HOST:PORT or unix:/PATH")
        return cls(host=host.strip("[]") or "127.0.0.1", port=int(port))

    @property
    def family(self) -> int:
        if self.path is not None:
            return socket.AF_UNIX
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    @property
    def target(self) -> Any:
        return self.path if self.path is not None else (self.host, self.port)

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _tune(sock: socket.socket) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        # Small request/reply messages: Nagle's delay would dominate a step.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


def listen(address: Address) -> socket.socket:
    """Bind and listen; a Unix socket file is made private to the user.

    An existing path is replaced only if it is a socket nobody listens on (left
    by a server that died): never a regular file, never a live server's socket.
    """
    if address.path is not None:
        _clear_stale_socket(address.path)
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    if address.path is not None:
        old_umask = os.umask(0o177)
        try:
            sock.bind(address.path)
        finally:
            os.umask(old_umask)
    else:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address.target)
    sock.listen(128)
    return sock


def _clear_stale_socket(path: str) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise PortalEnvError(
            f"cannot listen on unix:{path}: that path exists and is not a socket, so it is not "
            "replaced. Choose another socket path (socket_path=... or PORTAL_ENV_SOCKET), or "
            "remove the file yourself if it is not needed."
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # a dead server's socket
        return
    except OSError:  # e.g. a full backlog: someone is listening
        pass
    finally:
        probe.close()
    raise PortalEnvError(
        f"cannot listen on unix:{path}: another server is listening there. Stop it "
        "(portal-env ps / stop) or choose another socket path (socket_path=... or "
        "PORTAL_ENV_SOCKET)."
    )


def peer_name(sock: socket.socket) -> str:
    """Who is at the other end: `host:port`, or a Unix peer's pid and uid (for logs)."""
    try:
        if sock.family == socket.AF_UNIX:
            cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            pid, uid, _ = _PEERCRED.unpack(cred)
            return f"unix peer pid {pid} uid {uid}"
        host, port = sock.getpeername()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    except (OSError, AttributeError, struct.error):  # gone already, or no SO_PEERCRED here
        return "an unknown peer"


def bound_address(sock: socket.socket, requested: Address) -> Address:
    """The address a listening socket really got (port 0 becomes a real port)."""
    if requested.path is not None:
        return requested
    return Address(host=requested.host, port=sock.getsockname()[1])


def set_timeout(sock: socket.socket, seconds: Optional[float]) -> None:
    """Bound every send and receive on a blocking socket.

    Kernel timeouts (SO_RCVTIMEO/SO_SNDTIMEO) rather than socket.settimeout,
    which polls before each call: one extra syscall per message on the step path.
    """
    if seconds is None:
        return
    whole = int(seconds)
    value = struct.pack("ll", whole, int((seconds - whole) * 1e6))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
    except OSError:  # a platform without them: Python's own timeout
        sock.settimeout(seconds)


_yield = getattr(os, "sched_yield", lambda: None)


def _check_magic(hello: bytes, address: Address) -> None:
    if hello.startswith(MAGIC):
        return
    if hello.startswith(protocol.MAGIC_FAMILY):
        raise ProtocolError(
            f"the server at {address} speaks another portal-env protocol ({hello[:5]!r}, this "
            f"agent {MAGIC!r}); run the same portal-env version on both sides (restart the portal)"
        )
    raise ProtocolError(f"{address} is not a portal-env server (it sent {hello[:8]!r})")


def _digest(
    token: str, role: bytes, server_nonce: bytes, client_nonce: bytes, features: bytes = b""
) -> bytes:
    # The role keeps one side's proof from ever serving as the other's (reflection).
    return protocol.proof(token.encode(), role, server_nonce, client_nonce, features)


class _Closed(Exception):
    """The peer closed the connection during the handshake."""


class HandshakeFailed(PortalConnectionError):
    """Server side: a peer that did not authenticate (why is the message)."""


class PeerTimeout(PortalConnectionError):
    """No frame arrived within the socket's receive timeout."""


def _read_by(sock: socket.socket, n: int, deadline: Optional[float]) -> bytes:
    """Read exactly n bytes before the monotonic deadline (None: no deadline).

    One deadline for the whole handshake: a peer dripping a byte at a time
    cannot extend it, as it would a per-read timeout.
    """
    got = bytearray()
    while len(got) < n:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("handshake deadline")
            sock.settimeout(remaining)
        chunk = sock.recv(n - len(got))
        if not chunk:
            raise _Closed
        got += chunk
    return bytes(got)


class Channel:
    """A connected, authenticated socket that sends and receives frames."""

    def __init__(
        self,
        sock: socket.socket,
        max_frame: int = DEFAULT_MAX_FRAME,
        spin_us: float = 0.0,
        allow_pickle: bool = False,
    ) -> None:
        self.sock = sock
        self.max_frame = max_frame
        self.spin_ns = int(spin_us * 1000)
        self.allow_pickle = allow_pickle
        self._wait_ns = 0  # running average of how long a frame took to start arriving
        self._encoder = codec.Encoder(allow_pickle)
        self._decoder = codec.Decoder(allow_pickle)
        self.shm: Any = None  # a mapping shared with the peer for large array data
        # What the peer server offers beyond general frames (protocol.FEATURE_*), learnt at
        # the handshake: the small server of old runtimes offers none of them.
        self.features = protocol.FEATURES_ALL
        self._buf = bytearray(_READ_CHUNK)
        self._view = memoryview(self._buf)
        self._lo = self._hi = 0

    # -- handshake ---------------------------------------------------------

    @classmethod
    def connect(
        cls,
        address: Address,
        token: str,
        timeout: Optional[float],
        spin_us: float = 0.0,
        allow_pickle: bool = False,
    ) -> Channel:
        """Connect to a server and authenticate both ways, all within timeout seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        sock = socket.socket(address.family, socket.SOCK_STREAM)
        phase = "connecting"
        try:
            sock.settimeout(timeout)
            sock.connect(address.target)
            _tune(sock)
            phase = "waiting for the server's greeting"
            hello = _read_by(sock, len(MAGIC) + NONCE_BYTES, deadline)
            _check_magic(hello, address)
            server_nonce, client_nonce = hello[len(MAGIC) :], secrets.token_bytes(NONCE_BYTES)
            sock.sendall(
                client_nonce + _digest(token, protocol.ROLE_AGENT, server_nonce, client_nonce)
            )
            phase = "waiting for the server's answer to our token"
            if _read_by(sock, len(ACCEPTED), deadline) != ACCEPTED:
                raise AuthenticationError(
                    f"the server at {address} refused the token; pass the server's token "
                    "(token=..., or PORTAL_ENV_TOKEN; `portal-env token NAME` prints it) to the "
                    "agent"
                )
            phase = "waiting for the server to prove it holds the token"
            answer = _read_by(sock, 1 + DIGEST_BYTES, deadline)
            features, proof = answer[:1], answer[1:]
            expected = _digest(token, protocol.ROLE_SERVER, server_nonce, client_nonce, features)
            if not hmac.compare_digest(proof, expected):
                raise AuthenticationError(
                    f"the peer at {address} accepted our token but could not prove it holds "
                    "it: it is not a portal-env server with this token (an impostor on that "
                    "address?). Nothing was sent to it; check which process listens there."
                )
            sock.settimeout(None)
            set_timeout(sock, timeout)
            channel = cls(sock, spin_us=spin_us, allow_pickle=allow_pickle)
            channel.features = features[0]
            return channel
        except PortalEnvError:  # before OSError: PortalConnectionError is one too
            sock.close()
            raise
        except socket.timeout as exc:
            sock.close()
            raise PortalConnectionError(
                f"timed out after {timeout:g} s {phase} at {address}: is a portal-env server "
                "running there and is it responsive? (`portal-env ps` lists running portals; "
                "timeout=... sets the limit)"
            ) from exc
        except _Closed:
            sock.close()
            raise PortalConnectionError(
                f"the peer at {address} closed the connection while {phase}: is it a portal-env "
                "server of this version, and not overloaded?"
            ) from None
        except OSError as exc:
            sock.close()
            raise PortalConnectionError(
                f"cannot connect to a portal at {address} ({phase}): {exc}"
            ) from exc

    @classmethod
    def accept(
        cls,
        sock: socket.socket,
        token: str,
        max_frame: int,
        spin_us: float = 0.0,
        timeout: Optional[float] = HANDSHAKE_TIMEOUT,
        allow_pickle: bool = False,
        features: int = protocol.FEATURES_ALL,
    ) -> Channel:
        """Run the server side of the handshake within timeout; HandshakeFailed if it fails.

        features: what this server offers beyond general frames (protocol.FEATURE_*).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        _tune(sock)
        server_nonce = secrets.token_bytes(NONCE_BYTES)
        try:
            sock.sendall(MAGIC + server_nonce)
            answer = _read_by(sock, NONCE_BYTES + DIGEST_BYTES, deadline)
            client_nonce, proof = answer[:NONCE_BYTES], answer[NONCE_BYTES:]
            if not hmac.compare_digest(
                proof, _digest(token, protocol.ROLE_AGENT, server_nonce, client_nonce)
            ):
                sock.sendall(REFUSED)
                raise HandshakeFailed("wrong token")
            offered = bytes([features])
            own = _digest(token, protocol.ROLE_SERVER, server_nonce, client_nonce, offered)
            sock.sendall(ACCEPTED + offered + own)
        except socket.timeout:
            raise HandshakeFailed(f"no token proof within the {timeout:g} s deadline") from None
        except _Closed:
            raise HandshakeFailed("closed during the handshake") from None
        except OSError as exc:
            raise HandshakeFailed(f"handshake failed: {exc.strerror or exc}") from None
        sock.settimeout(None)
        channel = cls(sock, max_frame, spin_us, allow_pickle)
        channel.features = features
        return channel

    # -- frames ------------------------------------------------------------

    def send(self, obj: Any) -> None:
        """Encode obj with the general codec and send it as one frame."""
        parts, size = self._encoder.encode(obj, self.shm)
        self.send_parts(GENERAL, parts, size)

    def send_parts(self, kind: int, parts: List[Any], size: int) -> None:
        """Send one frame of the given kind made of parts (size bytes in all)."""
        if size < _READ_CHUNK:  # one copy is cheaper than scatter-gather for small frames
            self.sock.sendall(b"".join([_HEADER.pack(size, kind), *parts]))
        else:
            self._sendmsg_all([_HEADER.pack(size, kind), *parts])

    def _sendmsg_all(self, parts: list) -> None:
        # Empty parts are left out: sendmsg() of them alone sends 0 bytes, forever.
        views = [view for view in (memoryview(p).cast("B") for p in parts) if view.nbytes]
        while views:
            sent = self.sock.sendmsg(views[:512])  # stay under IOV_MAX
            while sent:
                if sent >= views[0].nbytes:
                    sent -= views[0].nbytes
                    views.pop(0)
                else:
                    views[0] = views[0][sent:]
                    sent = 0

    def recv(self) -> Any:
        """Receive one general frame and decode it."""
        kind, payload = self.recv_frame()
        if kind != GENERAL:
            raise ProtocolError(f"unexpected frame kind {kind}")
        return self.decode(payload)

    def decode(self, payload: bytearray) -> Any:
        """Decode the payload of a general frame."""
        return self._decoder.decode(payload, self.shm)

    def buffered(self) -> bool:
        """Whether bytes of the next frame were read already (select() cannot see them)."""
        return self._hi > self._lo

    def recv_frame(self) -> Tuple[int, bytearray]:
        """Receive one frame: (kind, payload). Oversized frames raise ProtocolError."""
        if self._hi - self._lo < _HEADER.size:
            self._fill()
        size, kind = _HEADER.unpack_from(self._buf, self._lo)
        if size > self.max_frame:
            raise ProtocolError(f"frame of {size} bytes exceeds the limit of {self.max_frame}")
        start = self._lo + _HEADER.size
        if self._hi - start >= size:  # the common case: the whole frame arrived in one read
            self._lo = start + size
            return kind, self._buf[start : self._lo]
        self._lo = start
        return kind, self.read_exact(size)

    def _fill(self) -> None:
        """Read until at least a frame header is buffered."""
        leftover = self._hi - self._lo
        self._buf[:leftover] = self._view[self._lo : self._hi]
        self._lo, self._hi = 0, leftover
        start = time.perf_counter_ns()
        until = spin_policy.deadline(start, self.spin_ns, self._wait_ns)
        if not (until and self._spin(until)):
            while self._hi < _HEADER.size:
                self._hi += self._recv_into(self._view[self._hi :])
        self._wait_ns = (3 * self._wait_ns + time.perf_counter_ns() - start) // 4

    def _spin(self, deadline: int) -> bool:
        """Poll for a frame header until deadline (spin.deadline) before blocking; True if
        one came.

        On virtual machines a blocked process costs tens of microseconds to wake
        (and then runs cold); a frame that arrives while we poll avoids both.
        """
        view, sock = self._view, self.sock
        while time.perf_counter_ns() < deadline:
            try:
                k = sock.recv_into(view[self._hi :], 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                _yield()  # never starve the peer we wait for when cores are busy
                continue
            except OSError as exc:
                raise PortalConnectionError(f"connection lost: {exc}") from exc
            if k == 0:
                raise PortalConnectionError("connection closed by the peer")
            self._hi += k
            if self._hi >= _HEADER.size:
                return True
        return False

    def read_exact(self, n: int) -> bytearray:
        """Read exactly n bytes, through a buffer so that small frames cost one syscall."""
        out = bytearray(min(n, _FIRST_GROWTH))
        got = min(n, self._hi - self._lo)
        out[:got] = self._view[self._lo : self._lo + got]
        self._lo += got
        if got == n:
            return out
        self._lo = self._hi = 0
        if n - got >= _READ_CHUNK:  # large: read straight into the result, woken once
            return self._read_growing(out, got, n)
        while got < n:
            k = self._recv_into(self._view)
            take = min(k, n - got)
            out[got : got + take] = self._view[:take]
            got += take
            self._lo, self._hi = take, k
        return out

    def _read_growing(self, out: bytearray, got: int, n: int) -> bytearray:
        """Read into out until it holds n bytes, doubling it only as bytes arrive."""
        while got < n:
            if got == len(out):
                out.extend(bytes(min(n, 2 * len(out)) - len(out)))
            with memoryview(out) as target:  # released before the next resize
                got += self._recv_into(target[got:], socket.MSG_WAITALL)
        return out

    def _recv_into(self, target: memoryview, flags: int = 0) -> int:
        try:
            k = self.sock.recv_into(target, 0, flags)
        except (socket.timeout, BlockingIOError) as exc:  # BlockingIOError: SO_RCVTIMEO expired
            raise PeerTimeout("timed out waiting for the peer") from exc
        except OSError as exc:
            raise PortalConnectionError(f"connection lost: {exc}") from exc
        if k == 0:
            raise PortalConnectionError("connection closed by the peer")
        return k

    def close(self) -> None:
        """Close the socket; safe to call twice and from another thread."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
