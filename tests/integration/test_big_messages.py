"""Messages larger than pkt_buf: they stream through sluice's fixed buffers in every pool mode,
including the ones sluice must look into (a named Parse in transaction mode, whose definition it
keeps), and startup packets up to Postgres's own 10,000-byte limit."""

import pytest

from conftest import APP_PASSWORD
from pgwire import (ServerError, bind_msg, describe_msg, execute_msg, message, parse_msg, raw_login,
                    sync_msg)

KB = 1024


def close_msg(kind, name):
    return message(b"C", kind.encode() + name.encode() + b"\0")


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
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
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


def test_names_longer_than_63_bytes_are_one_statement_as_in_postgres(start_sluice, pg):
    """Postgres keys prepared statements by the first 63 bytes of the name. Two clients sharing
    one server each prepare a name that differs from the other's only past byte 63: each gets its
    own statement, and any name with the same first 63 bytes finds it, wherever it runs."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    stem = "n" * 70
    a, b = raw_login(s.port), raw_login(s.port)
    try:
        for conn, k in ((a, 1), (b, 2)):
            conn.send(parse_msg(stem + str(k), f"SELECT {k}") + sync_msg())
            conn.read_results()
        for _ in range(2):
            for conn, k in ((a, 1), (b, 2)):
                conn.send(bind_msg("", stem + "other") + execute_msg() + sync_msg())
                assert conn.read_results()[0] == [[str(k)]]
    finally:
        a.close()
        b.close()


def test_a_statement_name_longer_than_pkt_buf(start_sluice, pg):
    """Parse and Bind with a 20,000-byte name, longer than any buffer (16 kB at least); Describe
    and Close (at most 10,000 bytes in Postgres) with shorter spellings of the same 63-byte key.
    Two clients share the server: as in Postgres, each has its own statement."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    name = "m" * 20000
    for port, password in ((pg.port, APP_PASSWORD), (s.port, None)):
        a = raw_login(port, password=password)
        b = raw_login(port, password=password)
        try:
            a.send(parse_msg(name, "SELECT 41") + sync_msg())
            a.read_results()
            b.send(parse_msg(name, "SELECT 42") + sync_msg())
            b.read_results()
            for conn, want in ((a, "41"), (b, "42"), (a, "41")):
                conn.send(describe_msg("S", name[:100]) + bind_msg("", name) + execute_msg()
                          + sync_msg())
                assert conn.read_results()[0] == [[want]]
            a.send(close_msg("S", name[:5000]) + sync_msg())
            a.read_results()
            a.send(bind_msg("", name) + execute_msg() + sync_msg())
            with pytest.raises(ServerError) as e:
                a.read_results()
            assert e.value.fields["C"] == "26000", e.value.fields
            b.send(bind_msg("", name) + execute_msg() + sync_msg())
            assert b.read_results()[0] == [["42"]]
        finally:
            a.close()
            b.close()


@pytest.mark.parametrize("how", ["query", "named_parse", "unnamed_parse"])
def test_a_set_inside_a_statement_larger_than_the_buffer_does_not_leak(start_sluice, how):
    """sluice cannot read a statement larger than its buffer whole, so it cannot tell which
    parameters it sets: the server's unreported parameters are then treated as unknown, and the
    next client on that server gets its own values back."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    sql = "SET search_path TO pg_catalog, public -- " + "z" * (40 * KB)
    with s.connect() as b:
        default = b.execute("SHOW search_path").fetchone()[0]
        a = raw_login(s.port)
        try:
            if how == "query":
                a.query(sql)
            else:
                name = "setter" if how == "named_parse" else ""
                a.send(parse_msg(name, sql) + bind_msg("", name) + execute_msg() + sync_msg())
                a.read_results()
            # (a's own SET is lost in transaction mode, as a short one is: session_state_policy)
            assert b.execute("SHOW search_path").fetchone()[0] == default
        finally:
            a.close()


def test_refuse_policy_sees_listen_at_the_start_of_a_query_larger_than_the_buffer(start_sluice, pg):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "session_state_policy": "refuse"})
    a = raw_login(s.port)
    try:
        with pytest.raises(ServerError) as e:
            a.query("LISTEN big_channel; -- " + "q" * (40 * KB))
        assert e.value.fields["C"] == "0A000", e.value.fields
    finally:
        a.close()
    assert pg.query("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN big%'")[0][0] == 0


def test_refuse_policy_on_listen_by_extended_protocol_answers_and_closes(start_sluice):
    """The policy cannot answer a Parse in the server's place: the client gets 0A000 and its
    connection ends, instead of waiting for a ReadyForQuery that never came."""
    s = start_sluice({"pool_mode": "transaction", "session_state_policy": "refuse"})
    a = raw_login(s.port, timeout=20)
    try:
        a.send(parse_msg("", "LISTEN small_channel") + bind_msg("", "") + execute_msg()
               + sync_msg())
        with pytest.raises(ServerError) as e:
            a.read_results()
        assert e.value.fields["C"] == "0A000", e.value.fields
    finally:
        a.close()
