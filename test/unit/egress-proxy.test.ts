/**
 * The egress proxy's decisions (infra/images/egress-proxy/proxy.js): which addresses it refuses in
 * every notation, that it connects to the address it checked (no second lookup), and that its
 * attempt log stays bounded under a flood. The proxy is real and listens on loopback; only name
 * resolution is injected, since this machine has no DNS server to rebind.
 */
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import fc from 'fast-check';
import {
  classify,
  createLimiter,
  createLog,
  createProxy,
  isIpLike,
  listenAddress,
  parseCidrs,
  refuseAddress,
  type Lookup,
} from '../../infra/images/egress-proxy/proxy';

describe('classify', () => {
  test.each([
    ['127.0.0.1', 'loopback'],
    ['127.255.255.254', 'loopback'],
    ['10.0.0.1', 'private'],
    ['172.16.0.1', 'private'],
    ['172.31.255.255', 'private'],
    ['192.168.1.1', 'private'],
    ['169.254.169.254', 'link-local'],
    ['100.64.0.1', 'cgnat'],
    ['100.127.255.255', 'cgnat'],
    ['0.0.0.0', 'unspecified'],
    ['0.1.2.3', 'unspecified'],
    ['224.0.0.251', 'multicast'],
    ['239.255.255.250', 'multicast'],
    ['255.255.255.255', 'reserved'],
    ['240.0.0.1', 'reserved'],
    ['192.0.2.1', 'reserved'],
    ['198.18.0.1', 'reserved'],
    ['::1', 'loopback'],
    ['::', 'unspecified'],
    ['fd00::1', 'ula'],
    ['fc12:3456::1', 'ula'],
    ['fe80::1', 'link-local'],
    ['fe80::1%eth0', 'link-local'],
    ['ff02::1', 'multicast'],
    ['::ffff:127.0.0.1', 'ipv4-mapped loopback'],
    ['::ffff:7f00:1', 'ipv4-mapped loopback'],
    ['::ffff:169.254.169.254', 'ipv4-mapped link-local'],
    ['::ffff:10.0.0.1', 'ipv4-mapped private'],
    ['::127.0.0.1', 'ipv4-compatible loopback'],
    ['64:ff9b::7f00:1', 'nat64 loopback'],
    ['64:ff9b::a9fe:a9fe', 'nat64 link-local'],
    ['64:ff9b:1::1', 'nat64'],
    ['2002:7f00:1::1', '6to4 loopback'],
    ['2002:c0a8:101::1', '6to4 private'],
    ['2001::1', 'reserved'],
    ['2001:db8::1', 'reserved'],
    ['::ffff:0:7f00:1', 'reserved'],
    ['not-an-address', 'invalid'],
  ])('when the address is %s, then it is refused as %s', (address, kind) => {
    expect(classify(address)).toBe(kind);
  });

  test.each(['8.8.8.8', '1.1.1.1', '172.32.0.1', '100.128.0.1', '2606:4700::1111', '::ffff:8.8.8.8'])(
    'when the address is public (%s), then it is not refused',
    (address) => {
      expect(classify(address)).toBeNull();
    },
  );

  test('when any IPv4 address is written IPv4-mapped, then it gets the same verdict as itself', () => {
    fc.assert(
      fc.property(fc.ipV4(), (v4) => {
        const plain = classify(v4);
        expect(classify(`::ffff:${v4}`)).toBe(plain ? `ipv4-mapped ${plain}` : null);
      }),
    );
  });
});

describe('refuseAddress', () => {
  test('when an allowed CIDR names a private /32, then only that address passes, and a deny CIDR wins over it', () => {
    const allowCidrs = parseCidrs('172.18.0.5/32');
    expect(refuseAddress('172.18.0.5', { allowCidrs })).toBeNull();
    expect(refuseAddress('172.18.0.6', { allowCidrs })).toBe('private');
    expect(refuseAddress('172.18.0.1', { allowCidrs: parseCidrs('172.18.0.0/16') })).toBeNull();
    // The egress bridge's gateway (the Docker host) is in the deny list the driver passes.
    expect(
      refuseAddress('172.18.0.1', {
        allowCidrs: parseCidrs('172.18.0.0/16'),
        denyCidrs: parseCidrs('172.18.0.1'),
      }),
    ).toBe('denied range');
    expect(refuseAddress('8.8.8.8', { denyCidrs: parseCidrs('8.8.8.0/24') })).toBe('denied range');
  });

  test('when a CIDR is malformed, then parsing throws instead of allowing or denying the wrong thing', () => {
    for (const bad of ['1.2.3.4/33', 'nonsense', '1.2.3/8', '::1/129'])
      expect(() => parseCidrs(bad)).toThrow();
  });
});

