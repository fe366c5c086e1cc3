"""HTTP API: Sanic app factory, blueprints, rqlite wire format."""
from raftsqlite.http.app import create_app, start_server, stop_server

__all__ = ["create_app", "start_server", "stop_server"]
