"""Differential testing: Postgres itself is the oracle for what a client behind sluice sees.

A seed generates a scenario: a few clients, each with startup parameters and a script of blocks
(a block is the unit the shrinker removes: one transaction, one pipeline, one COPY...). The same
scenario runs twice, directly against Postgres and through sluice, clients concurrently, and
everything a client can see is compared per client: each message (rows, command tags, SQLSTATEs
and messages, notices, row descriptions, COPY data, ReadyForQuery status), the ParameterStatus
values that changed, and at the end the contents of the table each client owns. Backend pids,
cancel keys and timings are left out; concurrency cannot change a client's own output because
clients touch only their own tables.

Transaction mode gets only scripts inside its documented limits (docs/pool-modes.md): no
temporary tables, WITH HOLD cursors, session SET/set_config of unreported parameters, or SQL
PREPARE outside a transaction block. Resets of parameters the client set at login come every way
sluice follows them (simple Query, Parse/Bind/Execute, pipelined, SET LOCAL name TO DEFAULT,
set_config(name, NULL, ...)); in transaction mode what they return inside the same request (a
statement after the reset, set_config's own result) is not looked at: that is the backend's reset
value, a documented difference. Session mode opens each backend with its client's startup
parameters and matches Postgres there too: its scripts also hold statements after a reset in the
same Query or extended batch, set_config(name, NULL, ...)'s own result, resets inside DO blocks,
SET LOCAL name TO DEFAULT with a session-wide reset in one request, and a custom login parameter
(-c app.x=...).

Each feature can be switched off (FEATURES); a failing scenario is shrunk (clients, then blocks)
and printed as a script, with the command that reruns its seed.

Used by test_differential.py (CI: a fixed few seeds per mode) and scripts/difftest (long runs).
"""

import hashlib
import os
import random
import socket
import struct
import threading
import time

import psycopg

from pgwire import (
    RawConn,
    PeerClosed,
    ProtocolError,
    ServerError,
    bind_msg,
    cancel_request,
    copy_data_msg,
    copy_done_msg,
    describe_msg,
    execute_msg,
    message,
    parse_data_row,
    parse_fields,
    parse_msg,
    startup_packet,
    sync_msg,
    terminate_msg,
)

# feature -> what its blocks exercise
FEATURES = {
    "set": "SET / RESET / RESET ALL / DISCARD ALL / SET LOCAL of reported and unreported parameters",
    "set_config": "select set_config(name, value, is_local)",
    "prepare_sql": "PREPARE / EXECUTE / DEALLOCATE in SQL",
    "extended": "Parse/Bind/Describe/Execute/Close, named and unnamed statements, bind errors",
    "deallocate_ext": "DEALLOCATE and DISCARD sent through the extended protocol",
    "pipeline": "several extended queries before one Sync, several Syncs, Flush and wait",
    "txn_errors": "errors inside transactions, savepoints, multi-statement simple queries",
    "copy": "COPY FROM STDIN / TO STDOUT in a simple Query, bad rows, CopyFail",
    "copy_ext": "COPY through the extended protocol (Parse..Execute, Sync, data, CopyDone, Sync)",
    "temp": "temporary tables (session mode only)",
    "cursor": "DECLARE / FETCH / MOVE / CLOSE, Execute with a row limit, WITH HOLD (session only)",
    "startup": "startup parameters: options=-c ..., application_name, DateStyle",
    "encoding": "odd client_encodings (LATIN1, WIN1252, EUC_JP, SQL_ASCII) and non-ASCII data",
    "bad_startup": "a startup option Postgres refuses (-c no_such_setting=1)",
    "terminate": "Terminate in the same write as the last query, then close",
    "cancel": "CancelRequest for a running pg_sleep",
    "large": "large rows: results, inserts and COPY of a few hundred kB",
    "notice": "notices and warnings (RAISE, DROP ... IF EXISTS)",
    "psycopg": "a client driven by psycopg (libpq): prepared statements with eviction, pipeline",
}
ALL_FEATURES = tuple(FEATURES)
MODES = ("session", "transaction")

READ_TIMEOUT = 20.0
LOGIN_TIMEOUT = 90.0
VALUE_SHOWN = 120  # longer values are compared by length and digest
# ParameterStatus names left out of the comparison: none by default (sluice reports what the
# backend reports, server_version included). DIFFTEST_IGNORE_PARAMS=a,b is a triage knob: it
# hides one known difference so that others show.
PARAMS_NOT_COMPARED = tuple(p for p in os.environ.get("DIFFTEST_IGNORE_PARAMS", "").split(",") if p)

REPORTED = {
    "DateStyle": ["ISO, MDY", "German", "SQL, DMY", "Postgres, YMD"],
    "TimeZone": ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"],
    "IntervalStyle": ["postgres", "iso_8601", "sql_standard"],
    "application_name": ["app_x", "", "named with space", "ünï"],
}
# an ignored parameter is also left out of the scripts (triage: DIFFTEST_IGNORE_PARAMS)
REPORTED = {k: v for k, v in REPORTED.items() if k not in PARAMS_NOT_COMPARED}
UNREPORTED = {
    "search_path": ["evil", "public", "'$user', public", "pg_catalog"],
    "statement_timeout": ["0", "1234", "5s"],
    "work_mem": ["64kB", "4MB"],
    "extra_float_digits": ["0", "3", "-2"],
}
ENCODINGS = {"LATIN1": "latin-1", "WIN1252": "cp1252", "EUC_JP": "euc_jp", "SQL_ASCII": "latin-1",
             "UTF8": "utf-8"}
TEXTS = ["plain", "é à ü", "Ã©", "tab\there", "back\\slash", "日本", "€uro", "quote'd"]

PROBE_SETTINGS = ("search_path", "statement_timeout", "DateStyle", "TimeZone", "IntervalStyle",
                  "application_name", "work_mem", "extra_float_digits", "client_encoding")
PROBE_SQL = ("SELECT " + ", ".join(f"current_setting('{p}') AS \"{p}\"" for p in PROBE_SETTINGS
                                   if p not in PARAMS_NOT_COMPARED)
             + ", now() = statement_timestamp() AS outside_txn,"
             " '2024-03-05 10:00+00'::timestamptz::text, interval '1 day 2 hours'")


# session mode: a custom parameter some clients set at login, probed too
CUSTOM = "app.x"
SESSION_PROBE_SQL = PROBE_SQL + f", current_setting('{CUSTOM}', true) AS custom"


def table_of(ci):
    return f"dt_{ci}"


# ---- scenario ------------------------------------------------------------------------------------


class Block:
    """ops: a list of tuples run in order by a client (see Runner._op_*)."""

    def __init__(self, feature, ops):
        self.feature = feature
        self.ops = ops

    def describe(self):
        return [f"[{self.feature}]"] + ["    " + _op_text(op) for op in self.ops]