describe('isIpLike', () => {
  test.each([
    '127.0.0.1',
    '2130706433',
    '0x7f000001',
    '0X7F000001',
    '0177.0.0.1',
    '127.1',
    '[::1]',
    '::1',
    'a.b.0x',
    'a.9',
  ])('when the host is %s, then it is an IP literal', (h) => expect(isIpLike(h)).toBe(true));
  test.each(['localhost', 'example.com', '1e100.net', 'a.0x1g', '0x.example'])(
    'when the host is %s, then it is a name',
    (h) => expect(isIpLike(h)).toBe(false),
  );
});

describe('listenAddress', () => {
  const interfaces = {
    lo: [{ address: '127.0.0.1' }],
    eth0: [{ address: '172.30.0.3' }], // the egress bridge
    eth1: [{ address: '172.31.7.2' }], // the run's own network
  };
  test('when given the run network, then the proxy listens on its address there only', () => {
    expect(listenAddress('172.31.0.0/16', interfaces)).toBe('172.31.7.2');
  });
  test('when no interface is in it, then the proxy refuses to start rather than listen everywhere', () => {
    expect(() => listenAddress('10.9.0.0/16', interfaces)).toThrow(/no interface/);
  });
});

describe('bounds', () => {
  test('when attempts come faster than the rate, then the bucket refuses them, and it never passes the total cap', () => {
    let t = 0;
    const limiter = createLimiter({ ratePerSecond: 10, burst: 20, maxAttempts: 50, now: () => t });
    const burst = Array.from({ length: 100 }, () => limiter.take()).filter(Boolean).length;
    expect(burst).toBe(20);
    t += 1000; // ten more tokens
    expect(Array.from({ length: 100 }, () => limiter.take()).filter(Boolean).length).toBe(10);
    let more = 0;
    for (let i = 0; i < 100; i++) {
      t += 1000;
      more += Array.from({ length: 100 }, () => limiter.take()).filter(Boolean).length;
    }
    expect(20 + 10 + more).toBe(50);
  });

  test('when 10 000 attempts to 10 000 destinations are logged, then 20 lines are written and the summary has bounded keys', () => {
    const lines: object[] = [];
    const log = createLog({ logFirst: 20, write: (l) => lines.push(l) });
    for (let i = 0; i < 10_000; i++) {
      log.record({
        at: i,
        host: `h${i}.example`,
        port: 80,
        allowed: i % 2 === 0,
        reason: `reason-${i % 100}`,
      });
    }
    expect(lines).toHaveLength(20);
    const { summary } = log.summary();
    expect(summary).toMatchObject({ total: 10_000, allowed: 5000, denied: 5000, individual: 20 });
    expect(summary.destinations).toHaveLength(32);
    expect(summary.other.allowed + summary.other.denied).toBe(10_000 - 32);
    expect(Object.keys(summary.reasons)).toHaveLength(33); // 32 reasons, then `other`
    expect(Object.values(summary.reasons).reduce((a, b) => a + b, 0)).toBe(10_000);
    expect(JSON.stringify(summary).length).toBeLessThan(8 * 1024);
  });
});

