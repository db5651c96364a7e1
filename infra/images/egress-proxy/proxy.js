// The execution lane's egress proxy (network policy `allowlist`): an HTTP proxy (absolute-URI
// requests and CONNECT tunnels) that lets through only the host names and ports in
// CHOIROS_EGRESS_ALLOW ("host:port,host:port"), and only to public addresses.
//
// Threat model (docs/egress.md): everything a client sends is hostile. The proxy
// - refuses IP literals and names that parse as IPv4 in any notation (the allow-list is by name);
// - resolves an allowed name itself and refuses when ANY of its addresses is not public unicast
//   (loopback, private, link-local incl. 169.254.169.254, CGNAT, multicast, reserved, IPv6
//   ULA/link-local, and IPv4 embedded in IPv6: mapped, compatible, NAT64, 6to4), unless it lies
//   in CHOIROS_EGRESS_ALLOW_CIDRS (trusted platform configuration, empty by default); addresses in
//   CHOIROS_EGRESS_DENY_CIDRS (e.g. the egress bridge's gateway, i.e. the Docker host) are refused
//   even then;
// - connects to the very address it checked (no second lookup: DNS rebinding cannot switch it);
// - bounds attempts (a token bucket and a total cap; beyond: `rate_limited`) and logs only the
//   first CHOIROS_EGRESS_LOG_FIRST attempts one by one; the rest are counted (bounded keys) and
//   reported as one summary line on SIGUSR2 and on exit, so a flood cannot grow the log.
// Plain Node, no dependencies: it runs in the sandbox image, bind-mounted read-only.
'use strict';
const dns = require('node:dns');
const http = require('node:http');
const net = require('node:net');

// --- addresses ----------------------------------------------------------------------------------

/** Bytes of an IPv4 address in dotted-quad form (what net.isIPv4 accepts), else null. */
function v4Bytes(s) {
  if (net.isIPv4(s) !== true) return null;
  return s.split('.').map(Number);
}

/** The 16 bytes of an IPv6 address (zone id dropped, embedded dotted IPv4 allowed), else null. */
function v6Bytes(s) {
  const a = String(s).replace(/%.*$/, '');
  if (!net.isIPv6(a)) return null;
  let head = a;
  let tail4 = [];
  const dot = a.lastIndexOf(':');
  if (a.includes('.')) {
    tail4 = v4Bytes(a.slice(dot + 1));
    if (!tail4) return null;
    head = a.slice(0, dot + 1); // keeps a trailing '::', drops a single trailing ':'
    if (!head.endsWith('::')) head = head.slice(0, -1);
  }
  const groupsWanted = tail4.length ? 6 : 8;
  const [l, r] = head.includes('::') ? head.split('::') : [head, undefined];
  const left = l ? l.split(':') : [];
  const right = r === undefined ? [] : r ? r.split(':') : [];
  const fill = r === undefined ? 0 : groupsWanted - left.length - right.length;
  const groups = [...left, ...Array(fill).fill('0'), ...right];
  if (groups.length !== groupsWanted) return null;
  const bytes = [];
  for (const g of groups) {
    const n = parseInt(g, 16);
    bytes.push(n >> 8, n & 0xff);
  }
  return [...bytes, ...tail4];
}

function inV4(b, net4, bits) {
  const [n0, n1, n2, n3] = net4;
  const x = ((b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]) >>> 0;
  const n = ((n0 << 24) | (n1 << 16) | (n2 << 8) | n3) >>> 0;
  const mask = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
  return (x & mask) >>> 0 === (n & mask) >>> 0;
}

function inV6(b, prefix, bits) {
  for (let i = 0; i < 16; i++) {
    const take = Math.max(0, Math.min(8, bits - i * 8));
    if (take === 0) return true;
    const mask = (0xff << (8 - take)) & 0xff;
    if ((b[i] & mask) !== (prefix[i] & mask)) return false;
  }
  return true;
}

// IPv4 special-purpose ranges (IANA registry): nothing here is a public destination.
const V4_SPECIAL = [
  ['0.0.0.0', 8, 'unspecified'],
  ['10.0.0.0', 8, 'private'],
  ['100.64.0.0', 10, 'cgnat'],
  ['127.0.0.0', 8, 'loopback'],
  ['169.254.0.0', 16, 'link-local'],
  ['172.16.0.0', 12, 'private'],
  ['192.0.0.0', 24, 'reserved'],
  ['192.0.2.0', 24, 'reserved'],
  ['192.88.99.0', 24, 'reserved'],
  ['192.168.0.0', 16, 'private'],
  ['198.18.0.0', 15, 'reserved'],
  ['198.51.100.0', 24, 'reserved'],
  ['203.0.113.0', 24, 'reserved'],
  ['224.0.0.0', 4, 'multicast'],
  ['240.0.0.0', 4, 'reserved'], // includes 255.255.255.255 (broadcast)
].map(([a, bits, kind]) => ({ net: v4Bytes(a), bits, kind }));