def _op_text(op):
    kind = op[0]
    if kind in ("Q", "Qx"):
        return f"{'Query+Terminate' if kind == 'Qx' else 'Query'}: {_short(op[1])}"
    if kind == "P":
        return f"Parse name={op[1]!r}: {_short(op[2])}"
    if kind == "B":
        return f"Bind portal={op[1]!r} stmt={op[2]!r} params={[_short(str(p)) for p in op[3]]}"
    if kind == "E":
        return f"Execute portal={op[1]!r} max_rows={op[2]}"
    if kind == "D":
        return f"Describe {op[1]} {op[2]!r}"
    if kind == "C":
        return f"Close {op[1]} {op[2]!r}"
    if kind == "S":
        return "Sync"
    if kind == "Sx":
        return "Sync+Terminate"
    if kind == "H":
        return "Flush (then read until the last Execute's result)"
    if kind == "copyin":
        how = "extended" if op[2] else "Query"
        end = "CopyFail" if op[4] else "CopyDone"
        return f"COPY IN ({how}): {_short(op[1])}; {len(op[3])} rows {[_short(r) for r in op[3][:3]]}; {end}"
    if kind == "cancel":
        return f"Query {_short(op[1])}; CancelRequest once it runs"
    if kind == "pg":
        return f"psycopg {op[1]}: {_short(repr(op[2:]))}"
    return repr(op)


def _short(s, n=160):
    s = str(s)
    return s if len(s) <= n else s[:n] + f"...({len(s)} chars)"


class Client:
    def __init__(self, ci, startup, blocks, driver="raw"):
        self.ci = ci
        self.startup = startup  # extra startup parameters (options, client_encoding, ...)
        self.blocks = blocks
        self.driver = driver

    @property
    def codec(self):
        return ENCODINGS.get(self.startup.get("client_encoding", "UTF8").upper(), "utf-8")

    def describe(self):
        head = f"client {self.ci} ({self.driver}) startup={self.startup or '{}'}"
        lines = [head]
        for bi, b in enumerate(self.blocks):
            d = b.describe()
            lines.append(f"  block {bi} {d[0]}")
            lines += ["  " + x for x in d[1:]]
        return "\n".join(lines)


class Scenario:
    def __init__(self, seed, mode, features, clients):
        self.seed = seed
        self.mode = mode
        self.features = features
        self.clients = clients

    def describe(self):
        return "\n".join(c.describe() for c in self.clients)

    def replace(self, clients):
        return Scenario(self.seed, self.mode, self.features, clients)


# ---- generator -----------------------------------------------------------------------------------