describe('the proxy on loopback', () => {
  let target: Server;
  let targetPort: number;
  const seen: string[] = [];

  beforeAll(async () => {
    target = createServer((req, res) => {
      seen.push(`${req.socket.localAddress} ${req.headers.host}`);
      res.end('from-target');
    });
    await new Promise<void>((r) => target.listen(0, '127.0.0.1', r));
    targetPort = (target.address() as AddressInfo).port;
  });
  afterAll(() => new Promise<void>((r) => target.close(() => r())));

  async function withProxy<T>(
    env: Record<string, string>,
    lookup: Lookup,
    fn: (port: number, lines: object[]) => Promise<T>,
  ): Promise<T> {
    const lines: object[] = [];
    const proxy = createProxy(env, { lookup, write: (l) => lines.push(l) });
    await new Promise<void>((r) => proxy.server.listen(0, '127.0.0.1', r));
    try {
      return await fn((proxy.server.address() as AddressInfo).port, lines);
    } finally {
      proxy.server.closeAllConnections();
      await new Promise<void>((r) => proxy.server.close(() => r()));
    }
  }

  function get(proxyPort: number, url: string): Promise<string> {
    return new Promise((resolve, reject) => {
      const req = request(
        { host: '127.0.0.1', port: proxyPort, path: url, headers: { host: new URL(url).host } },
        (res) => {
          let body = '';
          res.on('data', (c: Buffer) => (body += c.toString()));
          res.on('end', () => resolve(`${res.statusCode} ${body.trim()}`));
        },
      );
      req.on('error', reject);
      req.end();
    });
  }

  test('when a name resolves to loopback, then it is refused by address even though it is allow-listed', async () => {
    const lookup: Lookup = (_h, _o, cb) => cb(null, [{ address: '127.0.0.1', family: 4 }]);
    await withProxy({ CHOIROS_EGRESS_ALLOW: `sneaky.example:${targetPort}` }, lookup, async (port) => {
      const before = seen.length;
      expect(await get(port, `http://sneaky.example:${targetPort}/`)).toBe(
        `403 egress to sneaky.example:${targetPort} denied (address loopback)`,
      );
      expect(seen.length).toBe(before);
    });
  });

  test('when one of several addresses is internal, then the name is refused whole', async () => {
    const lookup: Lookup = (_h, _o, cb) =>
      cb(null, [
        { address: '8.8.8.8', family: 4 },
        { address: '::ffff:169.254.169.254', family: 6 },
      ]);
    await withProxy({ CHOIROS_EGRESS_ALLOW: 'mixed.example:80' }, lookup, async (port) => {
      expect(await get(port, 'http://mixed.example/')).toBe(
        '403 egress to mixed.example:80 denied (address ipv4-mapped link-local)',
      );
    });
  });

  test('when DNS answers differently on a second lookup, then the proxy never asks again and connects to the address it checked', async () => {
    let lookups = 0;
    // First answer: the excepted address; any later answer would be another loopback address.
    const lookup: Lookup = (_h, _o, cb) =>
      cb(null, [{ address: lookups++ === 0 ? '127.0.0.1' : '127.0.0.2', family: 4 }]);
    await withProxy(
      { CHOIROS_EGRESS_ALLOW: `rebind.example:${targetPort}`, CHOIROS_EGRESS_ALLOW_CIDRS: '127.0.0.1/32' },
      lookup,
      async (port) => {
        const before = seen.length;
        expect(await get(port, `http://rebind.example:${targetPort}/`)).toBe('200 from-target');
        expect(lookups).toBe(1);
        // The target saw the checked address and the client's own Host header.
        expect(seen.slice(before)).toEqual([`127.0.0.1 rebind.example:${targetPort}`]);
        expect(await get(port, `http://rebind.example:${targetPort}/`)).toBe(
          `403 egress to rebind.example:${targetPort} denied (address loopback)`,
        );
      },
    );
  });

  test('when IP literals come in any notation, then none is resolved and each is refused', async () => {
    let lookups = 0;
    const lookup: Lookup = (_h, _o, cb) => {
      lookups++;
      cb(null, [{ address: '127.0.0.1', family: 4 }]);
    };
    const proxy = createProxy(
      { CHOIROS_EGRESS_ALLOW: '2130706433:80,0x7f000001:80,0177.0.0.1:80,127.1:80' },
      { lookup, write: () => undefined },
    );
    for (const h of ['2130706433', '0x7f000001', '0177.0.0.1', '127.1', '[::1]', '[::ffff:127.0.0.1]']) {
      await expect(proxy.decide(h, 80)).resolves.toMatchObject({ allowed: false, reason: 'ip literal' });
    }
    expect(lookups).toBe(0);
  });

  test('when a client floods the proxy, then attempts beyond the bucket are rate_limited with 429 and only 20 are logged', async () => {
    const lookup: Lookup = (_h, _o, cb) => cb(null, [{ address: '127.0.0.1', family: 4 }]);
    await withProxy(
      {
        CHOIROS_EGRESS_RATE_PER_SECOND: '5',
        CHOIROS_EGRESS_BURST: '10',
        CHOIROS_EGRESS_MAX_ATTEMPTS: '1000',
      },
      lookup,
      async (port, lines) => {
        const results: string[] = [];
        for (let i = 0; i < 200; i++)
          results.push((await get(port, `http://flood${i}.example/`)).slice(0, 3));
        expect(results.filter((r) => r === '403').length).toBeGreaterThanOrEqual(10);
        expect(results.filter((r) => r === '429').length).toBeGreaterThan(150);
        expect(lines).toHaveLength(20);
      },
    );
  });
});
