// Scratch: client CPU per unary Range, etcd3 vs grpc-js direct vs raw node:http2.
import http2 from 'node:http2';
import { Etcd3 } from 'etcd3';
const N = 4000, C = 8;
const ep = '127.0.0.1:23790';
function cpu(f) { return async () => { const c0 = process.cpuUsage(); const t0 = performance.now(); await f(); const c = process.cpuUsage(c0); return { cpuMs: (c.user + c.system) / 1000 / N, wall: performance.now() - t0 }; }; }
async function pool(fn) { let i = 0; await Promise.all(Array.from({ length: C }, async () => { while (i < N) { i++; await fn(); } })); }
const client = new Etcd3({ hosts: ep });
const etcd3Get = cpu(() => pool(() => client.get('foo').string()));
// raw http2
const sess = http2.connect('http://' + ep);
const key = Buffer.from('foo');
const msg = Buffer.concat([Buffer.from([0x0a, key.length]), key]);
const frame = Buffer.alloc(5 + msg.length); frame[0] = 0; frame.writeUInt32BE(msg.length, 1); msg.copy(frame, 5);
function rawRange() {
  return new Promise((resolve, reject) => {
    const s = sess.request({ ':method': 'POST', ':path': '/etcdserverpb.KV/Range', 'content-type': 'application/grpc', te: 'trailers' });
    const chunks = [];
    s.on('data', (d) => chunks.push(d));
    s.on('trailers', (t) => { if (t['grpc-status'] !== '0') reject(new Error(t['grpc-message'])); });
    s.on('end', () => resolve(Buffer.concat(chunks)));
    s.on('error', reject);
    s.end(frame);
  });
}
const rawGet = cpu(() => pool(rawRange));
for (let r = 0; r < 4; r++) {
  const a = await etcd3Get(); const b = await rawGet();
  console.log(`round ${r}: etcd3 ${a.cpuMs.toFixed(3)} ms/call (${(N / a.wall * 1000).toFixed(0)}/s), raw http2 ${b.cpuMs.toFixed(3)} ms/call (${(N / b.wall * 1000).toFixed(0)}/s)`);
}
client.close(); sess.close();