class Gen:
    """Blocks for one client. Keeps what the client has created so later blocks use it."""

    def __init__(self, rng, mode, ci, codec, startup_names=()):
        self.r = rng
        # parameters the client gave at login
        self.startup_names = {n.lower() for n in startup_names}
        self.mode = mode
        self.ci = ci
        self.t = table_of(ci)
        self.codec = codec
        self.stmts = []  # named protocol statements this client has parsed
        self.n = 0
        self.has_temp = False
        self.has_hold = False
        self.session = mode == "session"

    def uid(self, prefix):
        self.n += 1
        return f"{prefix}{self.ci}_{self.n}"

    def key(self):
        return self.r.randrange(1, 10000)

    def text(self):
        t = self.r.choice(TEXTS)
        try:
            t.encode(self.codec)
        except UnicodeEncodeError:
            t = "plain"
        return t

    def lit(self, s):
        return "'" + s.replace("'", "''") + "'"

    def insert(self):
        return f"INSERT INTO {self.t} VALUES ({self.key()}, {self.lit(self.text())})"

    def probe(self):
        return Block("probe", [("Q", PROBE_SQL)])

    # -- one generator per feature
    def ext_ops(self, sql):
        return [("P", "", sql), ("B", "", "", []), ("E", "", 0), ("S",)]

    def g_session_reset(self):
        """Session mode only (its backend was opened with the client's startup parameters, so
        Postgres's reset values are the login values): what a reset returns in its own request
        (a statement after it in the same Query or batch, set_config's own result), a reset
        inside a DO block, SET LOCAL name TO DEFAULT with a session-wide reset in one request,
        and the custom login parameter."""
        r = self.r
        names = list(REPORTED) + list(UNREPORTED) + [CUSTOM]
        p = r.choice(names)
        sql = r.choice(["RESET ALL", "DISCARD ALL", f"RESET {p}", f"SET {p} TO DEFAULT"])
        choice = r.randrange(6)
        if choice == 0:
            return Block("set", [("Q", f"{sql}; {SESSION_PROBE_SQL}"), ("Q", SESSION_PROBE_SQL)])
        if choice == 1:
            return Block("set", [("P", "", sql), ("B", "", "", []), ("E", "", 0),
                                 ("P", "", SESSION_PROBE_SQL), ("B", "", "", []), ("E", "", 0),
                                 ("S",), ("Q", SESSION_PROBE_SQL)])
        if choice == 2:
            return Block("set", [("Q", f"SELECT set_config('{p}', NULL, false)"),
                                 ("Q", SESSION_PROBE_SQL)])
        if choice == 3:
            body = r.choice([f"RESET {p};", f"PERFORM set_config('{p}', NULL, false);",
                             "RESET ALL;"])
            return Block("set", [("Q", f"DO $$BEGIN {body} END$$"), ("Q", SESSION_PROBE_SQL)])
        q = r.choice(names)
        if choice == 4:
            return Block("set", [("Q", "BEGIN"), ("Q", f"SET LOCAL {p} TO DEFAULT; RESET {q}"),
                                 ("Q", SESSION_PROBE_SQL), ("Q", r.choice(["COMMIT", "ROLLBACK"])),
                                 ("Q", SESSION_PROBE_SQL)])
        v = r.choice(["2", "two", ""])
        return Block("set", [("Q", f"SET {CUSTOM} = '{v}'"), ("Q", f"{sql}; SET {q} TO DEFAULT"),
                             ("Q", SESSION_PROBE_SQL)])

    def g_reset(self):
        """Resets of (login) parameters by the extended protocol, pipelined, SET LOCAL name TO
        DEFAULT and set_config(name, NULL, ...); the probe is always a request of its own."""
        r = self.r
        if self.session and r.random() < 0.4:
            return self.g_session_reset()
        p = r.choice(list(REPORTED) + (list(UNREPORTED) if self.session else []))
        sql = r.choice(["RESET ALL", "DISCARD ALL", f"RESET {p}", f"SET {p} TO DEFAULT",
                        f"SELECT count(*) FROM (SELECT set_config('{p}', NULL, false)) AS s"])
        choice = r.randrange(4)
        if choice == 0:
            return Block("set", self.ext_ops(sql) + [("Q", PROBE_SQL)])
        if choice == 1:
            # pipelined: requests ahead of the reset and behind it, in one write
            ahead = self.ext_ops("SELECT 1") if r.random() < 0.5 else []
            return Block("set", ahead + self.ext_ops(sql) + self.ext_ops(PROBE_SQL)
                         + [("Q", PROBE_SQL)])
        p = r.choice(list(REPORTED) + list(UNREPORTED))
        if choice == 2:
            local = f"SET LOCAL {p} TO DEFAULT"
        else:
            local = f"SELECT count(*) FROM (SELECT set_config('{p}', NULL, true)) AS s"
        first = ("Q", local) if r.random() < 0.5 else None
        ops = [("Q", "BEGIN")] + ([first] if first else self.ext_ops(local))
        return Block("set", ops + [("Q", f"SHOW {p}"), ("Q", r.choice(["COMMIT", "ROLLBACK"])),
                                   ("Q", PROBE_SQL)])

    def g_set(self):
        r = self.r
        choice = r.randrange(9)
        if choice >= 7:
            return self.g_reset()
        if choice == 0 or (choice == 1 and not self.session):
            p = r.choice(list(REPORTED))
            return Block("set", [("Q", f"SET {p} = {self.lit(r.choice(REPORTED[p]))}"),
                                 ("Q", f"SHOW {p}")])
        if choice == 1:
            p = r.choice(list(UNREPORTED))
            v = r.choice(UNREPORTED[p])
            v = v if p == "search_path" else self.lit(v)
            return Block("set", [("Q", f"SET {p} = {v}"), ("Q", f"SHOW {p}")])
        if choice == 2:
            p = r.choice(list(REPORTED) + (list(UNREPORTED) if self.session else []))
            return Block("set", [("Q", f"RESET {p}"), ("Q", PROBE_SQL)])
        if choice == 3:
            sql = r.choice(["RESET ALL", "DISCARD ALL"])
            return Block("set", [("Q", sql), ("Q", PROBE_SQL)])
        if choice == 4:
            p = r.choice(list(UNREPORTED) + list(REPORTED))
            vals = UNREPORTED.get(p) or REPORTED[p]
            v = r.choice(vals)
            v = v if p == "search_path" else self.lit(v)
            end = r.choice(["COMMIT", "ROLLBACK"])
            return Block("set", [("Q", "BEGIN"), ("Q", f"SET LOCAL {p} = {v}"), ("Q", f"SHOW {p}"),
                                 ("Q", end), ("Q", f"SHOW {p}")])
        if choice == 5:
            # SET inside a transaction that rolls back, or in a savepoint that rolls back
            p = r.choice(list(REPORTED))
            v = self.lit(r.choice(REPORTED[p]))
            return Block("set", [("Q", "BEGIN"), ("Q", "SAVEPOINT s"), ("Q", f"SET {p} = {v}"),
                                 ("Q", "ROLLBACK TO s"), ("Q", f"SHOW {p}"),
                                 ("Q", r.choice(["COMMIT", "ROLLBACK"])), ("Q", PROBE_SQL)])
        return self.probe()

    def g_set_config(self):
        r = self.r
        if self.session or r.random() < 0.5:
            p = r.choice(list(REPORTED) + (list(UNREPORTED) if self.session else []))
        else:
            p = r.choice(list(REPORTED))
        v = r.choice((UNREPORTED.get(p) or REPORTED[p]))
        if r.random() < 0.5:
            return Block("set_config", [("Q", "BEGIN"),
                                        ("Q", f"SELECT set_config('{p}', {self.lit(v)}, true)"),
                                        ("Q", f"SHOW {p}"), ("Q", "COMMIT"), ("Q", PROBE_SQL)])
        return Block("set_config", [("Q", f"SELECT set_config('{p}', {self.lit(v)}, false)"),
                                    ("Q", PROBE_SQL)])

    def g_prepare_sql(self):
        name = self.uid("ps")
        listing = ("Q", f"SELECT name, statement FROM pg_prepared_statements WHERE name LIKE"
                        f" 'ps{self.ci}\\_%' ORDER BY 1")
        if not self.session:
            # within one transaction, and deallocated before it ends: a PREPARE is not undone
            # by a rollback, so no error may come between them
            return Block("prepare_sql", [
                ("Q", "BEGIN"),
                ("Q", f"PREPARE {name}(int) AS SELECT $1 + 1, count(*) FROM {self.t}"),
                ("Q", f"EXECUTE {name}({self.key()})"), listing, ("Q", f"DEALLOCATE {name}"),
                ("Q", self.r.choice(["COMMIT", "ROLLBACK"]))])
        return Block("prepare_sql", [
            ("Q", f"PREPARE {name}(int) AS SELECT $1 + 1, count(*) FROM {self.t}"),
            ("Q", f"EXECUTE {name}({self.key()})"), ("Q", f"EXECUTE {name}('x')"), listing,
            ("Q", self.r.choice([f"DEALLOCATE {name}", "DEALLOCATE ALL", f"EXECUTE {name}(1)"])),
            ("Q", f"EXECUTE {name}(2)")])

    def g_extended(self):
        r = self.r
        c = r.randrange(6)
        if c == 0 or not self.stmts:
            name = self.uid("s")
            self.stmts.append(name)
            return Block("extended", [
                ("P", name, f"SELECT $1::int * 2 AS doubled, count(*) AS n FROM {self.t}"),
                ("D", "S", name), ("S",),
                ("B", "", name, [self.key()]), ("E", "", 0), ("S",)])
        if c == 1:
            name = r.choice(self.stmts)
            return Block("extended", [("B", "", name, [self.key()]), ("D", "P", ""), ("E", "", 0),
                                      ("S",)])
        if c == 2:
            # an unnamed statement with an insert, then a bind to a statement that does not exist
            return Block("extended", [
                ("P", "", f"INSERT INTO {self.t} VALUES ($1, $2) RETURNING k"),
                ("B", "", "", [self.key(), self.text()]), ("E", "", 0), ("S",),
                ("B", "", "nope_" + str(self.ci), []), ("E", "", 0), ("S",)])
        if c == 3:
            name = r.choice(self.stmts)
            return Block("extended", [("C", "S", name), ("S",), ("B", "", name, [1]),
                                      ("E", "", 0), ("S",)])
        if c == 4:
            # a named statement parsed twice: 42P05
            name = r.choice(self.stmts)
            return Block("extended", [("P", name, "SELECT 1"), ("S",)])
        return Block("extended", [("P", "", "SELECT $1::text || 'x'", ), ("B", "", "", [None]),
                                  ("D", "P", ""), ("E", "", 0),
                                  ("P", "", "SELEC broken"), ("B", "", "", []), ("E", "", 0),
                                  ("S",)])

    def g_deallocate_ext(self):
        r = self.r
        if self.stmts and r.random() < 0.5:
            name = r.choice(self.stmts)
            sql = f"DEALLOCATE {name}"
        else:
            sql = r.choice(["DEALLOCATE ALL", "DISCARD ALL"] if r.random() < 0.7 else
                           ["DISCARD PLANS", "DEALLOCATE PREPARE ALL"])
            # self.stmts is kept: later blocks bind the deallocated names (26000)
        ops = [("P", "", sql), ("B", "", "", []), ("E", "", 0), ("S",)]
        if self.session:
            # in transaction mode the backend's list holds other clients' statements too
            ops += [("Q", "SELECT count(*) FROM pg_prepared_statements")]
        return Block("deallocate_ext", ops)

    def g_pipeline(self):
        r = self.r
        ops = []
        may_fail = False  # since the last Sync: after an error nothing answers a Flush
        for _ in range(r.randrange(2, 6)):
            c = r.randrange(5)
            if c == 0:
                ops += [("P", "", f"INSERT INTO {self.t} VALUES ($1, $2)"),
                        ("B", "", "", [self.key(), self.text()]), ("E", "", 0)]
            elif c == 1:
                ops += [("P", "", "SELECT 1/$1::int"), ("B", "", "", [r.choice([0, 1])]),
                        ("E", "", 0)]
                may_fail = True
            elif c == 2:
                ops += [("S",)]
                may_fail = False
            elif c == 3:
                ops += [("P", "", f"SELECT k FROM {self.t} ORDER BY k LIMIT 3"), ("B", "", "", []),
                        ("E", "", 0)] + ([] if may_fail else [("H",)])
            else:
                ops += [("P", "", "SELECT generate_series(1, $1::int)"),
                        ("B", "", "", [r.randrange(1, 4)]), ("D", "P", ""), ("E", "", 0)]
        if ops[-1][0] != "S":
            ops.append(("S",))
        return Block("pipeline", ops)

    def g_txn_errors(self):
        r = self.r
        c = r.randrange(4)
        if c == 0:
            return Block("txn_errors", [("Q", "BEGIN"), ("Q", self.insert()), ("Q", "SELECT 1/0"),
                                        ("Q", "SELECT 1"), ("Q", r.choice(["COMMIT", "ROLLBACK"])),
                                        ("Q", f"SELECT count(*) FROM {self.t}")])
        if c == 1:
            return Block("txn_errors", [("Q", "BEGIN"), ("Q", self.insert()), ("Q", "SAVEPOINT a"),
                                        ("Q", self.insert()), ("Q", "SELECT no_such_column"),
                                        ("Q", "ROLLBACK TO SAVEPOINT a"), ("Q", self.insert()),
                                        ("Q", "RELEASE a"), ("Q", "COMMIT")])
        if c == 2:
            return Block("txn_errors", [("Q", f"{self.insert()}; SELECT 1/0; {self.insert()}")])
        return Block("txn_errors", [("Q", f"BEGIN; {self.insert()}; COMMIT; SELECT 1/0; "
                                          f"{self.insert()}"),
                                    ("Q", "COMMIT")])

    def copy_rows(self, n, big=False):
        rows = []
        for _ in range(n):
            v = ("x" * self.r.randrange(100000, 400000)) if big else self.text()
            v = v.replace("\\", "\\\\").replace("\t", "\\t")
            rows.append(f"{self.key()}\t{v}\n")
        return rows

    def g_copy(self):
        r = self.r
        c = r.randrange(4)
        if c == 0:
            return Block("copy", [("copyin", f"COPY {self.t} FROM STDIN", False,
                                   self.copy_rows(r.randrange(1, 6)), False)])
        if c == 1:
            rows = self.copy_rows(2) + ["notanumber\tx\n"]
            return Block("copy", [("copyin", f"COPY {self.t} FROM STDIN", False, rows, False)])
        if c == 2:
            return Block("copy", [("copyin", f"COPY {self.t} FROM STDIN", False,
                                   self.copy_rows(2), True)])
        return Block("copy", [("Q", f"COPY (SELECT * FROM {self.t} ORDER BY k, v) TO STDOUT")])

    def g_copy_ext(self):
        r = self.r
        if r.random() < 0.3:
            return Block("copy_ext", [("P", "", f"COPY (SELECT * FROM {self.t} ORDER BY k, v)"
                                                " TO STDOUT"),
                                      ("B", "", "", []), ("D", "P", ""), ("E", "", 0), ("S",)])
        return Block("copy_ext", [("copyin", f"COPY {self.t} FROM STDIN", True,
                                   self.copy_rows(r.randrange(1, 4)), r.random() < 0.2),
                                  ("Q", f"SELECT count(*) FROM {self.t}")])

    def g_temp(self):
        if not self.session:
            return self.probe()
        tt = f"tmp_{self.ci}"
        if not self.has_temp:
            self.has_temp = True
            return Block("temp", [("Q", f"CREATE TEMP TABLE {tt} (k int, v text)"),
                                  ("Q", f"INSERT INTO {tt} VALUES ({self.key()}, 'temp')")])
        return Block("temp", [("Q", f"SELECT count(*) FROM {tt}"),
                              ("Q", f"INSERT INTO {self.t} SELECT * FROM {tt}")])

    def g_cursor(self):
        r = self.r
        c = r.randrange(3)
        if c == 0:
            return Block("cursor", [("Q", "BEGIN"),
                                    ("Q", "DECLARE cur CURSOR FOR SELECT g FROM generate_series(1, 20) g"),
                                    ("Q", "FETCH 3 FROM cur"), ("Q", "MOVE 5 IN cur"),
                                    ("Q", "FETCH 2 FROM cur"), ("Q", "CLOSE cur"),
                                    ("Q", "FETCH 1 FROM cur"), ("Q", "ROLLBACK")])
        if c == 1:
            # Execute with a row limit: PortalSuspended, then the rest
            return Block("cursor", [("Q", "BEGIN"),
                                    ("P", "", "SELECT g FROM generate_series(1, 7) g"),
                                    ("B", "p1", "", []), ("E", "p1", 3), ("E", "p1", 3),
                                    ("E", "p1", 3), ("S",), ("Q", "COMMIT")])
        if not self.session:
            return self.probe()
        if not self.has_hold:
            self.has_hold = True
            return Block("cursor", [("Q", "DECLARE hold CURSOR WITH HOLD FOR SELECT g FROM"
                                          " generate_series(1, 10) g"), ("Q", "FETCH 2 FROM hold")])
        return Block("cursor", [("Q", "FETCH 2 FROM hold")])

    def g_encoding(self):
        r = self.r
        if r.random() < 0.4:
            enc = r.choice(list(ENCODINGS))
            self.codec = ENCODINGS[enc]
            return Block("encoding", [("Q", f"SET client_encoding = '{enc}'"),
                                      ("Q", "SHOW client_encoding")])
        return Block("encoding", [("Q", self.insert()),
                                  ("Q", f"SELECT v, length(v), octet_length(v) FROM {self.t}"
                                        " ORDER BY k, v")])

    def g_cancel(self):
        return Block("cancel", [("cancel", f"SELECT /*difftest_cancel_{self.uid('c')}*/ pg_sleep(10)")])

    def g_large(self):
        r = self.r
        c = r.randrange(3)
        if c == 0:
            return Block("large", [("Q", f"SELECT repeat('ab', {r.randrange(50000, 300000)}), 1")])
        if c == 1:
            big = "y" * r.randrange(100000, 500000)
            return Block("large", [("P", "", f"INSERT INTO {self.t} VALUES ($1, $2)"),
                                   ("B", "", "", [self.key(), big]), ("E", "", 0), ("S",),
                                   ("Q", f"SELECT k, md5(v) FROM {self.t} ORDER BY k, v")])
        return Block("large", [("copyin", f"COPY {self.t} FROM STDIN", False,
                                self.copy_rows(2, big=True), False)])

    def g_notice(self):
        r = self.r
        return Block("notice", [("Q", r.choice([
            "DO $$ BEGIN RAISE NOTICE 'note %', 42; RAISE WARNING 'careful'; END $$",
            f"DROP TABLE IF EXISTS no_such_table_{self.ci}",
            "DO $$ BEGIN RAISE INFO 'info' USING DETAIL = 'd', HINT = 'h'; END $$"]))])

    def g_psycopg(self):
        r = self.r
        ops = []
        for _ in range(r.randrange(2, 7)):
            c = r.randrange(5)
            if c == 0:
                ops.append(("pg", "execute", f"SELECT %s::int + {r.randrange(5)}", [self.key()]))
            elif c == 1:
                ops.append(("pg", "execute", f"INSERT INTO {self.t} VALUES (%s, %s)",
                            [self.key(), self.text()]))
            elif c == 2:
                ops.append(r.choice([("pg", "execute", "SELECT 1/0", []),
                                     ("pg", "execute", "SELECT %s::int", ["x"])]))
            elif c == 3:
                ops.append(("pg", "pipeline", [f"SELECT {i} + %s::int" for i in range(r.randrange(1, 4))],
                            [self.key()]))
            else:
                ops.append(("pg", "execute", f"SELECT count(*) FROM {self.t}", []))
        return Block("psycopg", ops)


