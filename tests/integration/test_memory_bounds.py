"""What one client can make sluice keep: statement text (per client and in total), the bookkeeping
of messages sent ahead of the server's replies, and the CPU a client's many startup parameters cost
per transaction. Every bound is a clear error naming its key, never a misleading out_of_memory."""

import pytest

from conftest import APP_PASSWORD, binary_is_sanitized, sluice_bin
from pgwire import ServerError, bind_msg, execute_msg, parse_msg, raw_login, sync_msg

KB = 1024


def parse_until_refused(port, count, size, name_prefix="s"):
    """Send `count` named Parses of about `size` bytes each, a Sync after every 50; return the
    ErrorResponse fields that ended it (None if all were accepted)."""
    c = raw_login(port)
    try:
        pad = "x" * size
        for start in range(0, count, 50):
            batch = b"".join(parse_msg(f"{name_prefix}{i}", f"SELECT {i} AS n -- {pad}")
                             for i in range(start, min(start + 50, count)))
            try:
                c.send(batch + sync_msg())
                c.read_results()
            except ServerError as e:
                return e.fields
        return None
    finally:
        c.close()


def test_statement_text_per_client_is_bounded_with_54000_naming_the_key(start_sluice):
    s = start_sluice({"pool_mode": "transaction", "max_prepared_statement_bytes_per_client": 1048576})
    fields = parse_until_refused(s.port, 200, 16 * KB)
    assert fields is not None, "200 Parses of 16 kB (3.2 MB) were all kept under a 1 MB bound"
    assert fields["C"] == "54000", fields
    assert "max_prepared_statement_bytes_per_client" in fields["M"] + fields.get("H", ""), fields
    # below the bound all is as before
    assert parse_until_refused(s.port, 40, 16 * KB) is None


def test_statement_text_of_all_clients_is_bounded_with_53200_naming_the_key(start_sluice):
    s = start_sluice({"pool_mode": "transaction", "max_prepared_statement_bytes": 1048576,
                      "max_prepared_statement_bytes_per_client": 1048576})
    first = raw_login(s.port)
    try:
        pad = "x" * (16 * KB)
        # 40 x 16 kB = 640 kB held by the first client, which stays connected
        first.send(b"".join(parse_msg(f"a{i}", f"SELECT {i} -- {pad}") for i in range(40))
                   + sync_msg())
        first.read_results()
        fields = parse_until_refused(s.port, 40, 16 * KB, name_prefix="b")
        assert fields is not None, "1.3 MB of statement text kept under a 1 MB total bound"
        assert fields["C"] == "53200", fields
        assert "max_prepared_statement_bytes" in fields["M"] + fields.get("H", ""), fields
        # the first client's statements still work
        first.send(bind_msg("", "a3") + execute_msg() + sync_msg())
        rows, _ = first.read_results()
        assert rows == [["3"]], rows
    finally:
        first.close()


@pytest.mark.skipif(binary_is_sanitized(sluice_bin()), reason="RSS bounds: plain build only")
def test_rss_stays_bounded_under_many_large_named_parses(start_sluice):
    s = start_sluice({"pool_mode": "transaction"})
    before = s.rss_kb()
    # 3,000 x 16 kB = 48 MB of statement text: refused at the default bound (16 MB)
    fields = parse_until_refused(s.port, 3000, 16 * KB)
    grown_mb = (s.rss_kb() - before) / 1024
    assert fields is not None and fields["C"] == "54000", fields
    assert grown_mb < 36, f"RSS grew {grown_mb:.0f} MB for one client's statements"


def test_many_parses_before_a_sync_are_not_reported_as_out_of_memory(start_sluice, pg):
    """A Parse that fails, then more named Parses ahead of the Sync than sluice tracks: Postgres
    skips them all and answers the first error. Through sluice: the same, or an error naming the
    real limit (never out_of_memory)."""
    s = start_sluice({"pool_mode": "transaction"})
    n = 10000
    batch = (parse_msg("bad", "SELEC 1") + b"".join(parse_msg(f"q{i}", "SELECT 1") for i in range(n))
             + sync_msg())
    c = raw_login(s.port)
    try:
        c.send(batch)
        with pytest.raises(ServerError) as e:
            c.read_results()
        fields = e.value.fields
        assert fields["C"] in ("42601", "54000"), fields
        if fields["C"] == "54000":
            assert "out of memory" not in fields["M"], fields
            assert "Sync" in fields["M"] + fields.get("H", ""), fields
    finally:
        c.close()


def test_many_startup_parameters_follow_their_client_across_a_shared_server(start_sluice):
    """~780 `-c x.pN=v` startup options (a startup packet near Postgres's 10,000-byte limit), and a
    client without them on the same server. The CPU this costs is bounded in the unit test
    syncing_many_parameters_costs_linear_cpu (lookups were quadratic)."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    options = " ".join(f"-c x.p{i}=v{i}" for i in range(600))
    with s.connect(options=options) as a, s.connect() as b:
        for i in range(0, 600, 199):
            assert a.execute(f"SHOW x.p{i}").fetchone()[0] == f"v{i}"
            assert b.execute(f"SELECT current_setting('x.p{i}', true)").fetchone()[0] in (None, "")


def test_a_long_unnamed_pipeline_after_an_error_is_answered_as_by_postgres(start_sluice, pg):
    """A failed Parse, then 10,000 unnamed Parse/Bind/Execute before the Sync (a batch): Postgres
    skips them and answers the error. sluice waited for replies that never came (a full request
    queue held the Sync back) until the client gave up."""
    s = start_sluice({"pool_mode": "transaction"})
    batch = (parse_msg("", "SELEC 1")
             + b"".join(parse_msg("", "SELECT 1") + bind_msg("", "") + execute_msg()
                        for _ in range(10000))
             + sync_msg())
    for port, password in ((pg.port, APP_PASSWORD), (s.port, None)):
        c = raw_login(port, password=password, timeout=30)
        try:
            c.send(batch)
            with pytest.raises(ServerError) as e:
                c.read_results()
            assert e.value.fields["C"] == "42601", e.value.fields
            assert c.query("SELECT 2")[0] == [["2"]]
        finally:
            c.close()
