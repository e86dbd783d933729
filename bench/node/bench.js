// The workloads of bench/bench.lua for Node's etcd3 client (npm, pinned by
// package-lock.json), printing the same RESULT line.
//
//   node bench/node/bench.js 127.0.0.1:2379 put_seq 5000 [value_bytes]
'use strict';
const { Etcd3 } = require('etcd3');

const [ep, workload, nArg, sizeArg] = process.argv.slice(2);
const N = parseInt(nArg || '2000', 10);
const value = 'v'.repeat(parseInt(sizeArg || '64', 10));
const IN_FLIGHT = 64;

const now = () => Number(process.hrtime.bigint()) / 1e9;
const cpu = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1e6; };
const rssMiB = () => process.memoryUsage().rss / 1048576;

function report(r) {
  const lat = (r.lat || []).slice().sort((a, b) => a - b);
  const n = lat.length;
  let p50 = 0, p99 = 0, mean = 0;
  if (n > 0) {
    p50 = lat[Math.floor(n / 2)];
    p99 = lat[Math.floor((n * 99) / 100)];
    mean = lat.reduce((a, b) => a + b, 0) / n;
  }
  console.log(`RESULT workload=${workload} ops=${r.ops} ops_s=${(r.ops / r.wall).toFixed(1)} ` +
    `p50_us=${(p50 * 1e6).toFixed(1)} p99_us=${(p99 * 1e6).toFixed(1)} mean_us=${(mean * 1e6).toFixed(1)} ` +
    `errors=${r.errors} cpu_us_op=${(r.cpu / r.ops * 1e6).toFixed(2)}${r.extra || ''}`);
}

async function seq(n, f) {
  const lat = [];
  let errors = 0;
  const c0 = cpu(), t0 = now();
  for (let i = 0; i < n; i++) {
    const s = now();
    try { if (!(await f(i))) errors++; } catch (e) { errors++; }
    lat.push(now() - s);
  }
  return { lat, ops: n, errors, wall: now() - t0, cpu: cpu() - c0 };
}

async function conc(n, f) {
  const lat = new Array(n);
  let errors = 0, next = 0;
  const c0 = cpu(), t0 = now();
  const worker = async () => {
    for (;;) {
      const i = next++;
      if (i >= n) return;
      const s = now();
      try { if (!(await f(i))) errors++; } catch (e) { errors++; }
      lat[i] = now() - s;
    }
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
  return { lat, ops: n, errors, wall: now() - t0, cpu: cpu() - c0 };
}

async function main() {
  const client = new Etcd3({ hosts: ep });
  let kv = client;
  if (workload === 'get_100_ns') kv = client.namespace('bench/ns/');
  await client.get('bench/warm-up').exec();
  let r;
  switch (workload) {
    case 'put_seq':
      r = await seq(N, async (i) => { await kv.put(`bench/put/${i % 1000}`).value(value); return true; });
      break;
    case 'get_seq':
      await kv.put('bench/get').value(value);
      r = await seq(N, async () => { await kv.get('bench/get').exec(); return true; });
      break;
    case 'get_100':
    case 'get_100_ns':
      for (let i = 0; i < 100; i++) await kv.put(`bench/g100/${String(i).padStart(3, '0')}`).value(value);
      r = await seq(N, async () => {
        const res = await kv.getAll().prefix('bench/g100/').exec();
        return res.kvs.length === 100;
      });
      break;
    case 'txn_cas_seq': {
      let cur = '0';
      await kv.put('bench/cas').value(cur);
      r = await seq(N, async (i) => {
        const next = String(i + 1);
        const res = await kv.if('bench/cas', 'Value', '==', cur).then(kv.put('bench/cas').value(next)).commit();
        if (!res.succeeded) return false;
        cur = next;
        return true;
      });
      break;
    }
    case 'lease_seq':
      r = await seq(N, async () => {
        const lease = client.lease(60, { autoKeepAlive: false });
        await lease.grant();
        await lease.revoke();
        return true;
      });
      break;
    case 'put_conc':
      r = await conc(N, async (i) => { await kv.put(`bench/conc/${i % 1000}`).value(value); return true; });
      break;
    case 'watch': {
      const sent = new Array(N), lat = [];
      const w = await client.watch().prefix('bench/watch/').create();
      let got = 0, doneResolve;
      const done = new Promise((res) => { doneResolve = res; });
      w.on('put', (ev) => {
        const i = parseInt(ev.key.toString().slice('bench/watch/'.length), 10);
        lat.push(now() - sent[i]);
        if (++got >= N) doneResolve();
      });
      r = await conc(N, async (i) => { sent[i] = now(); await kv.put(`bench/watch/${i}`).value(value); return true; });
      const t0 = now();
      await Promise.race([done, new Promise((res) => setTimeout(res, 60000))]);
      if (got < N) r.errors++;
      r.wall += now() - t0;
      r.lat = lat;
      await w.cancel();
      break;
    }
    case 'mem_watch_ka': {
      if (global.gc) global.gc();
      const rss0 = rssMiB();
      const c0 = cpu(), t0 = now();
      const keep = [];
      for (let i = 0; i < N; i++) {
        keep.push(await client.watch().key(`bench/mem/w${i}`).create());
        const lease = client.lease(60);
        await lease.grant();
        keep.push(lease);
      }
      await new Promise((res) => setTimeout(res, 2000));
      if (global.gc) global.gc();
      r = { ops: N, errors: 0, wall: now() - t0, cpu: cpu() - c0, extra: ` rss_mb=${(rssMiB() - rss0).toFixed(1)}` };
      for (const o of keep) { if (o.cancel) await o.cancel(); else await o.revoke(); }
      break;
    }
    case 'rss_puts': {
      const rss0 = rssMiB();
      let mid = 0;
      r = await conc(N, async (i) => {
        if (i === Math.floor(N / 10)) mid = rssMiB();
        await kv.put(`bench/rss/${i % 1000}`).value(value);
        return true;
      });
      const rss1 = rssMiB();
      r.extra = ` rss_mb=${(rss1 - rss0).toFixed(1)} rss_growth_mb=${(rss1 - mid).toFixed(1)}`;
      r.lat = null;
      break;
    }
    default:
      console.error(`unknown workload ${workload}`);
      process.exit(2);
  }
  report(r);
  client.close();
}

main().catch((e) => { console.error(e); process.exit(1); });
