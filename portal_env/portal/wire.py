"""Sockets, framing and the authentication handshake.

A frame is a u32 little-endian payload length, a kind byte and the payload: a
`codec` value, or a step message laid out by `fastpath`. Before a
connection carries any frame, the client proves it holds the server's token by
answering a random challenge with an HMAC; the token itself never crosses the
wire, and the server reads nothing but fixed-size bytes until then.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

from ..errors import AuthenticationError, PortalConnectionError, PortalEnvError, ProtocolError
from . import codec
from . import spin as spin_policy

MAGIC = b"PENV1"
NONCE_BYTES = 32
DIGEST_BYTES = 32
ACCEPTED, REFUSED = b"OK", b"NO"
DEFAULT_MAX_FRAME = 1 << 30  # 1 GiB; larger frames close the connection
HANDSHAKE_TIMEOUT = 10.0
_HEADER = struct.Struct("<IB")  # payload length, frame kind
# Frame kinds: a general codec value, or a step in the layout agreed from the spaces.
GENERAL, FAST_STEP, FAST_REPLY = 0, 1, 2
_READ_CHUNK = 1 << 16


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
    """Bind and listen; a Unix socket file is made private to the user."""
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    if address.path is not None:
        if os.path.exists(address.path):
            os.unlink(address.path)
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


def _digest(token: str, nonce: bytes) -> bytes:
    return hmac.new(token.encode(), b"portal-env-auth" + nonce, hashlib.sha256).digest()


class Channel:
    """A connected, authenticated socket that sends and receives frames."""

    def __init__(
        self, sock: socket.socket, max_frame: int = DEFAULT_MAX_FRAME, spin_us: float = 0.0
    ) -> None:
        self.sock = sock
        self.max_frame = max_frame
        self.spin_ns = int(spin_us * 1000)
        self._wait_ns = 0  # running average of how long a frame took to start arriving
        self._encoder = codec.Encoder()
        self._decoder = codec.Decoder()
        self.shm: Any = None  # a mapping shared with the peer for large array data
        self._buf = bytearray(_READ_CHUNK)
        self._view = memoryview(self._buf)
        self._lo = self._hi = 0

    # -- handshake ---------------------------------------------------------

    @classmethod
    def connect(
        cls, address: Address, token: str, timeout: Optional[float], spin_us: float = 0.0
    ) -> Channel:
        """Connect to a server and authenticate with token."""
        sock = socket.socket(address.family, socket.SOCK_STREAM)
        try:
            sock.settimeout(min(timeout or HANDSHAKE_TIMEOUT, HANDSHAKE_TIMEOUT))
            sock.connect(address.target)
            _tune(sock)
            channel = cls(sock, spin_us=spin_us)
            hello = channel.read_exact(len(MAGIC) + NONCE_BYTES)
            if hello[: len(MAGIC)] != MAGIC:
                raise ProtocolError(f"{address} is not a portal-env server (it sent {hello[:8]!r})")
            sock.sendall(_digest(token, bytes(hello[len(MAGIC) :])))
            if channel.read_exact(len(ACCEPTED)) != ACCEPTED:
                raise AuthenticationError(
                    f"the server at {address} refused the token; pass the server's token "
                    "(token=..., or PORTAL_ENV_TOKEN) to the agent"
                )
            sock.settimeout(None)
            set_timeout(sock, timeout)
            return channel
        except PortalEnvError:  # before OSError: PortalConnectionError is one too
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            raise PortalConnectionError(f"cannot connect to a portal at {address}: {exc}") from exc

    @classmethod
    def accept(
        cls, sock: socket.socket, token: str, max_frame: int, spin_us: float = 0.0
    ) -> Optional[Channel]:
        """Run the server side of the handshake; None if the peer failed it."""
        _tune(sock)
        sock.settimeout(HANDSHAKE_TIMEOUT)
        channel = cls(sock, max_frame, spin_us)
        nonce = secrets.token_bytes(NONCE_BYTES)
        try:
            sock.sendall(MAGIC + nonce)
            answer = channel.read_exact(DIGEST_BYTES)
            if not hmac.compare_digest(bytes(answer), _digest(token, nonce)):
                sock.sendall(REFUSED)
                return None
            sock.sendall(ACCEPTED)
        except (OSError, PortalConnectionError):
            return None
        sock.settimeout(None)
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
        views = [memoryview(p).cast("B") for p in parts]
        while views:
            sent = self.sock.sendmsg(views[:512])  # stay under IOV_MAX
            while sent and views:
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
        spin = self.spin_ns and self._wait_ns < self.spin_ns and spin_policy.spare_core()
        if not (spin and self._spin(start)):
            while self._hi < _HEADER.size:
                self._hi += self._recv_into(self._view[self._hi :])
        self._wait_ns = (3 * self._wait_ns + time.perf_counter_ns() - start) // 4

    def _spin(self, start: int) -> bool:
        """Poll for a frame header for a while before blocking; True if one came.

        On virtual machines a blocked process costs tens of microseconds to wake
        (and then runs cold); a frame that arrives while we poll avoids both.
        Adaptive: we poll only while frames usually come within spin_ns, and for
        about twice the usual wait, so a slow peer (a long env step, an agent
        thinking) costs no spinning at all.
        """
        deadline = start + min(self.spin_ns, 2 * self._wait_ns + 50_000)
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
        out = bytearray(n)
        got = min(n, self._hi - self._lo)
        out[:got] = self._view[self._lo : self._lo + got]
        self._lo += got
        if got == n:
            return out
        self._lo = self._hi = 0
        if n - got >= _READ_CHUNK:  # large: read straight into the result, woken once
            target = memoryview(out)
            while got < n:
                got += self._recv_into(target[got:], socket.MSG_WAITALL)
            return out
        while got < n:
            k = self._recv_into(self._view)
            take = min(k, n - got)
            out[got : got + take] = self._view[:take]
            got += take
            self._lo, self._hi = take, k
        return out

    def _recv_into(self, target: memoryview, flags: int = 0) -> int:
        try:
            k = self.sock.recv_into(target, 0, flags)
        except (socket.timeout, BlockingIOError) as exc:  # BlockingIOError: SO_RCVTIMEO expired
            raise PortalConnectionError("timed out waiting for the peer") from exc
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
