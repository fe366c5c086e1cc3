"""Writes codec_v1.json from cases_v1.py and codec_v2.json (command format version 2)
from cases_v2.py, using the pure-Python twin.

Existing vectors are never changed: if the twin now encodes an existing case differently,
this script stops (the format changed; that needs a new version, not new vectors)."""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, HERE)

from raftsqlite.codec import fallback as f, hashing as h  # noqa: E402
import cases_v1 as c  # noqa: E402
import cases_v2 as c2  # noqa: E402


def build():
    v = {"format_version": 1, "crc32c": {}, "frames": {}, "entries": {}, "messages": {},
         "commands": {}, "conf_changes": {}, "key_bytes": {}, "keyspace_id": {},
         "range_key": {}, "xxh64": {}}
    for k, data in c.CRC.items():
        v["crc32c"][k] = f.crc32c(data)
    for k, fr in c.FRAMES.items():
        v["frames"][k] = f.encode_frame(*fr).hex()
    for k, e in c.ENTRIES.items():
        v["entries"][k] = f.encode_entry(e, group=1).hex()
    for k, m in c.MESSAGES.items():
        v["messages"][k] = f.encode_message(m, group=2).hex()
    for k, cmd in c.COMMANDS.items():
        v["commands"][k] = f.encode_command(cmd).hex()
    for k, cc in c.CONF_CHANGES.items():
        v["conf_changes"][k] = f.encode_conf_change(cc).hex()
    for k, key in c.SHARD_KEYS.items():
        v["key_bytes"][k] = h.key_bytes(key).hex()
        v["keyspace_id"][k] = str(h.keyspace_id(key))
        v["range_key"][k] = str(h.range_key(key))
    for k, (data, seed) in c.XXH64.items():
        v["xxh64"][k] = str(h.xxh64(data, seed))
    return v


def build_v2():
    return {"format_version": 2,
            "commands": {k: f.encode_command(cmd).hex() for k, cmd in c2.COMMANDS.items()}}


def main():
    write(os.path.join(HERE, "codec_v1.json"), build())
    write(os.path.join(HERE, "codec_v2.json"), build_v2())


def write(path, new):
    if os.path.exists(path):
        with open(path) as fh:
            old = json.load(fh)
        for section, items in old.items():
            if isinstance(items, dict):
                for k, val in items.items():
                    if new[section].get(k) != val:
                        sys.exit(f"vector {section}/{k} would change: a released format "
                                 f"is frozen")
    with open(path, "w") as fh:
        json.dump(new, fh, indent=1, sort_keys=True)
        fh.write("\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