BLOCK_FEATURES = ("set", "set_config", "prepare_sql", "extended", "deallocate_ext", "pipeline",
                  "txn_errors", "copy", "copy_ext", "temp", "cursor", "encoding", "cancel",
                  "large", "notice")
# features only valid in session mode
SESSION_ONLY = {"temp"}


def generate(seed, mode, features=ALL_FEATURES):
    """The scenario of one seed: deterministic for (seed, mode, features)."""
    rng = random.Random(f"{seed}/{mode}/{','.join(sorted(features))}")
    block_feats = [f for f in BLOCK_FEATURES if f in features
                   and not (mode != "session" and f in SESSION_ONLY)]
    clients = []
    n_clients = rng.randrange(2, 5)
    for ci in range(n_clients):
        startup = {}
        startup_names = []
        if "startup" in features and rng.random() < 0.6:
            opts = []
            for p in rng.sample(["search_path", "statement_timeout", "work_mem", "DateStyle",
                                 "extra_float_digits"], rng.randrange(1, 3)):
                startup_names.append(p)
                vals = UNREPORTED.get(p) or REPORTED.get(p)
                v = rng.choice(vals).replace(" ", "\\ ").replace(",", "\\,").replace("'", "")
                opts.append(f"-c {p}={v}")
            if mode == "session" and rng.random() < 0.4:
                opts.append(f"-c {CUSTOM}=" + rng.choice(["1", "one", "x\\ y"]))
            startup["options"] = " ".join(opts)
            if rng.random() < 0.5 and "application_name" not in PARAMS_NOT_COMPARED:
                startup["application_name"] = rng.choice(["", "app one", "difftest"])
        if "encoding" in features and rng.random() < 0.5:
            startup["client_encoding"] = rng.choice(list(ENCODINGS))
        if "bad_startup" in features and rng.random() < 0.25:
            startup["options"] = (startup.get("options", "") + " -c no_such_setting=1").strip()
        driver = "psycopg" if "psycopg" in features and rng.random() < 0.25 else "raw"
        c = Client(ci, startup, [], driver)
        g = Gen(rng, mode, ci, c.codec, startup_names + [k for k in startup if k != "options"])
        if driver == "psycopg":
            c.startup = {}
            c.blocks = [g.g_psycopg() for _ in range(rng.randrange(2, 6))]
        else:
            for _ in range(rng.randrange(3, 10)):
                if not block_feats or rng.random() < 0.12:
                    c.blocks.append(g.probe())
                    continue
                c.blocks.append(getattr(g, "g_" + rng.choice(block_feats))())
            c.blocks.append(g.probe())
            if "terminate" in features and rng.random() < 0.4:
                # the insert takes a moment, so the Terminate arrives while it runs
                slow = f"INSERT INTO {g.t} SELECT {g.key()}, 'terminate' FROM pg_sleep(0.2)"
                if rng.random() < 0.5:
                    c.blocks.append(Block("terminate", [("Qx", rng.choice([g.insert(), slow]))]))
                else:
                    c.blocks.append(Block("terminate", [
                        ("P", "", f"INSERT INTO {g.t} SELECT $1::int, 'ext-terminate'"
                                  " FROM pg_sleep(0.2)"),
                        ("B", "", "", [g.key()]), ("E", "", 0), ("Sx",)]))
        clients.append(c)
    return Scenario(seed, mode, tuple(features), clients)


