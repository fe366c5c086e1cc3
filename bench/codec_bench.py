"""Codec and shard-hash micro-benchmark: compiled module vs pure-Python twin vs pickle
and orjson, measured side by side in one run.

    python bench/codec_bench.py [--quick]

Workloads (issue #2): a typical entry payload (1 statement, 3 parameters), a large one
(100 statements), and a Raft AppendEntries message with 64 entries of ~100 bytes. pickle
works on the same model objects (full fidelity). orjson cannot serialize them, so it is
given the equivalent plain dicts/lists and its decode returns dicts, not model objects:
it is measured without the conversion it would really need, which flatters it.
Rates are per CPU-second of this process, best of several samples (see ``rate``).
The last line is one JSON object.
"""
import json
import os
import pickle
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raftsqlite.codec import fallback as PY, hashing as PYH  # noqa: E402
from raftsqlite.codec.model import (  # noqa: E402
    Command, CommandType, Entry, EntryType, Message, MsgType, Request, Statement,
)

try:
    from raftsqlite import _ccodec as C, _chash as CH
except ImportError:
    sys.exit("the compiled modules are not built: python setup.py build_ext --inplace")
try:
    import orjson
except ImportError:
    orjson = None

QUICK = "--quick" in sys.argv
TARGET_S = 0.05 if QUICK else 0.25   # time per sample
SAMPLES = 3 if QUICK else 5


def rate(fn, min_time=TARGET_S, samples=SAMPLES):
    """Calls per CPU-second of this process, best of ``samples``.

    The machine is shared (2 cores, many busy processes): wall time measures the
    neighbours as much as the code. CPU time of this process does not count time spent
    waiting for a core, and the best sample is the one least disturbed by cache
    pollution (the timeit convention)."""
    clock = time.process_time
    n = 1
    while True:
        t0 = clock()
        for _ in range(n):
            fn()
        dt = clock() - t0
        if dt >= min_time / 4:
            break
        n *= 4
    n = max(1, int(n * min_time / dt))
    best = 0.0
    for _ in range(samples):
        t0 = clock()
        for _ in range(n):
            fn()
        dt = clock() - t0
        best = max(best, n / dt if dt > 0 else 0.0)
    return best


def typical_command():
    return Command(CommandType.EXECUTE, [Request([Statement(
        "INSERT INTO foo(name, age, score) VALUES(?, ?, ?)", ["fiona", 20, 1.5])],
        request_id=b"0123456789abcdef")])


def big_command():
    return Command(CommandType.EXECUTE, [Request([
        Statement("INSERT INTO foo(id, name, score) VALUES(?, ?, ?)", [i, f"name-{i}", i * 0.5])
        for i in range(100)], transaction=True)])


def append_message():
    payload = PY.encode_command(Command(CommandType.EXECUTE, [Request([Statement(
        "INSERT INTO t(v) VALUES(?)", ["x" * 60])])]))
    return Message(MsgType.APPEND, frm="node1", to="node2", term=7, log_term=7, index=100000,
                   commit=99990, entries=[Entry(7, 100001 + i, EntryType.NORMAL, payload)
                                          for i in range(64)])


def command_as_plain(cmd):
    return {"v": 1, "type": int(cmd.type), "requests": [
        {"statements": [{"sql": s.sql, "params": s.params} for s in r.statements],
         "transaction": r.transaction,
         "request_id": r.request_id.hex() if r.request_id is not None else None}
        for r in cmd.requests], "ops": []}


def message_as_plain(m):
    return {"type": int(m.type), "frm": m.frm, "to": m.to, "term": m.term,
            "log_term": m.log_term, "index": m.index, "commit": m.commit,
            "entries": [{"term": e.term, "index": e.index, "type": int(e.type),
                         "data": e.data.decode("latin-1")} for e in m.entries]}


def bench_workload(name, obj, enc, dec, plain):
    rows = {}
    for impl, mod in (("compiled", C), ("twin", PY)):
        e, d = getattr(mod, enc), getattr(mod, dec)
        buf = e(obj)
        assert d(buf) == obj or d(buf)[1] == obj
        scale = 1 if impl == "compiled" else 0.4   # the twin is slow: shorter samples
        rows[impl] = (rate(lambda: e(obj), TARGET_S * scale), rate(lambda: d(buf), TARGET_S * scale),
                      len(buf))
    pb = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    rows["pickle"] = (rate(lambda: pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)),
                      rate(lambda: pickle.loads(pb)), len(pb))
    if orjson is not None:
        ob = orjson.dumps(plain)
        rows["orjson"] = (rate(lambda: orjson.dumps(plain)), rate(lambda: orjson.loads(ob)), len(ob))
    print(f"\n== {name}")
    print(f"{'impl':<10}{'encode/s':>14}{'decode/s':>14}{'enc+dec/s':>14}{'bytes':>9}")
    out = {}
    for impl, (re_, rd, size) in rows.items():
        both = 1.0 / (1.0 / re_ + 1.0 / rd)
        out[impl] = {"encode_per_s": round(re_), "decode_per_s": round(rd),
                     "encode_decode_per_s": round(both), "bytes": size}
        print(f"{impl:<10}{re_:>14,.0f}{rd:>14,.0f}{both:>14,.0f}{size:>9}")
    c = out["compiled"]["encode_decode_per_s"]
    out["speedup_vs_twin"] = round(c / out["twin"]["encode_decode_per_s"], 1)
    out["speedup_vs_pickle"] = round(c / out["pickle"]["encode_decode_per_s"], 2)
    if "orjson" in out:
        out["speedup_vs_orjson"] = round(c / out["orjson"]["encode_decode_per_s"], 2)
    print(f"compiled enc+dec: {out['speedup_vs_twin']}x twin, {out['speedup_vs_pickle']}x pickle"
          + (f", {out['speedup_vs_orjson']}x orjson" if "orjson" in out else ""))
    return out


