"""SHOW MEM: PgBouncer's columns (name, size, used, free, memtotal), with a row per kind of
object sluice allocates per connection, pool or name, counted over every worker, and a row for
the malloc heap (glibc's mallinfo2), absent in sanitizer builds whose allocator it does not
describe. The counts move as clients and servers come and go, as SHOW CLIENTS/SERVERS do."""

import pytest

from conftest import binary_is_sanitized, sluice_bin, wait_until
from multiworker import worker_of
from test_admin import CONSOLE_MAIN, STATS, console, show

OBJECTS = ["client", "server", "pool", "ledger_key", "ledger_db", "ledger_user"]


def start(start_sluice, **main):
    m = dict(CONSOLE_MAIN)
    m.update(main)
    return start_sluice(m)


def mem(adm):
    return {r["name"]: r for r in show(adm, "MEM")}


def test_show_mem_has_pgbouncers_columns_a_row_per_object_kind_and_the_heap(start_sluice):
    s = start(start_sluice)
    with console(s, user=STATS) as mon:  # a SHOW: stats_users may
        cur = mon.execute("SHOW MEM")
        assert [d.name for d in cur.description] == ["name", "size", "used", "free", "memtotal"]
        rows = {r[0]: dict(zip(["name", "size", "used", "free", "memtotal"], r))
                for r in cur.fetchall()}
        sanitized = binary_is_sanitized(sluice_bin())
        names = list(rows)
        assert names[:len(OBJECTS)] == OBJECTS
        assert names[len(OBJECTS):] == ([] if sanitized else ["heap"]), names
        for name in OBJECTS:
            r = rows[name]
            assert r["size"] > 0 and r["free"] == 0, r
            assert r["memtotal"] == r["size"] * r["used"], r
        assert rows["client"]["used"] >= 1  # this console session
        if not sanitized:
            heap = rows["heap"]
            assert heap["size"] == 1 and heap["used"] > 0 and heap["free"] >= 0, heap
            assert heap["memtotal"] == heap["used"] + heap["free"], heap
            # the heap holds at least the objects counted above
            assert heap["used"] > sum(rows[n]["memtotal"] for n in OBJECTS), rows

        notices = []
        mon.add_notice_handler(lambda d: notices.append(d.message_detail))  # valid in it only
        mon.execute("SHOW HELP")
        assert "SHOW SOCKETS|ACTIVE_SOCKETS|LISTS|MEM" in notices[0], notices


def counts_agree(adm):
    """SHOW MEM's client and server counts equal SHOW CLIENTS' and SERVERS' rows (nothing is
    logging in or closing while the test waits on this)."""
    m = mem(adm)
    clients, servers = show(adm, "CLIENTS"), show(adm, "SERVERS")
    return m["client"]["used"] == len(clients) and m["server"]["used"] == len(servers), m


@pytest.mark.parametrize("workers", [1, 2])
def test_show_mem_counts_clients_servers_and_names_on_every_worker(start_sluice, pg, workers):
    star = pg.db_entry()
    del star["dbname"]  # a client's database name goes through: "postgres" gets a pool
    s = start_sluice(dict(CONSOLE_MAIN, workers=workers, server_idle_timeout=1,
                          autodb_idle_timeout=1),
                     databases={"appdb": pg.db_entry(), "*": star})
    with console(s) as adm:
        wait_until(lambda: counts_agree(adm)[0], 20, interval=0.2, what="counts to agree")
        before = mem(adm)
        conns = [s.connect(dbname="postgres", application_name=f"mem{i}") for i in range(6)]
        try:
            for c in conns:
                c.execute("SELECT 1")
            ours = [r for r in show(adm, "CLIENTS") if r["application_name"].startswith("mem")]
            assert len(ours) == 6
            assert {worker_of(r) for r in ours} == set(range(workers)), ours
            wait_until(lambda: counts_agree(adm)[0], 20, interval=0.2, what="counts to agree")
            during = mem(adm)
            grew = {k: during[k]["used"] - before[k]["used"] for k in OBJECTS}
            # six clients; a pool of postgres/app on each worker they reached; one pool key and
            # one database scope for the process (the user's was there: appdb's)
            assert grew["client"] == 6 and grew["pool"] == workers, (before, during)
            assert grew["ledger_key"] == 1 and grew["ledger_db"] == 1, (before, during)
            assert grew["ledger_user"] == 0, (before, during)
            assert during["server"]["used"] >= workers, during
        finally:
            for c in conns:
                c.close()

        def back_to_before():
            ok, m = counts_agree(adm)
            return ok and all(m[k]["used"] == before[k]["used"] for k in OBJECTS)

        # the clients leave; server_idle_timeout closes the servers, then autodb_idle_timeout
        # frees postgres's pools and ledger entries
        wait_until(back_to_before, 30, interval=0.2, what="the counts to come back")