# ---- running -------------------------------------------------------------------------------------


def _value(b):
    if b is None:
        return None
    if len(b) > VALUE_SHOWN:
        return f"<{len(b)} bytes md5 {hashlib.md5(b).hexdigest()[:12]}>"
    return b.decode("latin-1")


def _fields(payload):
    f = parse_fields(payload)
    return tuple((k, f[k]) for k in ("V", "C", "M", "D", "H", "P") if k in f)


def _data_row(payload):
    return tuple(parse_data_row(payload, value=_value))


class ClientRun:
    """Runs one client's script over a raw socket and records what it sees, block by block."""

    def __init__(self, client, port, password, cancel_watch):
        self.c = client
        self.port = port
        self.password = password
        self.cancel_watch = cancel_watch
        self.out = []  # [(label, [events])]
        self.conn = None
        self.params = {}
        self.pending_params = {}
        self.ev = None
        self.pending = 0

    # -- recording
    def _record(self, mtype, payload):
        ev = self.ev
        if mtype == "S":
            k, v, _ = payload.split(b"\0", 2)
            k, v = k.decode(), v.decode("latin-1")
            if self.params.get(k) != v and k not in PARAMS_NOT_COMPARED:
                self.pending_params[k] = v
            self.params[k] = v
            return
        if mtype == "K":
            self.conn.backend_key = struct.unpack("!ii", payload)
            return
        if mtype in ("Z", "E") and self.pending_params:
            ev.append(("ParameterStatus", tuple(sorted(self.pending_params.items()))))
            self.pending_params = {}
        if mtype == "Z":
            ev.append(("ReadyForQuery", chr(payload[0])))
        elif mtype == "E":
            ev.append(("Error", _fields(payload)))
        elif mtype == "N":
            ev.append(("Notice", _fields(payload)))
        elif mtype == "D":
            ev.append(("DataRow", _data_row(payload)))
        elif mtype == "T":
            (n,) = struct.unpack_from("!H", payload)
            off, cols = 2, []
            for _ in range(n):
                end = payload.index(b"\0", off)
                name = payload[off:end].decode("latin-1")
                off = end + 1
                _tab, _col, typ, _sz, _mod, fmt = struct.unpack_from("!IhIhih", payload, off)
                off += 18
                cols.append((name, typ, fmt))
            ev.append(("RowDescription", tuple(cols)))
        elif mtype == "C":
            ev.append(("CommandComplete", payload.rstrip(b"\0").decode("latin-1")))
        elif mtype == "t":
            (n,) = struct.unpack_from("!H", payload)
            ev.append(("ParameterDescription", struct.unpack_from(f"!{n}I", payload, 2)))
        elif mtype in ("G", "H", "W"):
            ev.append(({"G": "CopyIn", "H": "CopyOut", "W": "CopyBoth"}[mtype], payload.hex()))
        elif mtype == "d":
            ev.append(("CopyData", _value(payload)))
        elif mtype == "A":
            chan, rest, _ = payload[4:].split(b"\0", 2)
            ev.append(("Notification", chan.decode(), rest.decode()))
        else:
            ev.append(({"1": "ParseComplete", "2": "BindComplete", "3": "CloseComplete",
                        "n": "NoData", "s": "PortalSuspended", "I": "EmptyQuery",
                        "c": "CopyDone"}.get(mtype, "Message " + mtype),))

    def _read(self):
        mtype, payload = self.conn.read_message()
        self._record(mtype, payload)
        if mtype == "Z":
            self.pending -= 1
        return mtype

    def _read_until(self, types):
        while True:
            t = self._read()
            if t in types:
                return t

    def _read_pending(self):
        """Read until every ReadyForQuery asked for (Syncs and Queries sent) has come."""
        while self.pending > 0:
            self._read()

    # -- running
    def run(self):
        try:
            self._login()
        except _Stop:
            return self.out
        for bi, block in enumerate(self.c.blocks):
            self.ev = []
            self.out.append((f"block {bi} [{block.feature}]", self.ev))
            try:
                self._block(block)
            except _Stop:
                break
            except socket.timeout:
                self.ev.append(("Timeout", f"no answer within {READ_TIMEOUT:.0f} s"))
                break
            except (PeerClosed, ProtocolError, OSError) as e:
                self.ev.append(("Closed", type(e).__name__))
                break
        if self.conn:
            self.conn.close()
        return self.out

    def _login(self):
        self.ev = []
        self.out.append(("login", self.ev))
        try:
            # a session-mode login waits until another client leaves (pool_size 2)
            self.conn = RawConn(self.port, timeout=LOGIN_TIMEOUT)
            self.conn.startup(password=self.password, **self.c.startup)
            self.conn.settimeout(READ_TIMEOUT)
        except ServerError as e:
            self.ev.append(("LoginError", tuple((k, e.fields[k]) for k in ("V", "C", "M")
                                                if k in e.fields)))
            raise _Stop() from None
        except (PeerClosed, ProtocolError, OSError) as e:
            self.ev.append(("LoginClosed", type(e).__name__))
            raise _Stop() from None
        self.params = dict(self.conn.params)
        self.ev.append(("Params", tuple(sorted((k, v) for k, v in self.params.items()
                                               if k not in PARAMS_NOT_COMPARED))))
        self.ev.append(("ReadyForQuery", self.conn.last_status))

    def _enc(self, s):
        try:
            return s.encode(self.c.codec)
        except UnicodeEncodeError:
            return s.encode("utf-8")

    def _block(self, block):
        out = b""
        self.pending = 0  # ReadyForQuery messages still to come
        execs = 0  # Executes since the last Sync: what a Flush is answered with
        conn = self.conn

        def send(extra=b""):
            nonlocal out
            conn.send(out + extra)
            out = b""

        for op in block.ops:
            kind = op[0]
            if kind == "Q":
                send(message(b"Q", self._enc(op[1]) + b"\0"))
                self.pending += 1
                self._read_pending()
            elif kind == "Qx":
                send(message(b"Q", self._enc(op[1]) + b"\0") + terminate_msg())
                conn.close()
                raise _Stop()
            elif kind == "P":
                out += message(b"P", op[1].encode() + b"\0" + self._enc(op[2]) + b"\0"
                               + struct.pack("!H", 0))
            elif kind == "B":
                out += self._bind(op[1], op[2], op[3])
            elif kind == "E":
                out += execute_msg(op[1], op[2])
                execs += 1
            elif kind == "D":
                out += describe_msg(op[1], op[2])
            elif kind == "C":
                out += message(b"C", op[1].encode() + op[2].encode() + b"\0")
            elif kind == "S":
                out += sync_msg()
                self.pending += 1
                execs = 0
            elif kind == "Sx":
                send(sync_msg() + terminate_msg())
                conn.close()
                raise _Stop()
            elif kind == "H":
                # the answers to every Execute since the last Sync (the generator puts no Flush
                # after one that may fail: an error skips the rest, so nothing would come)
                send(message(b"H"))
                self._read_pending()
                done = 0
                while done < execs:
                    if self._read_until(("C", "E", "s", "I")) == "E":
                        break
                    done += 1
                execs = 0
            elif kind == "copyin":
                send()
                self._read_pending()
                self._copyin(op)
            elif kind == "cancel":
                send(message(b"Q", self._enc(op[1]) + b"\0"))
                self.pending += 1
                self.cancel_watch(op[1], self.port, self.conn.backend_key)
                self._read_pending()
            else:
                raise ValueError(f"unknown op {op!r}")
        send()
        self._read_pending()

    def _bind(self, portal, stmt, params):
        payload = portal.encode() + b"\0" + stmt.encode() + b"\0" + struct.pack("!HH", 0, len(params))
        for p in params:
            if p is None:
                payload += struct.pack("!i", -1)
            else:
                b = self._enc(str(p))
                payload += struct.pack("!i", len(b)) + b
        return message(b"B", payload + struct.pack("!H", 0))

    def _copyin(self, op):
        _, sql, extended, rows, fail = op
        conn = self.conn
        if extended:
            # as libpq's PQexecParams: Parse, Bind, Describe, Execute, Sync. Postgres ignores a
            # Sync during COPY IN (protocol docs, "COPY Operations"), so libpq sends another
            # after CopyDone: one ReadyForQuery in all
            conn.send(message(b"P", b"\0" + self._enc(sql) + b"\0" + struct.pack("!H", 0))
                      + self._bind("", "", []) + describe_msg("P", "") + execute_msg("", 0)
                      + sync_msg())
        else:
            conn.send(message(b"Q", self._enc(sql) + b"\0"))
        self.pending = 1
        if self._read_until(("G", "Z")) == "Z":
            return
        data = b"".join(copy_data_msg(self._enc(r)) for r in rows)
        end = message(b"f", b"client gave up\0") if fail else copy_done_msg()
        conn.send(data + end + (sync_msg() if extended else b""))
        self._read_pending()


