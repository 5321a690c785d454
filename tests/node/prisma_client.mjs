// Prisma 7 through sluice: the generated client with the driver adapter @prisma/adapter-pg and
// its defaults (a pg.Pool of 10; queries as unnamed extended-protocol statements), no
// `pgbouncer=true`. A second adapter sets statementNameGenerator, which makes every query a
// named prepared statement cached per connection (the part a transaction pooler can break).
import prismaPkg from './node_modules/.sluice-prisma/client/index.js';
import { PrismaPg } from '@prisma/adapter-pg';
import { createHash } from 'node:crypto';
import { cfg, check, run, parallel, checkBackends } from './lib.mjs';

const { PrismaClient, Prisma } = prismaPkg;
const txn = cfg.mode === 'transaction';
const TABLE = 'sluice_node_prisma_account';

const named = { statementNameGenerator: (q) => 'p' + createHash('sha1').update(q.sql).digest('hex').slice(0, 20) };
// Prisma's interactive transactions give up when they wait more than 2 s (maxWait) for BEGIN to
// answer. With 20 of them over sluice's 2 servers, BEGIN waits in sluice's queue, and on a
// loaded 2-core machine that can pass 2 s: the tests allow more. Protocol settings stay default.
const transactionOptions = { maxWait: 30000, timeout: 30000 };
const client = (opts, pg = {}) => new PrismaClient({ adapter: new PrismaPg({ connectionString: cfg.url, ...pg }, opts), transactionOptions });

// The SQLSTATE of a Prisma error that came from Postgres through the driver adapter.
function sqlstate(e) {
  return e?.meta?.driverAdapterError?.cause?.originalCode ?? e?.cause?.originalCode ?? null;
}

async function expectError(promise, what) {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  check(false, `${what} did not fail`);
}

const pid = async (db) => Number((await db.$queryRaw`SELECT pg_backend_pid() AS pid`)[0].pid);

const prisma = client();
const clients = [prisma];

