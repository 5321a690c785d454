// node-postgres (`pg`) through sluice with the library's defaults: pg.Pool (max 10), named
// queries {name, text, values} (prepared once per client connection, then only Bind/Execute).
import pg from 'pg';
import { cfg, check, run, parallel, pidList, checkBackends, sleep, withTimeout } from './lib.mjs';

const T = cfg.table;
const txn = cfg.mode === 'transaction';
const newPool = () => new pg.Pool({ connectionString: cfg.url });

async function withClient(fn) {
  const c = new pg.Client({ connectionString: cfg.url });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

async function expectError(promise, what) {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  check(false, `${what} did not fail`);
}

const pool = newPool();

await run([
  {
    name: 'setup',
    fatal: true,
    always: true,
    fn: async () => {
      await pool.query(`CREATE TABLE ${T} (id serial PRIMARY KEY, k text UNIQUE, n int NOT NULL DEFAULT 0, worker int)`);
    },
  },
  {
    name: 'simple_query',
    fn: () => withClient(async (c) => {
      const r = await c.query('SELECT 1 AS one, current_database() AS db');
      check(r.rows[0].one === 1 && r.rows[0].db === 'appdb', 'wrong row', r.rows);
      // several statements in one simple Query message
      const multi = await c.query('SELECT 1 AS a; SELECT 2 AS b; SELECT 3 AS c');
      check(Array.isArray(multi) && multi.length === 3 && multi[2].rows[0].c === 3, 'multi-statement', multi.length);
      return { row: r.rows[0] };
    }),
  },
  {
    name: 'parameterized_query',
    fn: async () => {
      const r = await pool.query('SELECT $1::int + $2::int AS sum, $3::text AS t, $4::jsonb AS j',
        [2, 3, 'héllo ✓', JSON.stringify({ a: [1, 2] })]);
      const row = r.rows[0];
      check(row.sum === 5 && row.t === 'héllo ✓' && row.j.a[1] === 2, 'wrong row', row);
      const big = 'x'.repeat(100000);
      const r2 = await pool.query('SELECT length($1::text) AS len, md5($1::text) = md5(repeat(\'x\', 100000)) AS same', [big]);
      check(r2.rows[0].len === 100000 && r2.rows[0].same === true, '100 kB parameter', r2.rows[0]);
      return { row };
    },
  },
  {
    name: 'named_query',
    fn: async () => {
      const vals = [];
      for (let i = 0; i < 5; i++) {
        const r = await pool.query({ name: 'q1', text: 'SELECT $1::int * 2 AS v', values: [i] });
        vals.push(r.rows[0].v);
      }
      check(JSON.stringify(vals) === '[0,2,4,6,8]', 'wrong values', vals);
      return { vals };
    },
  },
  {
    name: 'transaction_commit',
    fn: async () => {
      const c = await pool.connect();
      try {
        await c.query('BEGIN');
        await c.query({ name: 'ins', text: `INSERT INTO ${T} (k, n) VALUES ($1, $2)`, values: ['c1', 1] });
        await c.query({ name: 'ins', text: `INSERT INTO ${T} (k, n) VALUES ($1, $2)`, values: ['c2', 2] });
        const inside = await c.query('SELECT txid_current_if_assigned() IS NOT NULL AS in_xact');
        await c.query('COMMIT');
        check(inside.rows[0].in_xact === true, 'not inside a transaction');
      } finally {
        c.release();
      }
      const r = await withClient((o) => o.query(`SELECT k, n FROM ${T} WHERE k IN ('c1','c2') ORDER BY k`));
      check(r.rows.length === 2 && r.rows[1].n === 2, 'committed rows not visible from another connection', r.rows);
    },
  },
  {
    name: 'transaction_rollback_on_error',
    fn: async () => {
      const c = await pool.connect();
      let err;
      try {
        await c.query('BEGIN');
        await c.query({ name: 'ins', text: `INSERT INTO ${T} (k, n) VALUES ($1, $2)`, values: ['r1', 1] });
        err = await expectError(c.query({ name: 'ins', text: `INSERT INTO ${T} (k, n) VALUES ($1, $2)`, values: ['c1', 9] }), 'duplicate insert');
        const aborted = await expectError(c.query('SELECT 1'), 'query in an aborted transaction');
        check(aborted.code === '25P02', 'expected 25P02 in the aborted transaction', aborted.code);
        await c.query('ROLLBACK');
        const after = await c.query({ name: 'q1', text: 'SELECT $1::int * 2 AS v', values: [21] });
        check(after.rows[0].v === 42, 'connection unusable after ROLLBACK', after.rows);
      } finally {
        c.release();
      }
      check(err.code === '23505', 'duplicate key did not give 23505', err.code);
      const r = await pool.query(`SELECT count(*)::int AS n FROM ${T} WHERE k = 'r1'`);
      check(r.rows[0].n === 0, 'row of the rolled-back transaction is visible', r.rows);
      return { code: err.code };
    },
  },
  {
    name: 'unique_violation',
    fn: () => withClient(async (c) => {
      const e1 = await expectError(c.query(`INSERT INTO ${T} (k) VALUES ('c1')`), 'simple duplicate insert');
      const e2 = await expectError(c.query({ name: 'dup', text: `INSERT INTO ${T} (k) VALUES ($1)`, values: ['c1'] }), 'named duplicate insert');
      const e3 = await expectError(c.query({ name: 'dup', text: `INSERT INTO ${T} (k) VALUES ($1)`, values: ['c2'] }), 'named duplicate insert (reused name)');
      for (const e of [e1, e2, e3]) check(e.code === '23505' && e.constraint === `${T}_k_key`, 'wrong error', { code: e.code, constraint: e.constraint, message: e.message });
      const ok = await c.query({ name: 'dup', text: `INSERT INTO ${T} (k) VALUES ($1)`, values: ['u1'] });
      check(ok.rowCount === 1, 'named statement unusable after its errors', ok.rowCount);
      const r = await c.query('SELECT 41 + 1 AS v');
      check(r.rows[0].v === 42, 'connection unusable after errors', r.rows);
      return { codes: [e1.code, e2.code, e3.code], constraint: e1.constraint, message: e1.message };
    }),
  },
  {
    name: 'named_statement_error_then_reuse',
    fn: () => withClient(async (c) => {
      const q = (v) => c.query({ name: 'qdiv', text: 'SELECT 10 / $1::int AS v, pg_backend_pid() AS pid', values: [v] });
      const codes = [];
      const pids = new Set();
      for (let i = 0; i < 6; i++) {
        const e = await expectError(q(0), 'division by zero');
        codes.push(e.code);
        const r = await q(2);
        check(r.rows[0].v === 5, 'wrong result after error', r.rows);
        pids.add(r.rows[0].pid);
        await sleep(5);
      }
      check(codes.every((x) => x === '22012'), 'expected 22012', codes);
      return { codes, pids: pidList(pids) };
    }),
  },
  {
    // Transaction mode: 2 pools x 10 connections (20 client connections) over sluice's 2
    // servers; every client connection keeps its named statements and runs many transactions.
    // Its statements were Parsed once on the first backend it got; later transactions land on
    // other backends, where sluice must prepare them first.
    // Session mode: one pool's 10 connections, each of which must keep one backend throughout.
    name: 'concurrent_pools_named_statements',
    timeoutMs: 40000,
    fn: async () => {
      const pools = txn ? [newPool(), newPool()] : [newPool()];
      const nclients = pools.length * 10;
      const rounds = 12;
      const all = new Set();
      let moved = 0;
      try {
        // take all 10 connections of each pool, so they are all connected at once
        const clients = await Promise.all(Array.from({ length: nclients }, (_, k) => pools[k % pools.length].connect()));
        if (txn) {
          // Both of sluice's backends logged in before the rounds: the first client holds one
          // in a transaction, so the second's BEGIN needs the other. On a loaded machine the
          // second backend once logged in after every round had run on the first, and the
          // test proved nothing.
          await clients[0].query('BEGIN');
          await clients[0].query('SELECT 1');
          await clients[1].query('BEGIN');
          await clients[1].query('SELECT 1');
          await clients[0].query('COMMIT');
          await clients[1].query('COMMIT');
        }
        const perClient = await parallel(nclients, async (k) => {
          const c = clients[k];
          const seen = new Set();
          try {
            for (let i = 0; i < rounds; i++) {
              await c.query('BEGIN');
              const a = await c.query({ name: 'q_pid', text: 'SELECT pg_backend_pid() AS pid, $1::int AS i', values: [i] });
              await c.query({ name: 'q_ins', text: `INSERT INTO ${T} (k, n, worker) VALUES ($1, $2, $3)`, values: [`w${k}-${i}`, i, k] });
              const b = await c.query({ name: 'q_pid', text: 'SELECT pg_backend_pid() AS pid, $1::int AS i', values: [i + 1] });
              await c.query('COMMIT');
              check(a.rows[0].i === i && b.rows[0].i === i + 1, 'wrong values', [a.rows, b.rows]);
              check(a.rows[0].pid === b.rows[0].pid, 'a transaction moved between backends', [a.rows, b.rows]);
              seen.add(a.rows[0].pid);
              // outside a transaction block: each statement is a transaction of its own
              const s = await c.query({ name: 'q_pid', text: 'SELECT pg_backend_pid() AS pid, $1::int AS i', values: [-i] });
              check(s.rows[0].i === -i, 'wrong value', s.rows);
              seen.add(s.rows[0].pid);
              if (i % 3 === k % 3) await sleep(1 + (k % 5));
            }
          } finally {
            c.release();
          }
          return seen;
        });
        for (const s of perClient) {
          for (const p of s) all.add(p);
          if (s.size > 1) moved++;
        }
        const n = await pools[0].query(`SELECT count(*)::int AS n FROM ${T} WHERE worker IS NOT NULL`);
        check(n.rows[0].n === nclients * rounds, 'committed rows missing', n.rows);
      } finally {
        await Promise.all(pools.map((p) => p.end()));
      }
      const pids = checkBackends(all, 'named statements');
      if (txn) {
        check(pids.length > 1, 'all transactions ran on one backend: the test proves nothing', { pids });
        check(moved > 0, 'no client connection ran its named statements on more than one backend', { pids });
      } else {
        check(moved === 0, `${moved} session-mode connections changed backends`, { pids });
        check(pids.length === nclients, 'session-mode connections shared a backend', { pids });
      }
      return { pids, client_connections_that_moved: moved, client_connections: nclients };
    },
  },
  {
    // Transaction mode: the same statement name with a different text in every client
    // connection; sluice must never run one client's 'qsame' for another.
    name: 'same_name_different_text_per_connection',
    when: txn,
    fn: async () => {
      const all = new Set();
      const pools = [newPool(), newPool()];
      try {
        const clients = await Promise.all(Array.from({ length: 20 }, (_, k) => pools[k % 2].connect()));
        await parallel(20, async (k) => {
          const c = clients[k];
          try {
            for (let i = 0; i < 8; i++) {
              const r = await c.query({ name: 'qsame', text: `SELECT ${k}::int AS k, $1::int AS i, pg_backend_pid() AS pid`, values: [i] });
              check(r.rows[0].k === k && r.rows[0].i === i, `connection ${k} got another connection's statement`, r.rows);
              all.add(r.rows[0].pid);
            }
          } finally {
            c.release();
          }
        });
      } finally {
        await Promise.all(pools.map((p) => p.end()));
      }
      return { pids: checkBackends(all, 'qsame') };
    },
  },
  {
    // Named statements whose table is dropped and created again while 20 client connections
    // (2 pools x 10; session mode: 10) hold them. Where sluice must prepare a statement on
    // another backend, that Parse now fails (42P01): the client must get that error for its
    // Bind, stay usable, and once the table is back its statement must work on every backend.
    name: 'named_statement_on_a_dropped_and_recreated_table',
    timeoutMs: 40000,
    fn: async () => {
      const D = `${T}_d`;
      const pools = txn ? [newPool(), newPool()] : [newPool()];
      const nclients = pools.length * 10;
      const all = new Set();
      const codes = new Set();
      try {
        await pool.query(`CREATE TABLE ${D} (x int)`);
        const clients = await Promise.all(Array.from({ length: nclients }, (_, k) => pools[k % pools.length].connect()));
        const qd = (c) => c.query({ name: 'qd', text: `SELECT count(*)::int AS n, pg_backend_pid() AS pid FROM ${D}` });
        const phase = (fn) => parallel(nclients, async (k) => {
          for (let i = 0; i < 4; i++) {
            await fn(clients[k], k, i);
            if (i % 2 === k % 2) await sleep(1 + (k % 3));
          }
        });
        try {
          await phase(async (c) => { const r = await qd(c); check(r.rows[0].n === 0, 'wrong count', r.rows); all.add(r.rows[0].pid); });
          await pool.query(`DROP TABLE ${D}`);
          await phase(async (c, k, i) => {
            const e = await expectError(qd(c), 'query on a dropped table');
            codes.add(e.code);
            const r = await c.query({ name: 'q_pid', text: 'SELECT pg_backend_pid() AS pid, $1::int AS i', values: [i] });
            check(r.rows[0].i === i, 'connection unusable after the error', r.rows);
            all.add(r.rows[0].pid);
          });
          await pool.query(`CREATE TABLE ${D} (x int)`);
          await pool.query(`INSERT INTO ${D} VALUES (1), (2)`);
          await phase(async (c) => { const r = await qd(c); check(r.rows[0].n === 2, 'wrong count after the table came back', r.rows); all.add(r.rows[0].pid); });
        } finally {
          clients.forEach((c) => c.release());
        }
      } finally {
        await Promise.all(pools.map((p) => p.end()));
        await pool.query(`DROP TABLE IF EXISTS ${D}`);
      }
      check(codes.size === 1 && codes.has('42P01'), 'expected 42P01 for the dropped table', [...codes]);
      const pids = checkBackends(all, 'dropped table');
      if (txn) check(pids.length > 1, 'all queries ran on one backend: the test proves nothing', { pids });
      return { pids, codes: [...codes] };
    },
  },
  {
    // Session mode: 20 workers keep connecting, using named statements and transactions, and
    // disconnecting, over sluice's few servers. A connection keeps its backend for its whole
    // life; a backend handed to the next client was reset (DISCARD ALL), so that client's Parse
    // of the same statement names does not fail with 42P05.
    name: 'session_churn_named_statements',
    when: !txn,
    timeoutMs: 40000,
    fn: async () => {
      const all = new Set();
      let conns = 0;
      await parallel(20, async (k) => {
        for (let cycle = 0; cycle < 3; cycle++) {
          await withClient(async (c) => {
            conns++;
            const a = await c.query({ name: 'q_pid', text: 'SELECT pg_backend_pid() AS pid, $1::int AS i', values: [k] });
            await c.query('BEGIN');
            await c.query({ name: 'q_ins', text: `INSERT INTO ${T} (k, n, worker) VALUES ($1, $2, $3)`, values: [`churn${k}-${cycle}`, cycle, k] });
            await c.query('COMMIT');
            await c.query("SET application_name = 'churn'");
            const b = await c.query({ name: 'q_pid', text: 'SELECT pg_backend_pid() AS pid, $1::int AS i', values: [k + 1] });
            check(a.rows[0].pid === b.rows[0].pid, 'a session-mode connection changed backends', [a.rows, b.rows]);
            check(a.rows[0].i === k && b.rows[0].i === k + 1, 'wrong values', [a.rows, b.rows]);
            all.add(a.rows[0].pid);
          });
        }
      });
      const n = await pool.query(`SELECT count(*)::int AS n FROM ${T} WHERE k LIKE 'churn%'`);
      check(n.rows[0].n === 60, 'committed rows missing', n.rows);
      const pids = checkBackends(all, 'session churn');
      return { pids, connections: conns };
    },
  },
  {
    name: 'listen_notify',
    when: !txn,
    fn: async () => {
      const listener = new pg.Client({ connectionString: cfg.url });
      await listener.connect();
      try {
        const got = [];
        let wake;
        listener.on('notification', (m) => { got.push({ channel: m.channel, payload: m.payload }); if (wake) wake(); });
        await listener.query('LISTEN sluice_chan');
        const wait = (n) => withTimeout(new Promise((res) => { wake = () => { if (got.length >= n) res(); }; wake(); }), 10000, `notification ${n}`);
        await pool.query("SELECT pg_notify('sluice_chan', $1)", ['hello']);
        await wait(1);
        // NOTIFY in a transaction is delivered at COMMIT, not at ROLLBACK
        const c = await pool.connect();
        try {
          await c.query('BEGIN');
          await c.query("NOTIFY sluice_chan, 'rolled back'");
          await c.query('ROLLBACK');
          await c.query('BEGIN');
          await c.query("NOTIFY sluice_chan, 'committed'");
          await c.query('COMMIT');
        } finally {
          c.release();
        }
        await wait(2);
        await sleep(100);
        check(got.length === 2 && got[0].payload === 'hello' && got[1].payload === 'committed', 'wrong notifications', got);
        await listener.query('UNLISTEN *');
        return { got };
      } finally {
        await listener.end();
      }
    },
  },
  {
    name: 'teardown',
    always: true,
    fn: () => pool.end(),
  },
]);
