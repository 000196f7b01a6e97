"""uvicorn's httptools protocol, handing each request's transport to the app in
``scope["extensions"]`` so the SSE guard (``gateway.api.sse_guard``) can read the
socket's TCP state and reset a connection whose reader froze.  ``python -m gateway``
(the image's entry point) serves with it; under a bare ``uvicorn ...`` the guard is off
and the SSE send timeout alone applies."""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.api.sse_guard import TRANSPORT_KEY


class TransportAwareProtocol(HttpToolsProtocol):
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {TRANSPORT_KEY: self.transport}  # type: ignore[dict-item]
