"""One client's session state never reaches another client that shares its backend, in
transaction and statement mode, however the application spells the statement that sets it.
Postgres is the oracle: each spelling is run directly first, to show that it does set the value
there, then through sluice with one backend shared by two clients."""

import psycopg
import pytest

TENANT = "myapp.tenant_id"

# Postgres's grammar joins the parts of a parameter's name across spaces and comments
# (var_name: ColId | var_name '.' ColId): each of these sets a placeholder for the session.
SPACED_NAMES = [
    ("SET myapp . tenant_id = '42'", TENANT),
    ("SET myapp. tenant_id = '42'", TENANT),
    ("SET myapp /* tenant */ .tenant_id TO '42'", TENANT),
    ("SET myapp\n.tenant_id = '42'", TENANT),
    ("SET SESSION myapp . tenant_id = '42'", TENANT),
    ("SET myapp.tenant . id = '42'", "myapp.tenant.id"),
    # a first part that is one of SET's own words is a name, not SET LOCAL or SET SESSION
    ("SET local . tenant_id = '42'", "local.tenant_id"),
    ("SET local/**/.tenant_id = '42'", "local.tenant_id"),
    ("SET session . tenant_id = '42'", "session.tenant_id"),
    ("SET SESSION local . tenant_id = '42'", "local.tenant_id"),
]


def setting(conn, name):
    return conn.execute("SELECT current_setting(%s, true)", (name,)).fetchone()[0]


@pytest.mark.parametrize("mode", ["transaction", "statement"])
@pytest.mark.parametrize("statement,name", SPACED_NAMES, ids=[s for s, _ in SPACED_NAMES])
def test_a_set_of_a_name_spaced_apart_never_reaches_the_next_client(start_sluice, pg, mode,
                                                                     statement, name):
    with psycopg.connect(pg.direct_dsn(), autocommit=True) as direct:
        direct.execute(statement)
        assert setting(direct, name) == "42", "Postgres itself does not take this spelling"
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    with s.connect() as a, s.connect() as b:
        pid = a.execute("SELECT pg_backend_pid()").fetchone()[0]
        a.execute(statement)
        assert b.execute("SELECT pg_backend_pid()").fetchone()[0] == pid, "one shared backend"
        # a fresh Postgres session has no such placeholder (None); a backend that saw it and was
        # reset keeps it empty (docs/pool-modes.md): never A's value
        assert setting(b, name) in (None, ""), f"B sees A's {name} after A's {statement!r}"
        # sluice reads the name as Postgres joins it, and A keeps its value as in Postgres
        assert setting(a, name) == "42", f"A lost its {name} after {statement!r}"


# A part quoted is a name sluice does not read (docs/pool-modes.md): A's value is not followed,
# and the backend is reset before another client gets it.
@pytest.mark.parametrize("mode", ["transaction", "statement"])
@pytest.mark.parametrize("statement", ["SET myapp . \"tenant_id\" = '42'",
                                       "SET \"myapp\" . tenant_id = '42'"])
def test_a_set_of_a_name_with_a_quoted_part_never_reaches_the_next_client(start_sluice, pg, mode,
                                                                          statement):
    with psycopg.connect(pg.direct_dsn(), autocommit=True) as direct:
        direct.execute(statement)
        assert setting(direct, TENANT) == "42"
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    with s.connect() as a, s.connect() as b:
        a.execute(statement)
        assert setting(b, TENANT) in (None, ""), f"B sees A's tenant after A's {statement!r}"


@pytest.mark.parametrize("mode", ["transaction", "statement"])
@pytest.mark.parametrize("reset", ["RESET myapp . tenant_id", "RESET myapp. tenant_id"])
def test_a_reset_of_a_name_spaced_apart_is_followed(start_sluice, pg, mode, reset):
    with psycopg.connect(pg.direct_dsn(), autocommit=True) as direct:
        direct.execute(f"SET {TENANT} = '42'")
        direct.execute(reset)
        expected = setting(direct, TENANT)
    assert expected == ""
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    with s.connect() as a, s.connect() as b:
        a.execute(f"SET {TENANT} = '42'")
        assert setting(a, TENANT) == "42"
        a.execute(reset)
        assert setting(b, TENANT) in (None, "")
        assert setting(a, TENANT) == expected, f"A's {reset!r} was not followed"


# What a function sets is not seen (docs/pool-modes.md): the value stays on the backend. The
# documented remedy, server_reset_query_always, keeps it from the next client.
def test_a_set_tenant_function_does_not_reach_the_next_client_with_reset_always(start_sluice, pg):
    with psycopg.connect(pg.direct_dsn(), autocommit=True) as direct:
        direct.execute("CREATE OR REPLACE FUNCTION set_tenant_dec07(t text) RETURNS void"
                       " LANGUAGE plpgsql AS $$BEGIN"
                       " PERFORM set_config('myapp.tenant_id', t, false); END$$")
    try:
        s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                          "server_reset_query_always": 1})
        with s.connect() as a, s.connect() as b:
            a.execute("SELECT set_tenant_dec07('42')")
            assert setting(b, TENANT) in (None, ""), "B sees the tenant A's function set"
    finally:
        with psycopg.connect(pg.direct_dsn(), autocommit=True) as direct:
            direct.execute("DROP FUNCTION IF EXISTS set_tenant_dec07(text)")
