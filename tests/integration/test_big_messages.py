"""Messages larger than pkt_buf: they stream through sluice's fixed buffers in every pool mode,
including the ones sluice must look into (a named Parse in transaction mode, whose definition it
keeps), and startup packets up to Postgres's own 10,000-byte limit."""

from conftest import APP_PASSWORD
from pgwire import bind_msg, execute_msg, parse_msg, raw_login, sync_msg

KB = 1024


def test_startup_options_of_4_kb_are_accepted_as_by_postgres(start_sluice, pg):
    s = start_sluice({"pool_mode": "transaction"})
    value = "v" * (4 * KB)
    for port, password in ((pg.port, APP_PASSWORD), (s.port, None)):
        c = raw_login(port, password=password, options=f"-c x.big={value}")
        try:
            rows, _ = c.query("SHOW x.big")
            assert rows == [[value]]
        finally:
            c.close()


def test_forty_kb_named_parse_in_transaction_mode(start_sluice):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1, "pkt_buf": 8192})
    big = "SELECT length($1::text) + %d AS n -- " + "x" * (40 * KB)
    a, b = raw_login(s.port), raw_login(s.port)
    try:
        for conn, k in ((a, 1), (b, 2)):
            conn.send(parse_msg("big", big % k, [25]) + sync_msg())
            conn.read_results()
        # each client's statement follows it onto the one shared server, re-prepared whole
        for _ in range(3):
            for conn, k in ((a, 1), (b, 2)):
                conn.send(bind_msg("", "big", ["abc"]) + execute_msg() + sync_msg())
                rows, _ = conn.read_results()
                assert rows == [[str(3 + k)]], rows
    finally:
        a.close()
        b.close()


def test_forty_kb_named_parse_through_psycopg(start_sluice):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    sql = "SELECT %s::int + 1 -- " + "y" * (40 * KB)
    with s.connect() as a, s.connect() as b:
        for i in range(4):
            assert a.execute(sql, [i], prepare=True).fetchone()[0] == i + 1
            assert b.execute(sql, [i * 10], prepare=True).fetchone()[0] == i * 10 + 1
