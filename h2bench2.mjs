import { Etcd3 } from 'etcd3';
const N = 4000, C = 8;
const ep = '127.0.0.1:23790';
async function pool(fn) { let i = 0; await Promise.all(Array.from({ length: C }, async () => { while (i < N) { i++; await fn(); } })); }
async function measure(client) { const c0 = process.cpuUsage(); await pool(() => client.get('foo').string()); const c = process.cpuUsage(c0); return (c.user + c.system) / 1000 / N; }
const variants = {
  plain: {},
  noRetries: { 'grpc.enable_retries': 0 },
  noRetriesNoChannelz: { 'grpc.enable_retries': 0, 'grpc.enable_channelz': 0 },
};
const clients = Object.fromEntries(Object.entries(variants).map(([k, o]) => [k, new Etcd3({ hosts: ep, grpcOptions: o })]));
for (let r = 0; r < 5; r++) {
  const out = [];
  for (const [k, c] of Object.entries(clients)) out.push(`${k} ${(await measure(c)).toFixed(3)}`);
  console.log(`round ${r}: ${out.join('  ')}`);
}
for (const c of Object.values(clients)) c.close();
