// Shared harness for the client scripts run by tests/integration/test_node_clients.py.
//
// Environment (set by the Python test):
//   SLUICE_URL    postgres://app:apppass@127.0.0.1:<sluice port>/appdb
//   POOL_MODE     session | transaction (sluice's pool_mode; decides which steps run)
//   SERVER_CAP    sluice's default_pool_size: the most backends the scripts may ever see
//   TEST_TABLE    a table name that is free to create (the Python side drops it afterwards)
//   STEP_TIMEOUT_MS  per-step limit (default 20000)
//
// Every step runs on its own with a time limit; the script prints ONE line of JSON on stdout:
//   {"ok": bool, "steps": {name: {"ok": bool, "ms": n, "data": {...}, "error": {...}}}}
// and exits 0 when every step passed, 1 otherwise.

export const cfg = {
  url: must('SLUICE_URL'),
  mode: must('POOL_MODE'),
  cap: Number(process.env.SERVER_CAP || '0'),
  table: must('TEST_TABLE'),
  stepTimeoutMs: Number(process.env.STEP_TIMEOUT_MS || '20000'),
};

function must(name) {
  const v = process.env[name];
  if (!v) {
    process.stdout.write(JSON.stringify({ ok: false, steps: {}, fatal: `${name} is not set` }) + '\n');
    process.exit(2);
  }
  return v;
}

export class CheckError extends Error {}

export function check(cond, message, details) {
  if (!cond) {
    const e = new CheckError(message);
    e.details = details;
    throw e;
  }
}

// Describe any error a client library throws, keeping the fields that carry the SQLSTATE.
export function describe(e) {
  if (e === null || typeof e !== 'object') return { message: String(e) };
  const out = { name: e.name, message: e.message };
  for (const k of ['code', 'severity', 'detail', 'constraint', 'routine', 'details', 'meta',
    'errno', 'query']) {
    if (e[k] !== undefined) out[k] = e[k];
  }
  if (e.cause) out.cause = describe(e.cause);
  if (!(e instanceof CheckError) && e.stack) out.stack = String(e.stack).split('\n').slice(0, 6).join('\n');
  return JSON.parse(JSON.stringify(out, (_k, v) => (typeof v === 'bigint' ? v.toString() : v)));
}

export function withTimeout(promise, ms, what) {
  let timer;
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new CheckError(`${what} did not finish within ${ms} ms`)), ms);
  });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Run `n` workers concurrently; worker(k) returns a value; returns the values in order.
export function parallel(n, worker) {
  return Promise.all(Array.from({ length: n }, (_, k) => worker(k)));
}

// The backend pids seen, as a sorted list of numbers.
export function pidList(set) {
  return [...set].map(Number).sort((a, b) => a - b);
}

// Checks every transaction-mode step makes about the backends it saw: more than one backend
// served the client connections, and never more than sluice's cap.
export function checkBackends(allPids, label) {
  const pids = pidList(allPids);
  if (cfg.cap) check(pids.length <= cfg.cap, `${label}: saw ${pids.length} backends, cap is ${cfg.cap}`, { pids });
  return pids;
}

// Run the steps in order; a step is skipped when its `when` is false. STEPS=a,b runs only those
// (and the `always` ones: setup, teardown); steps marked `extra` run only when named there.
export async function run(steps) {
  const out = { ok: true, mode: cfg.mode, steps: {} };
  // an error no step awaited (a library's background connection, say) fails the run, but
  // must not kill the process before it has printed its JSON
  const stray = (kind) => (e) => {
    out.ok = false;
    (out.unhandled ||= []).push({ kind, ...describe(e) });
  };
  process.on('unhandledRejection', stray('unhandledRejection'));
  process.on('uncaughtException', stray('uncaughtException'));
  const only = process.env.STEPS ? new Set(process.env.STEPS.split(',')) : null;
  for (const s of steps) {
    if (s.when === false) continue;
    if (only ? !only.has(s.name) && !s.always : s.extra) continue;
    const t0 = Date.now();
    const rec = { ok: false };
    out.steps[s.name] = rec;
    try {
      const data = await withTimeout(Promise.resolve().then(() => s.fn()), s.timeoutMs || cfg.stepTimeoutMs, `step ${s.name}`);
      rec.ok = true;
      if (data !== undefined) rec.data = data;
    } catch (e) {
      out.ok = false;
      rec.error = describe(e);
      if (s.fatal) break;
    } finally {
      rec.ms = Date.now() - t0;
    }
  }
  const text = JSON.stringify(out, (_k, v) => (typeof v === 'bigint' ? v.toString() : v)) + '\n';
  // exit explicitly: a connection a failed step left open must not keep the process alive
  process.stdout.write(text, () => process.exit(out.ok ? 0 : 1));
}
