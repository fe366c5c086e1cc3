"""BLOBs inside JSON: ``{"$b64": "..."}`` tags, for results stored or sent as JSON (the
FSM's dedup table, routed shard answers). One place, below both the FSM and sharding."""
import base64


def b64_default(obj):
    """``orjson.dumps(..., default=b64_default)``: bytes become ``{"$b64": ...}``."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return {"$b64": base64.b64encode(bytes(obj)).decode()}
    raise TypeError


def unb64(obj):
    """Undo ``b64_default``: every ``{"$b64": ...}`` back to bytes."""
    if isinstance(obj, dict):
        if len(obj) == 1 and "$b64" in obj:
            return base64.b64decode(obj["$b64"])
        return {k: unb64(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unb64(v) for v in obj]
    return obj
