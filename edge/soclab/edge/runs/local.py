"""The Pi's local control channel: JSON lines over a Unix socket, between each instrument's
publisher (the server, ``hosting``) and the run controller (the client, ``controller``).

It never leaves the Pi, so a run goes on whatever the network does. A message is one JSON object
per line. The client sends requests, each with a number ``req`` that the server's reply repeats:

- ``{"op": "subscribe"}``: the server sends the instrument's readings from now on
  (``{"type": "reading", "t_ns": ..., "values": {...}}``, the last of each acquisition);
- ``{"op": "acquire", "holder": "run/<id>", "ttl_s": 3, "guard": {"min_v": ...}}``: take or renew
  the instrument's lease (``control.InstrumentControl``); a closed connection is the holder gone;
- ``{"op": "release", "holder": ..., "safe": true}``;
- ``{"op": "command", "command": {soclab.cmd/1}}``: the reply carries its ``result``.

Replies are ``{"type": "reply", "req": n, "ok": true|false, "reason": ..., ...}``. The server also
tells every connection what happens to the instrument: ``{"type": "event", "event": "safe" |
"safe_failed" | "lease_end" | "opened" | "lost", "reason": ...}``.

The socket file is made readable and writable by its owner and group only (0660): whoever may
write to it may switch the instrument.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import queue
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_LINE = 1 << 20  # a run document in a command fits many times over
SEND_QUEUE = 1000  # messages waiting for a slow client; readings beyond it are dropped (counted)

Message = dict[str, Any]


class ChannelClosed(ConnectionError):
    """The other end went away (its process ended, or the socket was never there)."""


def encode(message: Message) -> bytes:
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode() + b"\n"


class _Lines:
    """Whole JSON lines from a socket; ChannelClosed at its end or after a line too long."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> Message:
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_LINE:
                raise ChannelClosed(f"a line longer than {MAX_LINE} bytes")
            try:
                chunk = self.sock.recv(65536)
            except OSError as exc:
                raise ChannelClosed(str(exc)) from None
            if not chunk:
                raise StopIteration
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
        except ValueError:
            return {"type": "invalid", "reason": f"not JSON: {line[:80]!r}"}
        return message if isinstance(message, dict) else {"type": "invalid", "reason": "not an object"}


# --- the server: one per instrument's publisher ------------------------------------------------------


class Peer:
    """One connected client, as the server sees it: messages to it go through a bounded queue."""

    def __init__(self, sock: socket.socket, number: int) -> None:
        self.sock = sock
        self.name = f"local-{number}"
        self.subscribed = False
        self.holders: set[str] = set()  # leases taken over this connection
        self.dropped = 0
        self._out: queue.Queue[bytes | None] = queue.Queue(SEND_QUEUE)
        self._writer = threading.Thread(target=self._write, name=f"{self.name}-writer", daemon=True)
        self._writer.start()

    def send(self, message: Message, *, droppable: bool = False) -> None:
        try:
            self._out.put(encode(message), block=not droppable, timeout=5)
        except queue.Full:
            self.dropped += 1

    def close(self) -> None:
        with contextlib.suppress(queue.Full):
            self._out.put_nowait(None)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def _write(self) -> None:
        while (data := self._out.get()) is not None:
            try:
                self.sock.sendall(data)
            except OSError:
                return


Handler = Callable[[Peer, Message], Message | None]