/** IPv6 prefixes that carry an IPv4 address, and where it sits. */
const V6_EMBEDDING = [
  ['::ffff:0:0', 96, 12, 'ipv4-mapped'],
  ['::', 96, 12, 'ipv4-compatible'], // (:: and ::1 are caught before this)
  ['64:ff9b::', 96, 12, 'nat64'],
  ['2002::', 16, 2, '6to4'],
].map(([a, bits, at, kind]) => ({ net: v6Bytes(a), bits, at, kind }));

const V6_SPECIAL = [
  ['64:ff9b:1::', 48, 'nat64'],
  ['100::', 64, 'reserved'],
  ['2001::', 23, 'reserved'], // IETF protocol assignments, incl. Teredo 2001::/32
  ['2001:db8::', 32, 'reserved'],
  ['fc00::', 7, 'ula'],
  ['fe80::', 10, 'link-local'],
  ['fec0::', 10, 'site-local'],
  ['ff00::', 8, 'multicast'],
].map(([a, bits, kind]) => ({ net: v6Bytes(a), bits, kind }));
const V6_GLOBAL = v6Bytes('2000::');

/**
 * Why `address` is not a public unicast destination (e.g. `loopback`, `ipv4-mapped loopback`),
 * or null when it is one. Anything that does not parse is `invalid`.
 */
function classify(address) {
  const b4 = v4Bytes(address);
  if (b4) {
    const hit = V4_SPECIAL.find((r) => inV4(b4, r.net, r.bits));
    return hit ? hit.kind : null;
  }
  const b = v6Bytes(address);
  if (!b) return 'invalid';
  if (b.every((x) => x === 0)) return 'unspecified';
  if (b.slice(0, 15).every((x) => x === 0) && b[15] === 1) return 'loopback';
  for (const e of V6_EMBEDDING) {
    if (inV6(b, e.net, e.bits)) {
      const inner = classify(b.slice(e.at, e.at + 4).join('.'));
      return inner ? `${e.kind} ${inner}` : null;
    }
  }
  const hit = V6_SPECIAL.find((r) => inV6(b, r.net, r.bits));
  if (hit) return hit.kind;
  return inV6(b, V6_GLOBAL, 3) ? null : 'reserved';
}

/** Parses "a.b.c.d/n,x::/n" (a bare address is its /32 or /128) into matchers; throws on junk. */
function parseCidrs(text) {
  return String(text || '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .map((c) => {
      const [addr, len] = c.split('/');
      const b4 = v4Bytes(addr);
      const b6 = b4 ? null : v6Bytes(addr);
      const bits = len === undefined ? (b4 ? 32 : 128) : Number(len);
      if ((!b4 && !b6) || !Number.isInteger(bits) || bits < 0 || bits > (b4 ? 32 : 128)) {
        throw new Error(`bad CIDR ${JSON.stringify(c)}`);
      }
      return { text: c, b4, b6, bits };
    });
}

function inCidrs(address, cidrs) {
  const b4 = v4Bytes(address);
  const b6 = b4 ? null : v6Bytes(address);
  return cidrs.some((c) =>
    b4 && c.b4 ? inV4(b4, c.b4, c.bits) : b6 && c.b6 ? inV6(b6, c.b6, c.bits) : false,
  );
}

/**
 * The reason `address` may not be connected to, or null. Deny CIDRs win over allow CIDRs, which
 * win over the special-purpose ranges.
 */
function refuseAddress(address, { allowCidrs = [], denyCidrs = [] } = {}) {
  if (inCidrs(address, denyCidrs)) return 'denied range';
  if (inCidrs(address, allowCidrs)) return null;
  return classify(address);
}

/**
 * True for a host that is (or would be read by a resolver as) an IP address rather than a name:
 * IPv6/IPv4 literals, and WHATWG's "ends in a number" rule (last label all digits or 0x-hex), which
 * covers 2130706433, 0x7f000001, 0177.0.0.1 and 127.1.
 */
function isIpLike(host) {
  const h = String(host)
    .replace(/^\[|\]$/g, '')
    .replace(/\.$/, '');
  if (net.isIP(h) || h.includes(':')) return true;
  const last = h.split('.').pop() || '';
  return /^[0-9]+$/.test(last) || /^0x[0-9a-f]*$/i.test(last);
}

