"""The small server's sockets: listen, the server side of the handshake, and frames.

Python 2.7 and 3.5+, standard library only; every constant comes from
`portal_env.portal.protocol`, as in `portal_env.portal.wire`. The handshake is
the same (mutual HMAC proofs, MAGIC), and the features byte says that this
server offers none of the extras: the agent then sends general frames only.
"""

import errno
import hmac
import os
import socket
import stat
import struct
import time

from ..portal import protocol, spin

_HEADER = struct.Struct(protocol.HEADER_FORMAT)
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK)
_yield = getattr(os, "sched_yield", lambda: None)
_READ_CHUNK = 1 << 16
_FEATURES = struct.pack("B", protocol.FEATURES_NONE)


class HandshakeFailed(Exception):
    """A peer that did not authenticate (why is the message)."""


class Closed(Exception):
    """The peer closed the connection, or it broke."""


class PeerTimeout(Closed):
    """Nothing arrived within the connection's idle timeout."""


def parse_address(host, port, path):
    """(family, target, text) of a TCP host and port or a Unix socket path."""
    if path:
        return socket.AF_UNIX, path, "unix:" + path
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    text = ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)
    return family, (host, port), text


def listen(family, target):
    """A listening socket; a Unix socket file is private to the user, and a stale one (its
    server died) is replaced, never a regular file or a live server's socket."""
    if family == socket.AF_UNIX:
        _clear_stale_socket(target)
    sock = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_UNIX:
        old_umask = os.umask(0o177)
        try:
            sock.bind(target)
        finally:
            os.umask(old_umask)
    else:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(target)
    sock.listen(128)
    return sock


def _clear_stale_socket(path):
    try:
        info = os.lstat(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return
        raise
    if not stat.S_ISSOCK(info.st_mode):
        raise RuntimeError(
            "cannot listen on unix:%s: that path exists and is not a socket, so it is not "
            "replaced. Choose another socket path (PORTAL_ENV_SOCKET)." % path
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except socket.error as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            os.unlink(path)  # a dead server's socket
            return
    finally:
        probe.close()
    raise RuntimeError(
        "cannot listen on unix:%s: another server is listening there. Stop it or choose "
        "another socket path (PORTAL_ENV_SOCKET)." % path
    )


def _read_by(sock, n, deadline):
    """Exactly n bytes before the deadline (time.time(): Python 2 has no monotonic)."""
    got = b""
    while len(got) < n:
        remaining = deadline - time.time()
        if remaining <= 0:
            raise HandshakeFailed("no token proof within the handshake deadline")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(n - len(got))
        except socket.timeout:
            raise HandshakeFailed("no token proof within the handshake deadline")
        if not chunk:
            raise HandshakeFailed("closed during the handshake")
        got += chunk
    return got


def accept(sock, token, timeout):
    """Run the server side of the handshake on sock within timeout seconds."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        # Small request/reply messages: Nagle's delay would dominate a step.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    deadline = time.time() + (timeout or 1e9)
    server_nonce = os.urandom(protocol.NONCE_BYTES)
    try:
        sock.sendall(protocol.MAGIC + server_nonce)
        answer = _read_by(sock, protocol.NONCE_BYTES + protocol.DIGEST_BYTES, deadline)
        client_nonce, proof = answer[: protocol.NONCE_BYTES], answer[protocol.NONCE_BYTES :]
        expected = protocol.proof(token, protocol.ROLE_AGENT, server_nonce, client_nonce)
        if not hmac.compare_digest(proof, expected):
            sock.sendall(protocol.REFUSED)
            raise HandshakeFailed("wrong token")
        own = protocol.proof(token, protocol.ROLE_SERVER, server_nonce, client_nonce, _FEATURES)
        sock.sendall(protocol.ACCEPTED + _FEATURES + own)
    except socket.error as exc:
        raise HandshakeFailed("handshake failed: %s" % exc)
    sock.settimeout(None)


class Connection(object):
    """An authenticated socket that sends and receives frames."""

    def __init__(self, sock, max_frame, idle_timeout, spin_us=0.0):
        self.sock = sock
        self.max_frame = max_frame
        self._buf = bytearray()
        sock.settimeout(idle_timeout)
        # Poll before blocking, as the main server does (spin.deadline), but only on a
        # blocking socket: with a timeout, Python waits in poll() before any recv.
        self.spin_ns = int(spin_us * 1000) if idle_timeout is None else 0
        self._wait_ns = 0  # running average of how long a frame took to start arriving

    def recv_frame(self):
        """(kind, payload) of the next frame; Closed, PeerTimeout or ValueError (too big)."""
        if len(self._buf) < _HEADER.size and self.spin_ns:
            start = spin.now_ns()
            until = spin.deadline(start, self.spin_ns, self._wait_ns)
            if until:
                self._spin(until)
            self._fill(_HEADER.size)
            self._wait_ns = (3 * self._wait_ns + spin.now_ns() - start) // 4
        else:
            self._fill(_HEADER.size)
        size, kind = _HEADER.unpack_from(self._buf, 0)
        if size > self.max_frame:
            raise ValueError("frame of %d bytes exceeds the limit of %d" % (size, self.max_frame))
        self._fill(_HEADER.size + size)
        payload = self._buf[_HEADER.size : _HEADER.size + size]
        del self._buf[: _HEADER.size + size]
        return kind, payload

    def _fill(self, n):
        while len(self._buf) < n:
            try:
                # Never more than the frame still needs beyond a chunk: a header claiming
                # 1 GiB makes us read as its bytes arrive, not allocate it.
                chunk = self.sock.recv(max(_READ_CHUNK, min(n - len(self._buf), 1 << 24)))
            except socket.timeout:
                raise PeerTimeout("idle")
            except socket.error as exc:
                raise Closed(str(exc))
            if not chunk:
                raise Closed("closed by the peer")
            self._buf += chunk

    def _spin(self, until):
        """Poll for the next frame's bytes until until (spin.now_ns), then let _fill block."""
        while spin.now_ns() < until:
            try:
                chunk = self.sock.recv(_READ_CHUNK, socket.MSG_DONTWAIT)
            except socket.error as exc:
                if exc.errno in _AGAIN:
                    _yield()  # never starve the peer we wait for when cores are busy
                    continue
                raise Closed(str(exc))
            if not chunk:
                raise Closed("closed by the peer")
            self._buf += chunk
            if len(self._buf) >= _HEADER.size:
                return

    def send(self, kind, parts, size):
        try:
            self.sock.sendall(_HEADER.pack(size, kind) + b"".join(parts))
        except socket.error as exc:
            raise Closed(str(exc))

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except socket.error:
            pass
        self.sock.close()
