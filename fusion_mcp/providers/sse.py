"""Server-sent events, split once: the ``data`` of each event of a stream, from its bytes.

A provider's stream is hundreds of small events a second per member (one per token or a few), and all a
chat-completions client needs of each is its ``data``. httpx2's ``EventSource`` decodes every read to text,
normalises its line ends, builds a ``ServerSentEvent`` per event and checks its size per line; here each
read is split into lines once, as bytes, and only a ``data`` value is decoded. What it yields is what
``EventSource`` yields as ``data`` for every event with data (``tests/providers/test_sse.py`` holds the two
to the same output on generated streams cut at every point), with two differences the SSE standard asks
for: a leading byte-order mark is dropped, and an event the stream ends without finishing (no blank line
after it) is not dispatched — ``EventSource`` dispatches one whose last line ended in a lone ``\\r``.

Text is UTF-8 whatever the ``charset`` says: these streams carry JSON, which is UTF-8 (RFC 8259); a byte that
is not becomes U+FFFD, as ``EventSource`` would make it.
"""

from __future__ import annotations

__all__ = ["SSEDecoder", "TooLong"]

_BOM = b"\xef\xbb\xbf"


class TooLong(Exception):
    """The stream, or one event still unfinished, passed its size limit."""


class SSEDecoder:
    """Feed it a stream's bytes as they arrive; each :meth:`feed` returns the data of the events it completed.

    ``limit`` bounds what is held at once (an unfinished line and the event it belongs to), so a stream
    with no line ends cannot grow without bound.
    """

    __slots__ = ("_cr", "_data", "_held", "_limit", "_started", "_tail")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._tail = b""
        self._data: list[bytes] = []
        self._held = 0
        self._cr = False
        """The last read ended in ``\\r``: a ``\\n`` opening the next is the same line end."""
        self._started = False

    def feed(self, chunk: bytes) -> list[str]:
        if not chunk:
            return []
        if not self._started:
            chunk = self._start(chunk)
            if not chunk:
                return []
        if self._cr:
            self._cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if b"\r" in chunk:
            self._cr = chunk[-1:] == b"\r"
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if b"\n" not in chunk:
            self._tail += chunk
            self._check(self._held + len(self._tail))
            return []
        lines = chunk.split(b"\n")
        if self._tail:
            lines[0] = self._tail + lines[0]
        self._tail = lines.pop()
        events: list[str] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    text = b"\n".join(data).decode("utf-8", "replace")
                    data.clear()
                    self._held = 0
                    if text:
                        events.append(text)
            elif line.startswith(b"data:"):
                value = line[6:] if line[5:6] == b" " else line[5:]
                data.append(value)
                self._held += len(line)
            elif line == b"data":
                data.append(b"")
            # Comments (``:``), ``event``, ``id``, ``retry`` and unknown fields carry nothing we read.
        self._check(self._held + len(self._tail))
        return events

    def _start(self, chunk: bytes) -> bytes:
        """Drop a leading byte-order mark, which may itself arrive split across reads."""
        pending = self._tail + chunk
        if len(pending) < len(_BOM) and _BOM.startswith(pending):
            self._tail = pending
            return b""
        self._started = True
        self._tail = b""
        return pending[len(_BOM) :] if pending.startswith(_BOM) else pending

    def _check(self, held: int) -> None:
        if held > self._limit:
            raise TooLong(f"an event of the stream was longer than {self._limit} bytes")
