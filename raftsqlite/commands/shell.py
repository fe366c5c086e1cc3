"""``raft-sqlite shell``: an interactive SQL shell for a node, in the manner of rqlite's.

    raft-sqlite shell [-H HOST] [-p PORT] [-s http|https] [-u USER:PASS] [-c CA]
                      [-d CLIENT_CERT -k CLIENT_KEY] [-i] [-a HOST:PORT,...]

Each line of SQL is one statement, as in rqlite's shell (a line left open inside
parentheses, quotes or a trigger body continues on the next); it goes to ``/db/request``,
so reads and writes mix freely; results print as tables. Dot-commands cover the cluster:
``.help`` lists them. With stdin not a terminal it reads a script and exits 1 if any
statement failed. It speaks only HTTP (stdlib ``urllib``), so it works against any node,
rqlite's too for the rqlite-compatible commands.
"""
import argparse
import json
import sqlite3
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from raftsqlite.commands import clientargs

HELP = """\
.backup FILE                 write a SQLite backup of the database to FILE
.boot FILE                   seed a single-node cluster from a SQLite file
.consistency [LEVEL]         show or set the read level: none, weak, linearizable, strong
.dump FILE                   write a SQL dump of the database to FILE
.exit / .quit                leave the shell
.explain SQL                 how the router would run SQL (sharded tables)
.help                        this list
.indexes                     list the indexes
.leader                      show the leader
.nodes                       list the members and whether they are reachable
.ready                       is the node ready (knows a leader, caught up)?
.remove NODEID               remove a member from the cluster
.restore FILE                load a SQLite file or SQL dump (replaces the tables)
.schema [TABLE]              show CREATE statements
.shards                      list shard groups (sharded clusters)
.snapshot                    take a Raft snapshot now
.status                      the node's status document
.tables                      list the tables
.timer on|off                show how long each statement took"""


# Objects the user made: not SQLite's own (sqlite_*), not the node's bookkeeping tables
# (_raftsqlite_*: its dedup and meta tables, db_shapes.INTERNAL_PREFIX). A user's own table
# may well start with "_".
_USER_OBJECT = ("name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
                "AND tbl_name NOT LIKE '\\_raftsqlite\\_%' ESCAPE '\\'")


class ShellError(Exception):
    pass


class Conn:
    """Requests to one node, falling back to ``alternatives`` when it cannot be reached."""

    def __init__(self, hosts, scheme, user, ctx, timeout=30.0):
        self.hosts = hosts
        self.scheme = scheme
        self.ctx = ctx
        self.timeout = timeout
        self.auth = clientargs.auth_header(user)

    def request(self, method, path, body=None, ctype="application/json", raw=False):
        last = None
        for i, host in enumerate(list(self.hosts)):
            req = urllib.request.Request(f"{self.scheme}://{host}{path}", data=body,
                                         method=method)
            if body is not None:
                req.add_header("Content-Type", ctype)
            if self.auth:
                req.add_header("Authorization", self.auth)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout, context=self.ctx) as r:
                    data = r.read()
                    status = r.status
            except urllib.error.HTTPError as e:
                data, status = e.read(), e.code
            except (urllib.error.URLError, OSError) as e:
                last = e
                continue
            if i:
                self.hosts.insert(0, self.hosts.pop(i))   # keep using the one that answered
            if raw and status == 200:
                return data
            try:
                doc = json.loads(data) if data else {}
            except ValueError:
                doc = {"error": data.decode("utf-8", "replace").strip()}
            if status >= 400:
                msg = doc.get("error") if isinstance(doc, dict) else None
                raise ShellError(f"{status}: {msg or data[:300].decode('utf-8', 'replace')}")
            return doc
        raise ShellError(f"cannot reach {', '.join(self.hosts)}: {last}")