def bench_hash():
    print("\n== shard hash (int keys)")
    n_c = 200_000 if QUICK else 1_000_000
    keys_c = list(range(-n_c // 2, n_c // 2))
    keys_py = keys_c[:20_000]
    starts = [i * (2**64 // 16) for i in range(16)]
    it = iter(range(10**12))
    single_c = rate(lambda: CH.keyspace_id(next(it)))
    single_py = rate(lambda: PYH.keyspace_id(next(it)), TARGET_S * 0.4)
    batch_c = rate(lambda: CH.owners_batch(keys_c, starts, "hash"), samples=SAMPLES) * len(keys_c)
    batch_py = rate(lambda: PYH.owners_batch(keys_py, starts, "hash"), TARGET_S * 0.4, 3) * len(keys_py)
    range_c = rate(lambda: CH.owners_batch(keys_c, starts, "range"), samples=SAMPLES) * len(keys_c)
    texts = [f"user:{i}" for i in range(100_000)]
    text_c = rate(lambda: CH.owners_batch(texts, starts, "hash"), samples=SAMPLES) * len(texts)
    for label, v in (("compiled keyspace_id, one call per key", single_c),
                     ("twin keyspace_id, one call per key", single_py),
                     ("compiled owners_batch hash, int keys", batch_c),
                     ("twin owners_batch hash, int keys", batch_py),
                     ("compiled owners_batch range, int keys", range_c),
                     ("compiled owners_batch hash, text keys", text_c)):
        print(f"{label:<44}{v:>16,.0f} keys/s")
    return {"hash_single_keys_per_s": round(single_c), "hash_single_twin_keys_per_s": round(single_py),
            "hash_batch_keys_per_s": round(batch_c), "hash_batch_twin_keys_per_s": round(batch_py),
            "range_batch_keys_per_s": round(range_c), "hash_batch_text_keys_per_s": round(text_c)}


def main():
    print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(f"python {platform.python_version()} on {platform.machine()} {platform.system()}, "
          f"{os.cpu_count()} cpus; CRC32C hardware: {C.CRC_HARDWARE}; "
          f"orjson {getattr(orjson, '__version__', 'missing')}; pickle protocol {pickle.HIGHEST_PROTOCOL}")
    print("rates: calls per CPU-second of this process, best of "
          f"{SAMPLES} samples of ~{TARGET_S}s (the machine is shared)")
    results = {}
    t0 = time.perf_counter()
    tc, bc, am = typical_command(), big_command(), append_message()
    results["entry_1stmt_3params"] = bench_workload(
        "entry payload: 1 statement, 3 parameters", tc, "encode_command", "decode_command",
        command_as_plain(tc))
    results["entry_100stmts"] = bench_workload(
        "entry payload: 100 statements", bc, "encode_command", "decode_command", command_as_plain(bc))
    results["append_entries_64"] = bench_workload(
        "Raft AppendEntries, 64 entries of ~100 bytes (framed, CRC32C)", am, "encode_message",
        "decode_message", message_as_plain(am))
    h = bench_hash()
    work = [results[k] for k in ("entry_1stmt_3params", "entry_100stmts", "append_entries_64")]
    summary = {
        "bench": "codec",
        "encode_decode_speedup_vs_twin": min(w["speedup_vs_twin"] for w in work),
        "encode_decode_speedup_vs_pickle": min(w["speedup_vs_pickle"] for w in work),
        "encode_decode_speedup_vs_orjson": min((w.get("speedup_vs_orjson", 0) for w in work)),
        "append64_encode_decode_per_s": results["append_entries_64"]["compiled"]["encode_decode_per_s"],
        **h,
        "workloads": results,
        "clock": "process CPU time, best of samples",
        "quick": QUICK,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(f"\nheadline (minimum over the three workloads): compiled enc+dec = "
          f"{summary['encode_decode_speedup_vs_twin']}x twin (target >= 10), "
          f"{summary['encode_decode_speedup_vs_pickle']}x pickle (target >= 2); "
          f"batch hash {summary['hash_batch_keys_per_s']:,} keys/s (target >= 5,000,000)")
    print(json.dumps(summary, separators=(",", ":")))


if __name__ == "__main__":
    main()