// --- bounds and the attempt log -----------------------------------------------------------------

/** Caps of the attempt summary: destinations and reasons counted by key, the rest as "other". */
const MAX_KEYS = 32;
const MAX_HOST_CHARS = 253;

function createLimiter({ ratePerSecond, burst, maxAttempts, now = Date.now }) {
  let tokens = burst;
  let last = now();
  let taken = 0;
  return {
    /** True when one more attempt may be decided on; false: it is `rate_limited`. */
    take() {
      const t = now();
      tokens = Math.min(burst, tokens + ((t - last) / 1000) * ratePerSecond);
      last = t;
      if (taken >= maxAttempts || tokens < 1) return false;
      tokens -= 1;
      taken += 1;
      return true;
    },
  };
}

function createLog({ logFirst, write }) {
  let seq = 0;
  let logged = 0;
  const totals = { total: 0, allowed: 0, denied: 0, rateLimited: 0 };
  const destinations = new Map();
  const other = { allowed: 0, denied: 0 };
  const reasons = new Map();
  const count = (map, key, overflowKey) => {
    if (map.has(key) || map.size < MAX_KEYS) return key;
    return overflowKey;
  };
  return {
    record(attempt) {
      totals.total += 1;
      totals[attempt.allowed ? 'allowed' : 'denied'] += 1;
      if (attempt.reason === 'rate_limited') totals.rateLimited += 1;
      const key = `${attempt.host}:${attempt.port}`;
      if (destinations.has(key) || destinations.size < MAX_KEYS) {
        const d = destinations.get(key) || { host: attempt.host, port: attempt.port, allowed: 0, denied: 0 };
        d[attempt.allowed ? 'allowed' : 'denied'] += 1;
        destinations.set(key, d);
      } else {
        other[attempt.allowed ? 'allowed' : 'denied'] += 1;
      }
      const r = count(reasons, attempt.reason, 'other');
      reasons.set(r, (reasons.get(r) || 0) + 1);
      if (logged < logFirst) {
        logged += 1;
        write(attempt);
      }
    },
    summary() {
      seq += 1;
      return {
        summary: {
          seq,
          at: Date.now(),
          ...totals,
          individual: logged,
          destinations: [...destinations.values()],
          other,
          reasons: Object.fromEntries(reasons),
        },
      };
    },
  };
}

// --- the proxy ----------------------------------------------------------------------------------