class LocalServer:
    """Listens on ``path``; ``handle(peer, request)`` answers each request (its reply, or None for
    none); ``gone(peer)`` is told when a connection ends, however it ends."""

    def __init__(self, path: str | Path, handle: Handler, gone: Callable[[Peer], None]) -> None:
        self.path = Path(path)
        self._handle = handle
        self._gone = gone
        self._peers: set[Peer] = set()
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a process that was killed: it cannot be listening any more
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path))
        os.chmod(self.path, 0o660)
        sock.listen(8)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept, name="control-socket", daemon=True)
        self._thread.start()
        log.info("event=control_socket path=%s", self.path)

    def stop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        for peer in self.peers():
            peer.close()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def peers(self) -> list[Peer]:
        with self._lock:
            return list(self._peers)

    def broadcast(self, message: Message, *, subscribers_only: bool = False) -> None:
        for peer in self.peers():
            if peer.subscribed or not subscribers_only:
                peer.send(message, droppable=subscribers_only)

    def _accept(self) -> None:
        while (sock := self._sock) is not None:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            peer = Peer(conn, next(self._numbers))
            with self._lock:
                self._peers.add(peer)
            threading.Thread(target=self._serve, args=(peer,), name=peer.name, daemon=True).start()

    def _serve(self, peer: Peer) -> None:
        try:
            for request in _Lines(peer.sock):
                reply = self._answer(peer, request)
                if reply is not None:
                    peer.send(reply)
        except ChannelClosed as exc:
            log.warning("event=control_connection_error peer=%s error=%r", peer.name, str(exc))
        finally:
            with self._lock:
                self._peers.discard(peer)
            peer.close()
            self._gone(peer)

    def _answer(self, peer: Peer, request: Message) -> Message | None:
        req = request.get("req")
        try:
            reply = self._handle(peer, request)
        except Exception as exc:  # a bug met by this request: answer it, keep serving
            log.exception("event=control_request_error op=%r", request.get("op"))
            reply = {"ok": False, "reason": f"{type(exc).__name__}: {exc}"}
        if reply is None:
            return None
        return {"type": "reply", "req": req, **reply}


# --- the client: the run controller's side ------------------------------------------------------------


class LocalClient:
    """A connection to one instrument's control socket. ``request`` waits for its reply; readings
    and events go to ``on_message`` (on the client's reader thread), the end to ``on_closed``."""

    def __init__(
        self,
        path: str | Path,
        on_message: Callable[[Message], None],
        on_closed: Callable[[str], None],
    ) -> None:
        self.path = Path(path)
        self._on_message = on_message
        self._on_closed = on_closed
        self._numbers = itertools.count(1)
        self._waiting: dict[int, queue.Queue[Message]] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.closed = threading.Event()
        self._reader: threading.Thread | None = None

    def connect(self, timeout_s: float = 2.0) -> LocalClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(self.path))
        except OSError as exc:
            sock.close()
            raise ChannelClosed(f"cannot connect to {self.path}: {exc}") from None
        sock.settimeout(None)
        self._sock = sock
        self._reader = threading.Thread(target=self._read, name=f"local-{self.path.stem}", daemon=True)
        self._reader.start()
        return self

    def request(self, op: str, timeout_s: float = 5.0, **fields: Any) -> Message:
        """Send one request and return its reply; ChannelClosed if the server is gone or silent."""
        if self.closed.is_set() or self._sock is None:
            raise ChannelClosed(f"{self.path} is closed")
        req = next(self._numbers)
        answer: queue.Queue[Message] = queue.Queue(1)
        with self._lock:
            self._waiting[req] = answer
        try:
            with self._send_lock:
                self._sock.sendall(encode({"op": op, "req": req, **fields}))
            return answer.get(timeout=timeout_s)
        except OSError as exc:
            raise ChannelClosed(f"{self.path}: {exc}") from None
        except queue.Empty:
            if self.closed.is_set():
                raise ChannelClosed(f"{self.path} closed while waiting for {op}") from None
            raise ChannelClosed(f"{self.path}: no reply to {op} within {timeout_s:g} s") from None
        finally:
            with self._lock:
                self._waiting.pop(req, None)

    def close(self) -> None:
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=2)
        if sock is not None:
            sock.close()

    def _read(self) -> None:
        assert self._sock is not None
        why = "closed by the server"
        try:
            for message in _Lines(self._sock):
                if message.get("type") == "reply":
                    with self._lock:
                        waiting = self._waiting.get(message.get("req", -1))
                    if waiting is not None:
                        waiting.put(message)
                else:
                    self._on_message(message)
        except ChannelClosed as exc:
            why = str(exc)
        except Exception as exc:  # a bug in a callback: the channel is unusable from here
            log.exception("event=local_client_error path=%s", self.path)
            why = f"{type(exc).__name__}: {exc}"
        self.closed.set()
        self._on_closed(why)