await run([
  {
    name: 'setup',
    fatal: true,
    always: true,
    fn: async () => {
      await prisma.$executeRawUnsafe(`DROP TABLE IF EXISTS ${TABLE}`);
      await prisma.$executeRawUnsafe(`CREATE TABLE ${TABLE} (id serial PRIMARY KEY, email text NOT NULL UNIQUE, balance int NOT NULL DEFAULT 0, worker int)`);
    },
  },
  {
    name: 'simple_query',
    fn: async () => {
      const r = await prisma.$queryRaw`SELECT 1::int AS one, current_database() AS db`;
      check(r[0].one === 1 && r[0].db === 'appdb', 'wrong row', r);
      return { row: r[0] };
    },
  },
  {
    name: 'parameterized_query',
    fn: async () => {
      const a = await prisma.account.create({ data: { email: 'a@example.com', balance: 10 } });
      const found = await prisma.account.findUnique({ where: { email: 'a@example.com' } });
      check(found && found.id === a.id && found.balance === 10, 'findUnique', found);
      const upd = await prisma.account.update({ where: { id: a.id }, data: { balance: { increment: 5 } } });
      check(upd.balance === 15, 'update increment', upd);
      const many = await prisma.account.findMany({ where: { email: { contains: 'example' } }, orderBy: { id: 'asc' } });
      check(many.length === 1, 'findMany', many);
      const raw = await prisma.$queryRaw`SELECT ${'héllo ✓'}::text AS t, ${41}::int + 1 AS v`;
      check(raw[0].t === 'héllo ✓' && raw[0].v === 42, 'raw with parameters', raw);
      return { balance: upd.balance };
    },
  },
  {
    name: 'transaction_commit',
    fn: async () => {
      const [b, c] = await prisma.$transaction([
        prisma.account.create({ data: { email: 'b@example.com', balance: 1 } }),
        prisma.account.create({ data: { email: 'c@example.com', balance: 2 } }),
      ]);
      check(b.id && c.id, 'batch transaction', [b, c]);
      const moved = await prisma.$transaction(async (tx) => {
        const p1 = await pid(tx);
        await tx.account.update({ where: { email: 'b@example.com' }, data: { balance: { decrement: 1 } } });
        await tx.account.update({ where: { email: 'c@example.com' }, data: { balance: { increment: 1 } } });
        const p2 = await pid(tx);
        return p1 !== p2;
      });
      check(!moved, 'an interactive transaction moved between backends');
      const rows = await prisma.account.findMany({ where: { email: { in: ['b@example.com', 'c@example.com'] } }, orderBy: { email: 'asc' } });
      check(rows[0].balance === 0 && rows[1].balance === 3, 'committed values', rows);
    },
  },
  {
    name: 'transaction_rollback_on_error',
    fn: async () => {
      const thrown = await expectError(prisma.$transaction(async (tx) => {
        await tx.account.create({ data: { email: 'r1@example.com' } });
        throw new Error('application error');
      }), 'interactive transaction that throws');
      check(thrown.message === 'application error', 'wrong error', thrown.message);
      const dup = await expectError(prisma.$transaction(async (tx) => {
        await tx.account.create({ data: { email: 'r2@example.com' } });
        await tx.account.create({ data: { email: 'a@example.com' } });
      }), 'interactive transaction with a duplicate');
      check(dup.code === 'P2002' && sqlstate(dup) === '23505', 'duplicate in a transaction', { code: dup.code, sqlstate: sqlstate(dup) });
      const batch = await expectError(prisma.$transaction([
        prisma.account.create({ data: { email: 'r3@example.com' } }),
        prisma.account.create({ data: { email: 'a@example.com' } }),
      ]), 'batch transaction with a duplicate');
      check(batch.code === 'P2002', 'duplicate in a batch transaction', batch.code);
      const n = await prisma.account.count({ where: { email: { in: ['r1@example.com', 'r2@example.com', 'r3@example.com'] } } });
      check(n === 0, 'rows of rolled-back transactions are visible', n);
      return { code: dup.code, sqlstate: sqlstate(dup) };
    },
  },
  {
    name: 'unique_violation',
    fn: async () => {
      const e = await expectError(prisma.account.create({ data: { email: 'a@example.com' } }), 'duplicate create');
      check(e instanceof Prisma.PrismaClientKnownRequestError, 'not a PrismaClientKnownRequestError', e.name);
      check(e.code === 'P2002', 'expected P2002', e.code);
      check(sqlstate(e) === '23505', 'SQLSTATE 23505 not surfaced', e.meta);
      const raw = await expectError(prisma.$executeRaw`INSERT INTO sluice_node_prisma_account (email) VALUES (${'a@example.com'})`, 'raw duplicate insert');
      check(sqlstate(raw) === '23505', 'raw insert: SQLSTATE 23505 not surfaced', { code: raw.code, meta: raw.meta });
      const after = await prisma.account.count();
      check(after === 3, 'client unusable after the error', after);
      return { code: e.code, sqlstate: sqlstate(e), raw_code: raw.code, meta: e.meta };
    },
  },
  {
    // 20 workers over PrismaClients (pg pools of 10), each running interactive transactions
    // and single queries; in transaction mode also through the named-statement adapter.
    name: 'concurrent_clients',
    timeoutMs: 40000,
    fn: async () => {
      const dbs = txn ? [client(), client(named)] : [prisma];
      if (txn) clients.push(...dbs);
      const all = new Set();
      await prisma.account.createMany({ data: Array.from({ length: 20 }, (_, k) => ({ email: `w${k}@example.com`, worker: k })) });
      await parallel(20, async (k) => {
        const db = dbs[k % dbs.length];
        for (let i = 0; i < 6; i++) {
          const [p1, p2] = await db.$transaction(async (tx) => {
            const a = await pid(tx);
            await tx.account.update({ where: { email: `w${k}@example.com` }, data: { balance: { increment: 1 } } });
            const row = await tx.account.findUnique({ where: { email: `w${k}@example.com` } });
            check(row.balance === i + 1, 'wrong balance inside the transaction', row);
            return [a, await pid(tx)];
          });
          check(p1 === p2, 'an interactive transaction moved between backends', [p1, p2]);
          all.add(p1);
          const one = await db.account.findUnique({ where: { email: `w${k}@example.com` } });
          check(one.worker === k, 'wrong row', one);
          all.add(await pid(db));
        }
      });
      const agg = await prisma.account.aggregate({ _sum: { balance: true }, where: { worker: { not: null } } });
      check(agg._sum.balance === 120, 'updates lost', agg);
      if (txn) await Promise.all(dbs.map((d) => d.$disconnect()));
      const pids = checkBackends(all, 'prisma');
      if (txn) check(pids.length > 1, 'all transactions ran on one backend: the test proves nothing', { pids });
      return { pids };
    },
  },
  {
    // The named-statement adapter, one PrismaClient per worker so that each has its own pg
    // connection whose statements were prepared on one backend and are reused on others.
    name: 'named_statements_across_backends',
    when: txn,
    timeoutMs: 40000,
    fn: async () => {
      const all = new Set();
      let moved = 0;
      await parallel(20, async (k) => {
        const db = client(named, { max: 1 });
        const mine = new Set();
        try {
          for (let i = 0; i < 8; i++) {
            const row = await db.account.findUnique({ where: { email: `w${k}@example.com` } });
            check(row.worker === k, 'wrong row', row);
            mine.add(await pid(db));
          }
        } finally {
          await db.$disconnect();
        }
        mine.forEach((p) => all.add(p));
        if (mine.size > 1) moved++;
      });
      const pids = checkBackends(all, 'prisma named');
      check(moved > 0, 'no client connection ran its named statements on more than one backend', { pids });
      return { pids, client_connections_that_moved: moved };
    },
  },
  {
    // Session mode: 20 workers keep creating a PrismaClient, querying, and disconnecting.
    name: 'session_churn',
    when: !txn,
    timeoutMs: 40000,
    fn: async () => {
      const all = new Set();
      await parallel(20, async (k) => {
        for (let cycle = 0; cycle < 2; cycle++) {
          const db = client(cycle ? named : undefined);
          try {
            const p1 = await pid(db);
            const row = await db.account.findUnique({ where: { email: `w${k}@example.com` } });
            check(row.worker === k, 'wrong row', row);
            await db.$transaction(async (tx) => { await tx.account.update({ where: { id: row.id }, data: { balance: { increment: 1 } } }); });
            check(p1 === await pid(db), 'a session-mode connection changed backends');
            all.add(p1);
          } finally {
            await db.$disconnect();
          }
        }
      });
      const agg = await prisma.account.aggregate({ _sum: { balance: true }, where: { worker: { not: null } } });
      check(agg._sum.balance === 120 + 40, 'updates lost', agg);
      return { pids: checkBackends(all, 'session churn') };
    },
  },
  {
    name: 'teardown',
    always: true,
    fn: async () => {
      await prisma.$executeRawUnsafe(`DROP TABLE IF EXISTS ${TABLE}`);
      await Promise.all(clients.map((c) => c.$disconnect()));
    },
  },
]);