class _Stop(Exception):
    pass


class PsycopgRun:
    """A client driven by psycopg (libpq): every statement prepared (prepare_threshold=0) and at
    most two kept, so psycopg evicts with DEALLOCATE through the extended protocol."""

    REPORTED_NAMES = ("DateStyle", "TimeZone", "IntervalStyle", "application_name",
                      "client_encoding", "standard_conforming_strings")

    def __init__(self, client, dsn):
        self.c = client
        self.dsn = dsn
        self.out = []

    def run(self):
        ev = []
        self.out.append(("login", ev))
        try:
            conn = psycopg.connect(self.dsn, autocommit=True, prepare_threshold=0)
        except psycopg.Error as e:
            ev.append(("LoginError", e.sqlstate, str(e).splitlines()[0] if str(e) else ""))
            return self.out
        conn.prepared_max = 2
        conn.add_notice_handler(lambda d: ev_ref[0].append(("Notice", d.sqlstate, d.message_primary)))
        ev_ref = [ev]
        try:
            for bi, block in enumerate(self.c.blocks):
                ev = []
                ev_ref[0] = ev
                self.out.append((f"block {bi} [{block.feature}]", ev))
                for op in block.ops:
                    self._op(conn, op, ev)
                ev.append(("params", tuple(conn.info.parameter_status(n) for n in
                                           self.REPORTED_NAMES if n not in PARAMS_NOT_COMPARED)))
        except psycopg.OperationalError as e:
            ev.append(("Closed", e.sqlstate, str(e).splitlines()[0] if str(e) else ""))
        finally:
            conn.close()
        return self.out

    def _op(self, conn, op, ev):
        _, how, sql, params = op
        if how == "execute":
            try:
                cur = conn.execute(sql, params)
                ev.append(("ok", cur.statusmessage, cur.fetchall() if cur.description else None))
            except psycopg.OperationalError:
                raise
            except psycopg.Error as e:
                ev.append(("error", e.sqlstate, e.diag.message_primary))
        else:
            try:
                with conn.pipeline():
                    curs = [conn.execute(s, params) for s in sql]
                ev.append(("ok", [c.fetchall() for c in curs]))
            except psycopg.OperationalError:
                raise
            except psycopg.Error as e:
                ev.append(("error", e.sqlstate, e.diag.message_primary))


