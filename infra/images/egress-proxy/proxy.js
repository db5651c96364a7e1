// The execution lane's egress proxy (network policy `allowlist`): an HTTP proxy (absolute-URI
// requests and CONNECT tunnels) that lets through only the host names and ports in
// CHOIROS_EGRESS_ALLOW ("host:port,host:port"). IP literals are always refused: the allow-list is
// by name. Each attempt is one JSON line on stdout, which the worker turns into run events.
// Plain Node, no dependencies: it runs in the sandbox image, bind-mounted read-only.
'use strict';
const http = require('node:http');
const net = require('node:net');

const allow = new Set(
  (process.env.CHOIROS_EGRESS_ALLOW || '')
    .split(',')
    .map((s) => s.trim().toLowerCase())
    .filter(Boolean),
);
const port = Number(process.env.CHOIROS_EGRESS_PORT || 3128);

function decide(host, p, protocol = 'http:') {
  const h = String(host || '')
    .toLowerCase()
    .replace(/^\[|\]$/g, '');
  if (!h) return { host: h, allowed: false, reason: 'no host' };
  // Absolute-URI requests are forwarded as plain HTTP only; TLS goes through CONNECT.
  if (protocol !== 'http:') return { host: h, allowed: false, reason: `scheme ${protocol} needs CONNECT` };
  if (net.isIP(h)) return { host: h, allowed: false, reason: 'ip literal' };
  if (!allow.has(`${h}:${p}`)) return { host: h, allowed: false, reason: 'not in allow-list' };
  return { host: h, allowed: true, reason: 'allow-list' };
}

function record(d, p, kind) {
  process.stdout.write(
    `${JSON.stringify({ at: Date.now(), host: d.host, port: p, allowed: d.allowed, reason: d.reason, kind })}\n`,
  );
}

const server = http.createServer((req, res) => {
  let url;
  try {
    url = new URL(req.url);
  } catch {
    res.writeHead(400).end('absolute URI required (use this as an HTTP proxy)\n');
    return;
  }
  const p = Number(url.port || 80);
  const d = decide(url.hostname, p, url.protocol);
  record(d, p, 'http');
  if (!d.allowed) {
    res
      .writeHead(403, { 'content-type': 'text/plain' })
      .end(`egress to ${d.host}:${p} denied (${d.reason})\n`);
    return;
  }
  const headers = { ...req.headers };
  delete headers['proxy-connection'];
  delete headers['proxy-authorization'];
  const upstream = http.request(
    { host: d.host, port: p, method: req.method, path: `${url.pathname}${url.search}`, headers },
    (up) => {
      res.writeHead(up.statusCode || 502, up.headers);
      up.pipe(res);
    },
  );
  upstream.on('error', (err) => {
    if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' });
    res.end(`upstream error: ${err.code || err.message}\n`);
  });
  req.pipe(upstream);
});

server.on('connect', (req, socket, head) => {
  const i = req.url.lastIndexOf(':');
  const host = i > 0 ? req.url.slice(0, i) : req.url;
  const p = Number(i > 0 ? req.url.slice(i + 1) : 443);
  const d = decide(host, p);
  record(d, p, 'connect');
  if (!d.allowed) {
    socket.end(`HTTP/1.1 403 Forbidden\r\n\r\negress to ${d.host}:${p} denied (${d.reason})\n`);
    return;
  }
  const upstream = net.connect(p, d.host, () => {
    socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
    if (head && head.length) upstream.write(head);
    upstream.pipe(socket);
    socket.pipe(upstream);
  });
  upstream.on('error', () => socket.end('HTTP/1.1 502 Bad Gateway\r\n\r\n'));
  socket.on('error', () => upstream.destroy());
});

server.listen(port, '0.0.0.0', () => {
  process.stdout.write(`${JSON.stringify({ ready: true, port, allow: [...allow] })}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