def table(columns, rows):
    """rqlite's box: +---+ lines around a header and the rows."""
    cells = [[_cell(v) for v in r] for r in rows]
    widths = [max([len(str(c))] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out = [line, "| " + " | ".join(str(c).ljust(w) for c, w in zip(columns, widths)) + " |", line]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    if rows:
        out.append(line)
    return "\n".join(out)


def complete(text):
    """Is ``text`` a whole statement (or several)? Open parentheses, quotes, comments or a
    trigger body mean the next line continues it (sqlite3's own check sees quotes and
    triggers but not parentheses)."""
    depth, i, n = 0, 0, len(text)
    while i < n:
        c = text[i]
        if c in "'\"`[":
            end = text.find("]" if c == "[" else c, i + 1)
            while end != -1 and c != "[" and text[end + 1:end + 2] == c:
                end = text.find(c, end + 2)          # a doubled quote inside
            if end == -1:
                return False
            i = end + 1
            continue
        if text.startswith("--", i):
            nl = text.find("\n", i)
            i = n if nl == -1 else nl + 1
            continue
        if text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end == -1:
                return False
            i = end + 2
            continue
        depth += (c == "(") - (c == ")")
        i += 1
    return depth <= 0 and sqlite3.complete_statement(text if text.rstrip().endswith(";")
                                                     else text + "\n;")


def _cell(v):
    if v is None:
        return ""
    if isinstance(v, float) and v.is_integer():
        return repr(v)
    return str(v)


class Shell:
    def __init__(self, conn, out, level="weak"):
        self.conn = conn
        self.out = out
        self.level = level
        self.timer = False
        self.errors = 0

    def say(self, text):
        self.out.write(text + "\n")

    # ---- SQL ---------------------------------------------------------------------------
    def sql(self, text):
        q = urllib.parse.urlencode({"level": self.level}) + ("&timings" if self.timer else "")
        t0 = time.perf_counter()
        doc = self.conn.request("POST", f"/db/request?{q}", json.dumps([text]).encode())
        took = time.perf_counter() - t0
        for r in doc.get("results", []):
            if "error" in r:
                self.errors += 1
                self.say(f"ERR! {r['error']}")
            elif "columns" in r:
                self.say(table(r["columns"], r.get("values", [])))
            else:
                n = r.get("rows_affected", 0)
                self.say(f"{n} row{'' if n == 1 else 's'} affected" +
                         (f" ({r.get('time', took):.6f} sec)" if self.timer else ""))
        if self.timer:
            self.say(f"Run Time: {took:.6f} seconds")

    def _query(self, sql):
        doc = self.conn.request("GET", "/db/query?" + urllib.parse.urlencode({"q": sql}))
        r = doc["results"][0]
        if "error" in r:
            raise ShellError(r["error"])
        return r.get("columns", []), r.get("values", [])

    # ---- dot-commands ------------------------------------------------------------------
    def dot(self, line):
        cmd, _, arg = line.partition(" ")
        arg = arg.strip()
        name = "cmd_" + cmd[1:].lower()
        fn = getattr(self, name, None)
        if fn is None:
            raise ShellError(f"unknown command {cmd}; .help lists them")
        return fn(arg)

    def cmd_help(self, arg):
        self.say(HELP)

    def cmd_exit(self, arg):
        return "exit"

    cmd_quit = cmd_exit

    def cmd_tables(self, arg):
        self.say(table(*self._query("SELECT name FROM sqlite_master WHERE type = 'table' AND "
                                    f"{_USER_OBJECT} ORDER BY 1")))

    def cmd_indexes(self, arg):
        self.say(table(*self._query("SELECT name FROM sqlite_master WHERE type = 'index' AND "
                                    f"{_USER_OBJECT} ORDER BY 1")))

    def cmd_schema(self, arg):
        where = f"sql IS NOT NULL AND {_USER_OBJECT}"
        if arg:
            where += " AND tbl_name = " + "'" + arg.replace("'", "''") + "'"
        self.say(table(*self._query(f"SELECT sql FROM sqlite_master WHERE {where} ORDER BY "
                                    "type DESC, name")))

    def cmd_consistency(self, arg):
        if not arg:
            self.say(self.level)
            return
        if arg not in ("none", "weak", "linearizable", "strong"):
            raise ShellError("read level must be none, weak, linearizable or strong")
        self.level = arg

    def cmd_timer(self, arg):
        if arg not in ("on", "off"):
            raise ShellError(".timer on|off")
        self.timer = arg == "on"

    def cmd_nodes(self, arg):
        doc = self.conn.request("GET", "/nodes?ver=2&nonvoters")
        nodes = doc.get("nodes", doc) if isinstance(doc, dict) else doc
        rows = [[n.get("id"), n.get("api_addr"), n.get("addr"), n.get("voter"),
                 n.get("reachable"), n.get("leader")] for n in nodes]
        self.say(table(["id", "api_addr", "addr", "voter", "reachable", "leader"], rows))

    def cmd_leader(self, arg):
        self.say(json.dumps(self.conn.request("GET", "/leader"), indent=2))

    def cmd_status(self, arg):
        self.say(json.dumps(self.conn.request("GET", "/status"), indent=2, sort_keys=True))

    def cmd_shards(self, arg):
        doc = self.conn.request("GET", "/shards")
        rows = [[g.get("group"), g.get("leader"), g.get("health"),
                 ",".join(m.get("node_id", "") for m in g.get("members", []))]
                for g in doc.get("shards", [])]
        self.say(table(["group", "leader", "health", "members"], rows))

    def cmd_explain(self, arg):
        if not arg:
            raise ShellError(".explain SQL")
        doc = self.conn.request("GET", "/table/explain?" + urllib.parse.urlencode({"q": arg}))
        self.say(json.dumps(doc, indent=2))

    def cmd_ready(self, arg):
        try:
            data = self.conn.request("GET", "/readyz", raw=True)
            self.say(data.decode().strip() or "ready")
        except ShellError as e:
            raise ShellError(f"not ready: {e}") from None

    def cmd_remove(self, arg):
        if not arg:
            raise ShellError(".remove NODEID")
        self.conn.request("DELETE", "/remove", json.dumps({"id": arg}).encode())
        self.say(f"removed {arg}")

    def cmd_snapshot(self, arg):
        self.conn.request("POST", "/snapshot", b"")
        self.say("snapshot taken")

    def _save(self, arg, path):
        if not arg:
            raise ShellError("a file name is needed")
        data = self.conn.request("GET", path, raw=True)
        with open(arg, "wb") as f:
            f.write(data)
        self.say(f"wrote {len(data)} bytes to {arg}")

    def cmd_backup(self, arg):
        self._save(arg, "/db/backup")

    def cmd_dump(self, arg):
        self._save(arg, "/db/backup?fmt=sql")

    def _send(self, arg, path):
        if not arg:
            raise ShellError("a file name is needed")
        try:
            with open(arg, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ShellError(f"cannot read {arg}: {e}") from None
        doc = self.conn.request("POST", path, data, ctype="application/octet-stream")
        errs = [r["error"] for r in doc.get("results", []) if "error" in r]
        if errs:
            raise ShellError(errs[0])
        self.say(f"loaded {arg}")

    def cmd_restore(self, arg):
        self._send(arg, "/db/load")

    cmd_load = cmd_restore

    def cmd_boot(self, arg):
        self._send(arg, "/boot")

    # ---- the loop ----------------------------------------------------------------------
    def run(self, lines):
        buf = ""
        while True:
            if hasattr(lines, "more"):
                lines.more = bool(buf)
            line = lines.readline()
            if not line:
                break
            if not buf and not line.strip():
                continue
            if not buf and line.lstrip().startswith("."):
                try:
                    if self.dot(line.strip()) == "exit":
                        break
                except ShellError as e:
                    self.errors += 1
                    self.say(f"ERR! {e}")
                continue
            buf += line
            text = buf.strip()
            if not complete(text):
                continue
            buf = ""
            try:
                self.sql(text)
            except ShellError as e:
                self.errors += 1
                self.say(f"ERR! {e}")
        return self.errors


def _parse(argv):
    ap = argparse.ArgumentParser(prog="raft-sqlite shell", description=__doc__.split("\n\n")[0])
    ap.add_argument("-H", "--host", default="127.0.0.1", help="node address (default 127.0.0.1)")
    ap.add_argument("-p", "--port", type=int, default=4001, help="node HTTP port (default 4001)")
    ap.add_argument("-s", "--scheme", default="http", choices=("http", "https"))
    ap.add_argument("-a", "--alternatives", default="",
                    help="comma-separated host:port pairs to try when the node is unreachable")
    clientargs.add_flags(ap)      # -u -c -d -k -i, as rqlite's shell
    ap.add_argument("--consistency", default="weak",
                    choices=("none", "weak", "linearizable", "strong"))
    return ap.parse_args(argv)


def main(argv, stdin=None, stdout=None):
    args = _parse(argv)
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    hosts = [f"{args.host}:{args.port}"] + [a.strip() for a in args.alternatives.split(",")
                                             if a.strip()]
    try:
        ctx = clientargs.ssl_context(args) if args.scheme == "https" else None
        conn = Conn(hosts, args.scheme, args.user, ctx)
    except clientargs.ClientArgsError as e:
        sys.stderr.write(f"raft-sqlite shell: {e}\n")
        return 2
    sh = Shell(conn, stdout, level=args.consistency)
    interactive = hasattr(stdin, "isatty") and stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
        stdout.write(f"raft-sqlite shell: {hosts[0]} (.help for commands)\n")
        sh.run(_InputLines(f"{hosts[0]}> "))
        stdout.write("bye~\n")
        return 0
    errors = sh.run(stdin)
    return 1 if errors else 0


class _InputLines:
    """``readline()`` over ``input()`` so the terminal gets line editing and a prompt."""

    def __init__(self, prompt):
        self.prompt = prompt
        self.more = False

    def readline(self):
        try:
            line = input("   ...> " if self.more else self.prompt)
        except EOFError:
            return ""
        except KeyboardInterrupt:
            return "\n"
        return line + "\n"
