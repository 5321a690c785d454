// postgres.js (`postgres`) through sluice with the library's defaults: prepare: true (every
// parameterized query becomes a named statement, Parse+Describe+Flush first, then Bind/Execute;
// later runs only Bind/Execute), max: 10, pipelining of queries on a connection, fetch_types.
import postgres from 'postgres';
import { cfg, check, run, parallel, pidList, checkBackends, sleep, withTimeout } from './lib.mjs';

const T = cfg.table;
const txn = cfg.mode === 'transaction';
const notices = [];
const open = (opts = {}) => postgres(cfg.url, { onnotice: (n) => notices.push(n.message), ...opts });

async function expectError(promise, what) {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  check(false, `${what} did not fail`);
}

const sql = open();

await run([
  {
    name: 'setup',
    fatal: true,
    always: true,
    fn: async () => {
      await sql.unsafe(`CREATE TABLE ${T} (id serial PRIMARY KEY, k text UNIQUE, n int NOT NULL DEFAULT 0, worker int)`);
    },
  },
  {
    // postgres.js logs in with application_name = 'postgres.js' (and client_encoding UTF8):
    // the backend must have them, on the pool's very first connection too (the one the
    // `setup` step made, reused here).
    name: 'startup_parameters',
    extra: true,
    fn: async () => {
      const [r] = await sql`SELECT current_setting('application_name') AS app, current_setting('client_encoding') AS enc, pg_backend_pid() AS pid`;
      const others = open();
      let o;
      try {
        [o] = await others`SELECT current_setting('application_name') AS app`;
      } finally {
        await others.end();
      }
      check(o.app === 'postgres.js', 'a later connection runs without its application_name', o);
      check(r.app === 'postgres.js' && r.enc === 'UTF8', "the pool's first connection runs without its startup parameters", r);
      return r;
    },
  },
  {
    name: 'simple_query',
    fn: async () => {
      const r = await sql`SELECT 1 AS one, current_database() AS db`.simple();
      check(r[0].one === 1 && r[0].db === 'appdb', 'wrong row', r);
      const multi = await sql.unsafe('SELECT 1 AS a; SELECT 2 AS b; SELECT 3 AS c').simple();
      check(multi.length === 3 && multi[2][0].c === 3, 'multi-statement', multi);
      const noParams = await sql`SELECT 'no parameters' AS s`;
      check(noParams[0].s === 'no parameters', 'wrong row', noParams);
      return { row: r[0] };
    },
  },
  {
    name: 'parameterized_query',
    fn: async () => {
      const vals = [];
      for (let i = 0; i < 5; i++) {
        const r = await sql`SELECT ${i}::int * 2 AS v, ${'héllo ✓'}::text AS t, ${sql.json({ a: [1, i] })}::jsonb AS j`;
        check(r[0].t === 'héllo ✓' && r[0].j.a[1] === i, 'wrong row', r);
        vals.push(r[0].v);
      }
      check(JSON.stringify(vals) === '[0,2,4,6,8]', 'wrong values', vals);
      const big = 'x'.repeat(100000);
      const r2 = await sql`SELECT length(${big}::text) AS len`;
      check(r2[0].len === 100000, '100 kB parameter', r2);
      const arr = await sql`SELECT ${sql.array([1, 2, 3])}::int[] AS a`;
      check(JSON.stringify(arr[0].a) === '[1,2,3]', 'array parameter (fetch_types)', arr);
      return { vals };
    },
  },
  {
    name: 'transaction_commit',
    fn: async () => {
      const inside = await sql.begin(async (tx) => {
        await tx`INSERT INTO ${tx(T)} (k, n) VALUES (${'c1'}, ${1})`;
        await tx`INSERT INTO ${tx(T)} (k, n) VALUES (${'c2'}, ${2})`;
        const [r] = await tx`SELECT txid_current_if_assigned() IS NOT NULL AS in_xact`;
        return r.in_xact;
      });
      check(inside === true, 'not inside a transaction');
      const other = open({ max: 1 });
      try {
        const r = await other`SELECT k, n FROM ${other(T)} WHERE k IN ('c1','c2') ORDER BY k`;
        check(r.length === 2 && r[1].n === 2, 'committed rows not visible from another connection', r);
      } finally {
        await other.end();
      }
    },
  },
  {
    name: 'transaction_rollback_on_error',
    fn: async () => {
      const err = await expectError(sql.begin(async (tx) => {
        await tx`INSERT INTO ${tx(T)} (k, n) VALUES (${'r1'}, ${1})`;
        await tx`INSERT INTO ${tx(T)} (k, n) VALUES (${'c1'}, ${9})`;
      }), 'transaction with a duplicate insert');
      check(err.code === '23505', 'duplicate key did not give 23505', err.code);
      const thrown = await expectError(sql.begin(async (tx) => {
        await tx`INSERT INTO ${tx(T)} (k, n) VALUES (${'r2'}, ${1})`;
        throw new Error('application error');
      }), 'transaction that throws');
      check(thrown.message === 'application error', 'wrong error', thrown.message);
      const [r] = await sql`SELECT count(*)::int AS n FROM ${sql(T)} WHERE k IN ('r1', 'r2')`;
      check(r.n === 0, 'row of a rolled-back transaction is visible', r);
      // a savepoint rolled back inside a committed transaction
      await sql.begin(async (tx) => {
        await tx`INSERT INTO ${tx(T)} (k) VALUES (${'sp1'})`;
        const e = await expectError(tx.savepoint((sp) => sp`INSERT INTO ${sp(T)} (k) VALUES (${'c1'})`), 'savepoint duplicate');
        check(e.code === '23505', 'savepoint error', e.code);
      });
      const [s] = await sql`SELECT count(*)::int AS n FROM ${sql(T)} WHERE k = 'sp1'`;
      check(s.n === 1, 'row before the savepoint lost', s);
      return { code: err.code };
    },
  },
  {
    name: 'unique_violation',
    fn: async () => {
      const e1 = await expectError(sql`INSERT INTO ${sql(T)} (k) VALUES (${'c1'})`, 'duplicate insert');
      const e2 = await expectError(sql`INSERT INTO ${sql(T)} (k) VALUES (${'c1'})`, 'duplicate insert (prepared again)');
      const e3 = await expectError(sql.unsafe(`INSERT INTO ${T} (k) VALUES ('c1')`), 'unsafe duplicate insert');
      for (const e of [e1, e2, e3]) check(e.code === '23505' && e.constraint_name === `${T}_k_key`, 'wrong error', { code: e.code, constraint: e.constraint_name, message: e.message });
      const ok = await sql`INSERT INTO ${sql(T)} (k) VALUES (${'u1'}) RETURNING k`;
      check(ok[0].k === 'u1', 'statement unusable after its errors', ok);
      const [r] = await sql`SELECT 41 + ${1}::int AS v`;
      check(r.v === 42, 'pool unusable after errors', r);
      return { codes: [e1.code, e2.code, e3.code], constraint: e1.constraint_name, message: e1.message };
    },
  },
  {
    // Queries pipelined inside sql.begin, and cursors: Bind to a named portal and Execute
    // 100 rows at a time (with Flush, no Sync until the end), concurrently on the pool.
    name: 'pipelined_transaction_and_cursors',
    fn: async () => {
      const [ins, cnt] = await sql.begin((tx) => [
        tx`INSERT INTO ${tx(T)} (k, n) VALUES (${'pipe1'}, ${1}), (${'pipe2'}, ${2}) RETURNING k`,
        tx`SELECT count(*)::int AS n FROM ${tx(T)} WHERE k LIKE 'pipe%'`,
      ]);
      check(ins.length === 2 && cnt[0].n === 2, 'pipelined transaction', [ins, cnt]);
      const db = open();
      let totals;
      try {
        totals = await parallel(5, async (k) => {
          let sum = 0;
          let batches = 0;
          for await (const rows of db`SELECT g, ${k}::int AS k FROM generate_series(1, ${1000}) g`.cursor(100)) {
            batches++;
            for (const r of rows) { check(r.k === k, 'cursor row of another worker', r); sum += r.g; }
          }
          check(batches === 10, 'wrong number of cursor batches', batches);
          return sum;
        });
      } finally {
        await db.end();
      }
      check(totals.every((t) => t === 500500), 'cursor rows lost', totals);
      return { batches_per_cursor: 10 };
    },
  },
  {
    // query.cancel() sends a CancelRequest with the BackendKeyData sluice gave this
    // connection: it must stop this query (57014) and no other one running meanwhile.
    name: 'cancel_a_query',
    fn: async () => {
      const db = open();
      try {
        const t0 = Date.now();
        const q = db`SELECT pg_sleep(${10})`;
        const timer = setTimeout(() => q.cancel(), 300);
        const others = parallel(6, async (k) => {
          for (let i = 0; i < 10; i++) {
            const [r] = await db`SELECT ${k * 100 + i}::int AS v, pg_sleep(0.01)`;
            check(r.v === k * 100 + i, 'wrong value', r);
          }
        });
        const e = await expectError(q, 'cancelled pg_sleep');
        clearTimeout(timer);
        const ms = Date.now() - t0;
        await others;
        check(e.code === '57014', 'expected 57014', { code: e.code, message: e.message });
        check(ms < 9000, `the cancel took ${ms} ms (pg_sleep(10) was not cancelled)`);
        const [r] = await db`SELECT ${7}::int AS v`;
        check(r.v === 7, 'pool unusable after the cancel', r);
        return { code: e.code, ms };
      } finally {
        await db.end();
      }
    },
  },
  {
    // 20 workers over two postgres() pools (max 10 each), sql.begin transactions and pipelined
    // autocommit queries; every connection's statements are prepared once and reused.
    name: 'concurrent_pools_prepared_statements',
    timeoutMs: 40000,
    fn: async () => {
      const pools = txn ? [open(), open()] : [open()];
      const all = new Set();
      try {
        await parallel(20, async (k) => {
          const db = pools[k % pools.length];
          for (let i = 0; i < 8; i++) {
            const pids = await db.begin(async (tx) => {
              const [a] = await tx`SELECT pg_backend_pid() AS pid, ${i}::int AS i, current_setting('application_name') AS app`;
              check(a.app === 'postgres.js', 'application_name lost on this backend', a);
              await tx`INSERT INTO ${tx(T)} (k, n, worker) VALUES (${`w${k}-${i}`}, ${i}, ${k})`;
              const [b] = await tx`SELECT pg_backend_pid() AS pid, ${i + 1}::int AS i`;
              check(a.i === i && b.i === i + 1, 'wrong values', [a, b]);
              check(a.pid === b.pid, 'a transaction moved between backends', [a, b]);
              return [a.pid];
            });
            pids.forEach((p) => all.add(p));
            // autocommit queries, pipelined on the pool's connections
            const rs = await Promise.all([0, 1, 2].map((j) => db`SELECT pg_backend_pid() AS pid, ${k * 100 + j}::int AS v`));
            rs.forEach(([r], j) => { check(r.v === k * 100 + j, 'pipelined result mixed up', rs); all.add(r.pid); });
          }
        });
        const [n] = await sql`SELECT count(*)::int AS n FROM ${sql(T)} WHERE worker IS NOT NULL`;
        check(n.n === 160, 'committed rows missing', n);
      } finally {
        await Promise.all(pools.map((p) => p.end()));
      }
      const pids = checkBackends(all, 'prepared statements');
      if (txn) check(pids.length > 1, 'all transactions ran on one backend: the test proves nothing', { pids });
      return { pids };
    },
  },
  {
    // Transaction mode: 20 reserved connections (2 pools x 10) each prepare their statements
    // once; later transactions land on other backends, where sluice must prepare them first.
    // Session mode: 10 reserved connections, each of which must keep one backend throughout.
    name: 'reserved_connections_prepared_statements',
    timeoutMs: 40000,
    fn: async () => {
      const pools = txn ? [open(), open()] : [open()];
      const nconns = pools.length * 10;
      const all = new Set();
      let moved = 0;
      try {
        const conns = await Promise.all(Array.from({ length: nconns }, (_, k) => pools[k % pools.length].reserve()));
        const seen = await parallel(nconns, async (k) => {
          const r = conns[k];
          const mine = new Set();
          try {
            for (let i = 0; i < 10; i++) {
              await r`BEGIN`;
              const [a] = await r`SELECT pg_backend_pid() AS pid, ${i}::int AS i`;
              await r`UPDATE ${r(T)} SET n = n + ${1} WHERE k = ${`w${k}-0`}`;
              const [b] = await r`SELECT pg_backend_pid() AS pid, ${i}::int AS i`;
              await r`COMMIT`;
              check(a.pid === b.pid && a.i === i, 'a transaction moved between backends', [a, b]);
              mine.add(a.pid);
              const [c] = await r`SELECT pg_backend_pid() AS pid, ${-i}::int AS i`;
              check(c.i === -i, 'wrong value', c);
              mine.add(c.pid);
              if (i % 3 === k % 3) await sleep(1 + (k % 4));
            }
          } finally {
            r.release();
          }
          return mine;
        });
        for (const s of seen) {
          s.forEach((p) => all.add(p));
          if (s.size > 1) moved++;
        }
        const [n] = await sql`SELECT sum(n)::int AS n FROM ${sql(T)} WHERE k LIKE 'w%-0'`;
        check(n.n === nconns * 10, 'updates lost', n);
      } finally {
        await Promise.all(pools.map((p) => p.end()));
      }
      const pids = checkBackends(all, 'reserved connections');
      if (txn) {
        check(pids.length > 1, 'all transactions ran on one backend: the test proves nothing', { pids });
        check(moved > 0, 'no client connection ran its prepared statements on more than one backend', { pids });
      } else {
        check(moved === 0, `${moved} session-mode connections changed backends`, { pids });
        check(pids.length === nconns, 'session-mode connections shared a backend', { pids });
      }
      return { pids, client_connections_that_moved: moved, client_connections: nconns };
    },
  },
  {
    // Session mode: 20 workers keep opening a postgres() instance, using prepared statements
    // and a transaction, and closing it, over sluice's few servers.
    name: 'session_churn_prepared_statements',
    when: !txn,
    timeoutMs: 40000,
    fn: async () => {
      const all = new Set();
      await parallel(20, async (k) => {
        for (let cycle = 0; cycle < 3; cycle++) {
          const db = open();
          try {
            const [a] = await db`SELECT pg_backend_pid() AS pid, ${k}::int AS i`;
            await db.begin((tx) => tx`INSERT INTO ${tx(T)} (k, n, worker) VALUES (${`churn${k}-${cycle}`}, ${cycle}, ${k})`);
            const [b] = await db`SELECT pg_backend_pid() AS pid, ${k}::int AS i`;
            check(a.pid === b.pid, 'a session-mode connection changed backends', [a, b]);
            all.add(a.pid);
          } finally {
            await db.end();
          }
        }
      });
      const [n] = await sql`SELECT count(*)::int AS n FROM ${sql(T)} WHERE k LIKE 'churn%'`;
      check(n.n === 60, 'committed rows missing', n);
      return { pids: checkBackends(all, 'session churn') };
    },
  },
  {
    name: 'listen_notify',
    when: !txn,
    fn: async () => {
      const got = [];
      let wake = () => {};
      const { unlisten } = await sql.listen('sluice_chan', (payload) => { got.push(payload); wake(); });
      const wait = (n) => withTimeout(new Promise((res) => { wake = () => { if (got.length >= n) res(); }; wake(); }), 10000, `notification ${n}`);
      await sql.notify('sluice_chan', 'hello');
      await wait(1);
      await sql.begin(async (tx) => { await tx`SELECT pg_notify('sluice_chan', ${'committed'})`; });
      await wait(2);
      await unlisten();
      check(got.join(',') === 'hello,committed', 'wrong notifications', got);
      return { got };
    },
  },
  {
    // MANY_CONNS connections (prepare: true, the default) each run MANY_N different
    // parameterized queries, as an application with many query shapes does (here
    // `IN ${sql(ids)}` with lists of every length): postgres.js keeps every one prepared for the
    // connection's life and never closes them. Then each runs its first ones again (Bind only,
    // under the cached names), which in transaction mode the servers may have evicted.
    name: 'many_distinct_statements',
    extra: true,
    timeoutMs: 45000,
    fn: async () => {
      const N = Number(process.env.MANY_N || '300');
      const conns = Number(process.env.MANY_CONNS || '1');
      await sql`INSERT INTO ${sql(T)} (k) SELECT 'm' || g FROM generate_series(1, ${N}) g`;
      const [{ first }] = await sql`SELECT min(id)::int AS first FROM ${sql(T)} WHERE k LIKE 'm%'`;
      const ids = (n) => Array.from({ length: n }, (_, j) => first + j);
      const all = new Set();
      const reserved = await Promise.all(Array.from({ length: conns }, () => sql.reserve()));
      try {
        await parallel(conns, async (c) => {
          const r = reserved[c];
          const q = async (n) => {
            const [row] = await r`SELECT count(*)::int AS ${r('n' + c)}, pg_backend_pid() AS pid FROM ${r(T)} WHERE id IN ${r(ids(n))}`;
            check(row['n' + c] === n, `connection ${c}, query ${n}: wrong count`, row);
            all.add(row.pid);
          };
          for (let n = 1; n <= N; n++) await q(n);
          for (let n = 1; n <= 20; n++) await q(n);
        });
      } finally {
        reserved.forEach((r) => r.release());
      }
      return { statements_per_connection: N, connections: conns, pids: checkBackends(all, 'many statements') };
    },
  },
  {
    name: 'teardown',
    always: true,
    fn: async () => {
      await sql.end({ timeout: 2 });
      return { notices };
    },
  },
]);
