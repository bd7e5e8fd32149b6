"""A raw RESP2/RESP3 client over a plain socket.

Why: redis-py hides the wire (it decodes RESP3 maps into dicts, retries, reconnects). The
protocol tests must see the exact bytes a server sends, send requests in one write, send
bytes no client library would, and notice when the server closes the connection.
"""

import socket
import threading

DEFAULT_TIMEOUT = 10.0


class ConnectionClosed(Exception):
    """The server closed the connection (EOF or reset) before a whole reply arrived."""


class ErrorReply(str):
    """A `-ERR …` (RESP2) or `!…` (RESP3 blob error) reply; a value, not an exception, so a
    pipeline of replies can hold errors in place."""


class SimpleString(str):
    """A `+…` status reply, kept apart from bulk strings so tests can tell `+OK` from `$2 OK`."""


class RespMap(dict):
    """A RESP3 `%` map (a RESP2 server sends a flat `*` array instead)."""


class RespSet(list):
    """A RESP3 `~` set (a RESP2 server sends a `*` array instead)."""


class Push(list):
    """A RESP3 `>` out-of-band push message."""


def encode(*args):
    """One command as a RESP multibulk request; str and int arguments are UTF-8 encoded."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, int):
            arg = str(arg)
        if isinstance(arg, str):
            arg = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


def encode_many(commands):
    """A pipeline: the concatenation of many encoded commands, to be sent in one write."""
    return b"".join(encode(*cmd) for cmd in commands)


class RespConn:
    """One TCP connection that sends raw bytes and parses replies one at a time.

    `last_raw` holds the exact bytes of the last reply parsed, for tests about wire types.
    """

    def __init__(self, host, port, timeout=DEFAULT_TIMEOUT):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.pos = 0
        self.last_raw = b""

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def settimeout(self, seconds):
        self.sock.settimeout(seconds)

    def send_raw(self, data):
        self.sock.sendall(data)

    def send(self, *args):
        self.sock.sendall(encode(*args))

    def call(self, *args):
        """Sends one command and returns its reply."""
        self.send(*args)
        return self.read_reply()

    def send_in_background(self, data):
        """Sends `data` in one sendall on a thread, so a test can read replies while a large
        pipeline is still being written (a server with backpressure would otherwise deadlock
        against a client that only reads after writing everything). Returns the thread; its
        `error` attribute holds the exception sendall raised, if any."""

        def run():
            try:
                self.sock.sendall(data)
            except OSError as e:
                thread.error = e

        thread = threading.Thread(target=run, daemon=True)
        thread.error = None
        thread.start()
        return thread

    def is_closed_by_peer(self, timeout=5.0):
        """True once the server has closed the connection (EOF or reset) within `timeout`;
        False if it sends more bytes or stays open and silent."""
        if self.pos < len(self.buf):
            return False
        old = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True
        finally:
            try:
                self.sock.settimeout(old)
            except OSError:
                pass
        if not data:
            return True
        self.buf += data
        return False

    # --- parsing -------------------------------------------------------------------------

    def _fill(self):
        try:
            data = self.sock.recv(1 << 16)
        except (ConnectionResetError, BrokenPipeError) as e:
            raise ConnectionClosed(str(e)) from e
        if not data:
            raise ConnectionClosed("EOF")
        if self.pos > (1 << 20):
            del self.buf[: self.pos]
            self.pos = 0
        self.buf += data

    def _line(self):
        while True:
            end = self.buf.find(b"\r\n", self.pos)
            if end >= 0:
                line = bytes(self.buf[self.pos : end])
                self.pos = end + 2
                return line
            self._fill()

    def _exact(self, n):
        while len(self.buf) - self.pos < n + 2:
            self._fill()
        data = bytes(self.buf[self.pos : self.pos + n])
        if self.buf[self.pos + n : self.pos + n + 2] != b"\r\n":
            raise ValueError("bulk string not terminated by CRLF")
        self.pos += n + 2
        return data

    def read_reply(self):
        """Parses one whole reply (RESP2 or RESP3) and returns it as a Python value."""
        start = self.pos
        value = self._parse()
        self.last_raw = bytes(self.buf[start : self.pos])
        return value

    def read_replies(self, count):
        return [self.read_reply() for _ in range(count)]

    def _parse(self):
        line = self._line()
        if not line:
            raise ValueError("empty reply line")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return SimpleString(rest.decode(errors="replace"))
        if kind == b"-":
            return ErrorReply(rest.decode(errors="replace"))
        if kind in (b":", b"("):
            return int(rest)
        if kind == b",":
            return float(rest)
        if kind == b"#":
            return rest == b"t"
        if kind == b"_":
            return None
        if kind in (b"$", b"=", b"!"):
            n = int(rest)
            if n < 0:
                return None
            data = self._exact(n)
            if kind == b"=":
                return data[4:]  # verbatim string: drop the "txt:" format prefix
            if kind == b"!":
                return ErrorReply(data.decode(errors="replace"))
            return data
        if kind in (b"*", b"~", b">"):
            n = int(rest)
            if n < 0:
                return None
            items = [self._parse() for _ in range(n)]
            return {b"*": list, b"~": RespSet, b">": Push}[kind](items)
        if kind == b"%":
            n = int(rest)
            out = RespMap()
            for _ in range(n):
                key = self._parse()
                out[key if not isinstance(key, list) else tuple(key)] = self._parse()
            return out
        if kind == b"|":
            n = int(rest)
            for _ in range(2 * n):
                self._parse()  # attributes annotate the reply that follows; skip them
            return self._parse()
        raise ValueError(f"unknown RESP type byte {kind!r} in {line!r}")