function createProxy(env = process.env, deps = {}) {
  const lookup = deps.lookup || dns.lookup;
  const write = deps.write || ((obj) => process.stdout.write(`${JSON.stringify(obj)}\n`));
  const allow = new Set(
    (env.CHOIROS_EGRESS_ALLOW || '')
      .split(',')
      .map((s) => s.trim().toLowerCase())
      .filter(Boolean),
  );
  const ranges = {
    allowCidrs: parseCidrs(env.CHOIROS_EGRESS_ALLOW_CIDRS),
    denyCidrs: parseCidrs(env.CHOIROS_EGRESS_DENY_CIDRS),
  };
  const rate = Number(env.CHOIROS_EGRESS_RATE_PER_SECOND || 50);
  const limiter = createLimiter({
    ratePerSecond: rate,
    burst: Number(env.CHOIROS_EGRESS_BURST || rate * 2),
    maxAttempts: Number(env.CHOIROS_EGRESS_MAX_ATTEMPTS || 1000),
  });
  const log = createLog({ logFirst: Number(env.CHOIROS_EGRESS_LOG_FIRST || 20), write });

  /** Decides one attempt; resolves to { host, allowed, reason, address? }. Never throws. */
  async function decide(rawHost, port, protocol = 'http:') {
    const host = String(rawHost || '')
      .toLowerCase()
      .replace(/^\[|\]$/g, '')
      .slice(0, MAX_HOST_CHARS);
    if (!limiter.take()) return { host, allowed: false, reason: 'rate_limited' };
    if (!host) return { host, allowed: false, reason: 'no host' };
    // Absolute-URI requests are forwarded as plain HTTP only; TLS goes through CONNECT.
    if (protocol !== 'http:') return { host, allowed: false, reason: `scheme ${protocol} needs CONNECT` };
    if (isIpLike(host)) return { host, allowed: false, reason: 'ip literal' };
    if (!Number.isInteger(port) || port < 1 || port > 65535)
      return { host, allowed: false, reason: 'bad port' };
    if (!allow.has(`${host}:${port}`)) return { host, allowed: false, reason: 'not in allow-list' };
    let addresses;
    try {
      addresses = await new Promise((resolve, reject) =>
        lookup(host, { all: true, verbatim: true }, (err, list) => (err ? reject(err) : resolve(list))),
      );
    } catch (err) {
      return { host, allowed: false, reason: `dns ${err.code || 'error'}` };
    }
    if (!addresses.length) return { host, allowed: false, reason: 'dns no address' };
    // Every address must pass: a name with one public and one internal address is refused whole.
    for (const { address } of addresses) {
      const why = refuseAddress(address, ranges);
      if (why) return { host, allowed: false, reason: `address ${why}`, address };
    }
    return { host, allowed: true, reason: 'allow-list', address: addresses[0].address };
  }

  function record(d, port, kind) {
    log.record({
      at: Date.now(),
      host: d.host,
      port,
      allowed: d.allowed,
      reason: d.reason,
      ...(d.address ? { address: d.address } : {}),
      kind,
    });
  }

  const server = http.createServer((req, res) => {
    let url;
    try {
      url = new URL(req.url);
    } catch {
      res.writeHead(400).end('absolute URI required (use this as an HTTP proxy)\n');
      return;
    }
    const port = Number(url.port || 80);
    void decide(url.hostname, port, url.protocol).then((d) => {
      record(d, port, 'http');
      if (!d.allowed) {
        res
          .writeHead(d.reason === 'rate_limited' ? 429 : 403, { 'content-type': 'text/plain' })
          .end(`egress to ${d.host}:${port} denied (${d.reason})\n`);
        return;
      }
      const headers = { ...req.headers };
      delete headers['proxy-connection'];
      delete headers['proxy-authorization'];
      // To the checked address; the client's Host header goes along unchanged.
      const upstream = http.request(
        {
          host: d.address,
          port,
          method: req.method,
          path: `${url.pathname}${url.search}`,
          headers,
          agent: false,
        },
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
  });

  server.on('connect', (req, socket, head) => {
    socket.on('error', () => socket.destroy());
    const i = req.url.lastIndexOf(':');
    const host = i > 0 ? req.url.slice(0, i) : req.url;
    const port = Number(i > 0 ? req.url.slice(i + 1) : 443);
    void decide(host, port).then((d) => {
      record(d, port, 'connect');
      if (!d.allowed) {
        const status = d.reason === 'rate_limited' ? '429 Too Many Requests' : '403 Forbidden';
        socket.end(`HTTP/1.1 ${status}\r\n\r\negress to ${d.host}:${port} denied (${d.reason})\n`);
        return;
      }
      // To the checked address; TLS (SNI, certificate names) is between the client and the server.
      const upstream = net.connect(port, d.address, () => {
        socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
        if (head && head.length) upstream.write(head);
        upstream.pipe(socket);
        socket.pipe(upstream);
      });
      upstream.on('error', () => socket.end('HTTP/1.1 502 Bad Gateway\r\n\r\n'));
      socket.on('close', () => upstream.destroy());
    });
  });
  // A bound on open connections, so a client cannot exhaust the proxy's memory or descriptors.
  server.maxConnections = Number(env.CHOIROS_EGRESS_MAX_CONNECTIONS || 64);
  return { server, decide, summary: () => log.summary(), allow };
}

/**
 * The address to listen on: this container's address inside CHOIROS_EGRESS_LISTEN_CIDRS (the run's
 * own network), so nothing on the egress bridge (the host, other runs' proxies) can use this proxy;
 * all interfaces when unset.
 */
function listenAddress(cidrText, interfaces = require('node:os').networkInterfaces()) {
  if (!cidrText) return '0.0.0.0';
  const cidrs = parseCidrs(cidrText);
  for (const list of Object.values(interfaces)) {
    for (const i of list || []) if (inCidrs(i.address, cidrs)) return i.address;
  }
  throw new Error(`no interface in ${cidrText}`);
}

if (require.main === module) {
  const port = Number(process.env.CHOIROS_EGRESS_PORT || 3128);
  const write = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);
  const proxy = createProxy(process.env, { write });
  const host = listenAddress(process.env.CHOIROS_EGRESS_LISTEN_CIDRS);
  proxy.server.listen(port, host, () => write({ ready: true, host, port, allow: [...proxy.allow] }));
  // The worker asks for the summary after each command (docker kill --signal SIGUSR2).
  process.on('SIGUSR2', () => write(proxy.summary()));
  process.on('SIGTERM', () => {
    write(proxy.summary());
    proxy.server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 1000).unref();
  });
}

module.exports = {
  listenAddress,
  classify,
  refuseAddress,
  parseCidrs,
  isIpLike,
  createLimiter,
  createLog,
  createProxy,
  v6Bytes,
};