class Target:
    """Where a scenario runs: Postgres directly, or a sluice started for it."""

    def __init__(self, name, pg, start_sluice=None, mode=None):
        self.name = name
        self.pg = pg
        self.start_sluice = start_sluice
        self.mode = mode


def run_scenario(sc, target):
    """Runs every client concurrently; returns {client: [(label, events)]} plus 'final state'."""
    pg = target.pg
    reset_tables(pg, sc)
    sluice = None
    if target.start_sluice:
        sluice = target.start_sluice({"pool_mode": sc.mode, "default_pool_size": 2})
        port, password = sluice.port, None
    else:
        port, password = pg.port, "apppass"
    results = {}

    def cancel_watch(sql, port_, key):
        marker = sql.split("/*")[1].split("*/")[0]
        deadline = time.monotonic() + 10
        with pg.superuser() as c:
            while time.monotonic() < deadline:
                n = c.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
                              " AND query LIKE %s AND pid <> pg_backend_pid()",
                              [f"%{marker}%"]).fetchone()[0]
                if n:
                    break
                time.sleep(0.02)
        time.sleep(0.05)
        if key is None:
            return
        with socket.create_connection(("127.0.0.1", port_), timeout=5) as s:
            s.sendall(cancel_request(*key))
            try:
                s.recv(1)
            except OSError:
                pass

    def one(client):
        if client.driver == "psycopg":
            dsn = (sluice.dsn() if sluice else pg.direct_dsn())
            results[client.ci] = PsycopgRun(client, dsn).run()
        else:
            results[client.ci] = ClientRun(client, port, password, cancel_watch).run()

    threads = [threading.Thread(target=one, args=(c,), daemon=True) for c in sc.clients]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
            if t.is_alive():
                raise AssertionError("a difftest client did not finish within 180 s")
        wait_quiet(pg, pooled=sluice is not None)
        final = final_state(pg, sc)
    finally:
        if sluice:
            sluice.stop()
            pg.clear_backends("app")
    return results, final


def reset_tables(pg, sc):
    with pg.superuser("appdb") as c:
        for cl in sc.clients:
            t = table_of(cl.ci)
            c.execute(f"DROP TABLE IF EXISTS {t}")
            c.execute(f"CREATE TABLE {t} (k int, v text)")
            c.execute(f"ALTER TABLE {t} OWNER TO app")


def wait_quiet(pg, pooled):
    """Until the database has finished what the clients sent (a Terminate right after a query
    lets the backend run it after the client left). Direct: every backend of app has exited;
    through sluice: every backend of app is idle, twice in a row."""
    deadline = time.monotonic() + 20
    quiet = 0
    while time.monotonic() < deadline:
        if pooled:
            sql = ("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'"
                   " AND backend_type = 'client backend' AND state <> 'idle'")
        else:
            sql = ("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'"
                   " AND backend_type = 'client backend'")
        n = pg.query(sql)[0][0]
        quiet = quiet + 1 if n == 0 else 0
        if quiet >= 2:
            return
        time.sleep(0.1)


def final_state(pg, sc):
    out = {}
    with pg.superuser("appdb") as c:
        for cl in sc.clients:
            t = table_of(cl.ci)
            # the stored bytes: a SQL_ASCII client can store bytes that are not UTF-8 (Postgres
            # does not check them), which psycopg could not decode as text
            rows = c.execute(f"SELECT k, textsend(v) FROM {t} ORDER BY 1, 2").fetchall()
            out[cl.ci] = [(k, _value(bytes(v))) for k, v in rows]
    return out


# ---- comparing -----------------------------------------------------------------------------------


