"""``-http-allow-origin``: CORS the way rqlite does it.

rqlite (``http/service.go``, ``addAllowHeaders`` and ``ServeHTTP``) puts on every response
``Access-Control-Allow-Origin: <the flag's value>``, ``Access-Control-Allow-Methods:
OPTIONS, GET, POST`` and ``Access-Control-Allow-Headers: Content-Type`` (with ``-auth``:
``Content-Type, Authorization`` and ``Access-Control-Allow-Credentials: true``), and
answers any ``OPTIONS`` request 200 with an empty body before routing or authentication
(a browser's preflight carries no credentials). ``/status`` shows the value under
``http.allow_origin``.

One difference, on purpose: rqlite sends the methods/headers lines even with the flag
unset; here nothing is added when it is off, so a node without the flag answers exactly
as before, at exactly the same cost: nothing of this module is on the request path then
(the app registers no middleware, the server uses the plain fast-lane protocol).

Both HTTP lanes add the same headers: Sanic's through a response middleware (it also
runs for error responses), the fast lane in ``CorsFastHttpProtocol._write_response``;
``tests/api/test_cors.py`` checks both lanes give the same bytes.
"""
from sanic.response import HTTPResponse

ORIGIN = "Access-Control-Allow-Origin"


class Cors:
    def __init__(self, origin, auth=False):
        self.origin = origin
        h = {ORIGIN: origin, "Access-Control-Allow-Methods": "OPTIONS, GET, POST",
             "Access-Control-Allow-Headers": "Content-Type, Authorization" if auth
             else "Content-Type"}
        if auth:
            h["Access-Control-Allow-Credentials"] = "true"
        self.headers = h
        #: the same headers as raw lines, for a response the fast lane rendered itself
        self.lines = "".join(f"{k}: {v}\r\n" for k, v in h.items()).encode("latin-1")

    def add(self, response):
        headers = response.headers
        for k, v in self.headers.items():
            headers[k] = v

    async def on_response(self, request, response):
        """Sanic's response middleware (every response of the Sanic lane, errors too)."""
        self.add(response)

    @staticmethod
    def preflight():
        """rqlite answers every OPTIONS request 200, empty, before routing and auth."""
        return HTTPResponse(b"", status=200)

    def stats(self):
        return {"allow_origin": self.origin}
