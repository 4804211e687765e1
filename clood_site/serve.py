"""`python -m clood_site.serve [daphne options] clood_site.asgi:application`: daphne, as `./clood run` starts it,
with two limits that only the server can enforce.

Twisted reads a whole request, body included, before daphne hands it to the application, so clood's consumers never
see a client that sends its request a byte a second (slow-loris) or announces a 10 GB body (Twisted would spool it
to disk first). Here each request gets a deadline from its first line (CLOOD_REQUEST_READ_TIMEOUT): a request not
fully read by then is answered 408 and closed; a Content-Length over CLOOD_MAX_BODY_BYTES is answered 413 at once.
Both answers are JSON in the shape of the API that was called. And flow control: while a client's socket buffer is
full, the application's next send waits (up to CLOOD_IDLE_TIMEOUT, then the client is let go), so a slow reader holds
back the relay, and through it the host, instead of piling the answer up in daphne's memory.
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

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._deadline = reactor.callLater(settings.CLOOD_REQUEST_READ_TIMEOUT, self._too_slow)

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
            self._stop_deadline()
            self._refused = True
            path = getattr(self.channel, "_path", b"") or b""
            flavour = "ollama" if path.startswith(b"/api/") else "openai"
            status, headers, body = error.render(flavour)
            head = [b"HTTP/1.1 %d %s" % (status, HTTPStatus(status).phrase.encode())]
            head += [name + b": " + value for name, value in headers]
            head += [b"content-length: %d" % len(body), b"connection: close"]
            self.channel.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
            self.channel.transport.loseConnection()

    class CloodHTTPFactory(HTTPFactory):
        def buildProtocol(self, addr):  # noqa: N802
            protocol = super().buildProtocol(addr)
            if protocol is not None:
                protocol.requestFactory = DeadlineRequest
            return protocol

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
