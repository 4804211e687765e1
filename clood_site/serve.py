"""`python -m clood_site.serve [daphne options] clood_site.asgi:application`: daphne, as `./clood run` starts it,
with two limits that only the server can enforce.

Twisted reads a whole request, body included, before daphne hands it to the application, so clood's consumers never
see a client that sends its request a byte a second (slow-loris) or announces a 10 GB body (Twisted would spool it
to disk first). Here each request gets a deadline from its first byte (CLOOD_REQUEST_READ_TIMEOUT): a request not
fully read by then, first line included, is answered 408 and closed; a Content-Length over CLOOD_MAX_BODY_BYTES is
answered 413 at once. Both answers are JSON in the shape of the API that was called. And flow control: while a
client's socket buffer is full, the application's next send waits (up to CLOOD_IDLE_TIMEOUT, then the client is let
go), so a slow reader holds back the relay, and through it the host, instead of piling the answer up in daphne's
memory.
"""

import asyncio
import os
import sys
from http import HTTPStatus

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clood_site.settings")


def _install():
    """Patch daphne's HTTP factory to build `DeadlineRequest`s; returns the Server class to run."""
    import daphne.server
    from daphne.http_protocol import HTTPFactory, WebRequest
    from django.conf import settings
    from twisted.internet import reactor
    from twisted.internet.interfaces import IPushProducer
    from zope.interface import implementer

    from proxy.errors import ApiError

    @implementer(IPushProducer)
    class Flow:
        """Registered on each response: Twisted pauses it while the client's socket buffer is full, and
        `CloodServer.handle_reply` then waits before taking the application's next message. Without it daphne
        buffers whatever the application sends, so a client reading slower than a host answers costs memory."""

        def __init__(self):
            self.writable = asyncio.Event()
            self.writable.set()

        def pauseProducing(self):  # noqa: N802 - Twisted's names
            self.writable.clear()

        def resumeProducing(self):  # noqa: N802
            self.writable.set()

        def stopProducing(self):  # noqa: N802
            self.writable.set()

    class CloodServer(daphne.server.Server):
        async def handle_reply(self, protocol, message):
            await super().handle_reply(protocol, message)
            flow = getattr(protocol, "flow", None)
            if flow is None or flow.writable.is_set():
                return
            try:
                async with asyncio.timeout(settings.CLOOD_IDLE_TIMEOUT):
                    await flow.writable.wait()
            except TimeoutError:  # the client stopped reading: let it go, which cancels the request
                if protocol.channel is not None:
                    protocol.channel.transport.abortConnection()

    class DeadlineRequest(WebRequest):
        _refused = False
        flow = None
        reading = True  # until the whole request (body included) is read, or refused

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # The deadline runs from the request's first byte, which its connection saw arrive (FirstLine).
            first_line = getattr(self.channel, "clood_first_line", None)
            started = first_line.take() if first_line is not None else None
            remaining = settings.CLOOD_REQUEST_READ_TIMEOUT - (reactor.seconds() - started if started else 0)
            self._deadline = reactor.callLater(max(0.0, remaining), self._too_slow)

        def gotLength(self, length):  # noqa: N802 - Twisted's name
            if length is not None and length > settings.CLOOD_MAX_BODY_BYTES:
                limit = settings.CLOOD_MAX_BODY_BYTES
                self._refuse(ApiError(413, f"The request body is larger than {limit} bytes.", code="too_large"))
                length = 0  # nothing will be kept: the connection is closing
            super().gotLength(length)

        def handleContentChunk(self, data):  # noqa: N802
            if not self._refused:
                super().handleContentChunk(data)

        def requestReceived(self, command, path, version):  # noqa: N802
            self.reading = False
            if self._refused:
                return
            self._stop_deadline()
            super().requestReceived(command, path, version)

        def connectionLost(self, reason):  # noqa: N802
            self._stop_deadline()
            if self.flow is not None:
                self.flow.writable.set()
            super().connectionLost(reason)

        def handle_reply(self, message):
            if message["type"] == "http.response.start" and self.flow is None and self.channel is not None:
                self.flow = Flow()
                self.registerProducer(self.flow, True)
            super().handle_reply(message)

        def finish(self):
            if self.producer is not None and self.channel is not None:
                self.unregisterProducer()
            super().finish()

        def _too_slow(self):
            self._deadline = None
            timeout = settings.CLOOD_REQUEST_READ_TIMEOUT
            self._refuse(ApiError(408, f"The request did not arrive within {timeout:g} s.", code="request_timeout"))

        def _stop_deadline(self):
            if self._deadline is not None and self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

        def _refuse(self, error):
            """Answer `error` straight on the connection and close it: the request never reaches the application."""
            self.give_up()
            write_refusal(self.channel.transport, error, getattr(self.channel, "_path", b""))

        def give_up(self):
            """Read no more of this request and never answer it 408 (it is refused, or its connection is)."""
            self._stop_deadline()
            self._refused, self.reading = True, False

    class FirstLine:
        """A request's first line, until Twisted has read it whole (only then is there a request, with its own
        deadline): it gets the same deadline from its first byte, so a client sending its request line a byte a
        second is answered 408 too, not held until the line reaches Twisted's 16 kB limit."""

        def __init__(self, channel):
            self.channel = channel  # Twisted's HTTPChannel
            self.started = None  # when the first byte of a request not yet begun arrived
            self.deadline = None

        def data_arrives(self):
            """Bytes arrive while Twisted is between requests (it parses lines: no request is being read or answered).
            With no partial line pending they begin a new request, whose clock starts now; otherwise the clock of the
            line pending runs on (blank lines between requests leave nothing pending, and start nothing)."""
            if not self._pending():
                self.lost()
            if self.started is None:
                self.started = reactor.seconds()
                self.deadline = reactor.callLater(settings.CLOOD_REQUEST_READ_TIMEOUT, self._too_slow)

        def _pending(self):
            return bool(getattr(self.channel, "_buffer", b""))

        def take(self):
            """The request has begun (its first line is read): it takes over the deadline; the start time."""
            started, self.started = self.started, None
            self._cancel()
            return started

        def _cancel(self):
            if self.deadline is not None and self.deadline.active():
                self.deadline.cancel()
            self.deadline = None

        def lost(self):
            self.started = None
            self._cancel()

        def _too_slow(self):
            self.deadline = None
            transport = self.channel.transport
            if transport is None or getattr(transport, "disconnected", False):
                return
            if getattr(self.channel, "_handlingRequest", False) or not self._pending():
                self.started = None  # a request is being answered, or what came was blank lines: nothing is late
                return
            timeout = settings.CLOOD_REQUEST_READ_TIMEOUT
            error = ApiError(408, f"The request did not arrive within {timeout:g} s.", code="request_timeout")
            line_so_far = bytes(getattr(self.channel, "_buffer", b""))  # "POST /api/ch…": which API was it for?
            write_refusal(transport, error, line_so_far.split(b" ", 2)[1] if line_so_far.count(b" ") else b"")

    def write_refusal(transport, error, path, close=None):
        """Answer `error` straight on the connection, in the shape of the API `path` belongs to, and close it."""
        status, headers, body = error.render("ollama" if (path or b"").startswith(b"/api/") else "openai")
        head = [b"HTTP/1.1 %d %s" % (status, HTTPStatus(status).phrase.encode())]
        head += [name + b": " + value for name, value in headers]
        head += [b"content-length: %d" % len(body), b"connection: close"]
        transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        (close or transport.loseConnection)()

    class CloodHTTPFactory(HTTPFactory):
        def buildProtocol(self, addr):  # noqa: N802
            protocol = super().buildProtocol(addr)
            if protocol is not None:
                protocol.requestFactory = DeadlineRequest
                _watch_first_lines(protocol)
            return protocol

    def _watch_first_lines(protocol):
        """Bytes that arrive while Twisted parses lines between requests start a FirstLine deadline (see data_arrives).
        While a request is read its own deadline runs; while one is answered Twisted only buffers what comes."""
        channel = protocol._channel  # Twisted's HTTPChannel inside its protocol-negotiating wrapper
        first_line = FirstLine(channel)
        channel.clood_first_line = first_line
        received, lost = protocol.dataReceived, protocol.connectionLost

        def data_received(data):
            if protocol._channel is not channel:  # negotiated away from HTTP/1.1 (h2): Twisted's own timeouts apply
                received(data)
                return
            answering = getattr(channel, "_handlingRequest", False)
            reading = any(isinstance(r, DeadlineRequest) and r.reading for r in getattr(channel, "requests", ()))
            if not (answering or reading):
                first_line.data_arrives()
            received(data)

        def connection_lost(reason):
            first_line.lost()
            lost(reason)

        protocol.dataReceived, protocol.connectionLost = data_received, connection_lost

        def bad_request():  # Twisted's own answer to malformed HTTP is a bare 400: this one has the API's error body
            first_line.lost()
            for request in getattr(channel, "requests", ()):  # the one being read gets no 408 on top
                if isinstance(request, DeadlineRequest):
                    request.give_up()
            error = ApiError(400, "The request is not valid HTTP/1.1.", code="bad_request")
            write_refusal(channel.transport, error, getattr(channel, "_path", b""), close=channel.loseConnection)

        channel._respondToBadRequestAndDisconnect = bad_request

    # daphne's Server builds its factory by this module-level name; this is the one seam it offers.
    daphne.server.HTTPFactory = CloodHTTPFactory
    return CloodServer


def main(argv=None):
    import django

    django.setup()
    server_class = _install()
    from daphne.cli import CommandLineInterface

    cli = CommandLineInterface()
    cli.server_class = server_class
    cli.run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