def compare(sc, direct, pooled):
    """The first difference of each client: [(kind, text)], kind being the feature of the block
    where it shows ('login', 'final state', or a FEATURES name); [] when none."""
    (dres, dfinal), (pres, pfinal) = direct, pooled
    diffs = []
    for cl in sc.clients:
        d, p = dres.get(cl.ci, []), pres.get(cl.ci, [])
        for i in range(max(len(d), len(p))):
            dl, de = d[i] if i < len(d) else ("(nothing)", [])
            pl, pe = p[i] if i < len(p) else ("(nothing)", [])
            if de != pe or dl != pl:
                kind = dl.split("[")[-1].rstrip("]") if "[" in dl else dl
                diffs.append((kind, _diff_text(cl, dl, de, pe)))
                break
        if dfinal.get(cl.ci) != pfinal.get(cl.ci):
            diffs.append(("final state",
                          f"client {cl.ci}: final contents of {table_of(cl.ci)} differ\n"
                          f"  direct: {dfinal.get(cl.ci)}\n  sluice: {pfinal.get(cl.ci)}"))
    return diffs


def _diff_text(cl, label, de, pe):
    lines = [f"client {cl.ci}, {label}: what the client saw differs"]
    n = max(len(de), len(pe))
    first = next((i for i in range(n) if (de[i:i + 1] != pe[i:i + 1])), n)
    lines.append(f"  first difference at message {first}")
    for name, ev in (("direct", de), ("sluice", pe)):
        lines.append(f"  {name}:")
        for i, e in enumerate(ev):
            mark = ">>" if i == first else "  "
            lines.append(f"   {mark} {_short(e, 2000 if i == first else 300)}")
        if first >= len(ev):
            lines.append("   >> (nothing more)")
    if first < min(len(de), len(pe)) and de[first][0] == pe[first][0] and \
            de[first][0] in ("Params", "ParameterStatus"):
        d, p = set(de[first][1]), set(pe[first][1])
        lines.append(f"  parameters only direct: {sorted(d - p)}; only sluice: {sorted(p - d)}")
    return "\n".join(lines)


def check(sc, pg, start_sluice):
    direct = run_scenario(sc, Target("direct", pg))
    pooled = run_scenario(sc, Target("sluice", pg, start_sluice, sc.mode))
    return compare(sc, direct, pooled)


# ---- shrinking -----------------------------------------------------------------------------------


def shrink(sc, kind, pg, start_sluice, budget_s=60.0):
    """The smallest scenario found within budget_s that still shows a difference of this kind:
    drop clients, then blocks (halves, quarters, ... one), then startup parameters. A block is
    removed whole: it is what obeys the mode's limits. Returns (scenario, its differences of
    this kind), or (sc, None) when nothing smaller was found."""
    deadline = time.monotonic() + budget_s
    best, best_diffs = sc, None

    def differs(candidate):
        nonlocal best_diffs
        diffs = [d for d in check(candidate, pg, start_sluice) if d[0] == kind]
        if diffs:
            best_diffs = diffs
        return bool(diffs)

    def with_client(ci_pos, nc):
        return best.replace(best.clients[:ci_pos] + [nc] + best.clients[ci_pos + 1:])

    i = 0
    while i < len(best.clients) and len(best.clients) > 1 and time.monotonic() < deadline:
        cand = best.replace(best.clients[:i] + best.clients[i + 1:])
        if differs(cand):
            best = cand
        else:
            i += 1
    for ci_pos in range(len(best.clients)):
        chunk = max(1, len(best.clients[ci_pos].blocks) // 2)
        while chunk >= 1 and time.monotonic() < deadline:
            j = 0
            while time.monotonic() < deadline:
                cl = best.clients[ci_pos]
                if j >= len(cl.blocks):
                    break
                cand = with_client(ci_pos, Client(cl.ci, cl.startup,
                                                  cl.blocks[:j] + cl.blocks[j + chunk:], cl.driver))
                if differs(cand):
                    best = cand
                else:
                    j += chunk
            chunk //= 2
        for k in list(best.clients[ci_pos].startup):
            if time.monotonic() >= deadline:
                break
            cl = best.clients[ci_pos]
            st = {kk: vv for kk, vv in cl.startup.items() if kk != k}
            cand = with_client(ci_pos, Client(cl.ci, st, cl.blocks, cl.driver))
            if differs(cand):
                best = cand
    return best, best_diffs


def report(sc, diffs, shrunk):
    """shrunk: [(kind, minimal scenario, its differences or None)]."""
    feats = ",".join(sc.features)
    rerun = (f"scripts/difftest --seed {sc.seed} --mode {sc.mode}"
             + ("" if set(sc.features) == set(ALL_FEATURES) else f" --features {feats}"))
    lines = [f"difftest: seed {sc.seed}, mode {sc.mode}: {len(diffs)} difference(s), in "
             f"{', '.join(sorted({k for k, _ in diffs}))}", f"rerun: {rerun}"]
    for kind, minimal, mdiffs in shrunk:
        lines += ["", f"=== {kind}: minimal script ===" if mdiffs else
                  f"=== {kind}: not shrunk (the whole script) ===", minimal.describe(),
                  f"--- {kind}: differences ---"]
        lines += [t for _, t in (mdiffs or [d for d in diffs if d[0] == kind])]
    return "\n".join(lines)


def scenario_size(sc):
    blocks = sum(len(c.blocks) for c in sc.clients)
    ops = sum(len(b.ops) for c in sc.clients for b in c.blocks)
    return len(sc.clients), blocks, ops


def run_seeds(pg, start_sluice, seeds, modes, features, shrink_s=60.0, deadline=None, log=print):
    """Runs each seed in each mode; returns the reports of the failing ones. shrink_s is the
    time for shrinking, in all: the first failing seeds use it, later ones are printed whole."""
    shrink_until = None
    failures = []
    stats = {"scenarios": 0, "clients": 0, "blocks": 0, "ops": 0}
    for seed in seeds:
        if deadline and time.monotonic() > deadline:
            break
        for mode in modes:
            sc = generate(seed, mode, features)
            n_cl, n_bl, n_ops = scenario_size(sc)
            stats["scenarios"] += 1
            stats["clients"] += n_cl
            stats["blocks"] += n_bl
            stats["ops"] += n_ops
            diffs = check(sc, pg, start_sluice)
            if not diffs:
                continue
            if shrink_until is None:
                shrink_until = time.monotonic() + shrink_s
            kinds = list(dict.fromkeys(k for k, _ in diffs))
            shrunk = []
            for n, kind in enumerate(kinds):
                left = (shrink_until - time.monotonic()) / (len(kinds) - n)
                if left > 1:
                    shrunk.append((kind,) + shrink(sc, kind, pg, start_sluice, left))
                else:
                    shrunk.append((kind, sc, None))
            text = report(sc, diffs, shrunk)
            log(text)
            failures.append(text)
    return failures, stats
