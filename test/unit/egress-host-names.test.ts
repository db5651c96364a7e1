/** Egress allow-list names at the API: host names only, never an IP address in any notation. */
import fc from 'fast-check';
import { egressRuleSchema, hostNameSchema, isIpLikeHostName, runRequestSchema } from '../../contracts';

describe('hostNameSchema', () => {
  test.each([
    '127.0.0.1',
    '2130706433',
    '0x7f000001',
    '0177.0.0.1',
    '127.1',
    '169.254.169.254',
    '10.0.0.1.',
    'example.0x1',
    'internal.123',
    '0x',
    '[::1]',
    '::1',
    '[::ffff:127.0.0.1]',
    '::ffff:127.0.0.1',
    'fe80::1',
    'LOCALHOST',
  ])('when the name is %s, then it is rejected', (host) => {
    expect(hostNameSchema.safeParse(host).success).toBe(false);
  });

  test.each([
    'localhost',
    'example.com',
    'api.github.com',
    '1e100.net',
    'a.0x1g',
    'x-1.example',
    '0x.example',
  ])('when the name is %s, then it is accepted (what it resolves to is the proxy’s check)', (host) => {
    expect(hostNameSchema.safeParse(host).success).toBe(true);
  });

  test('when any IPv4 address is written in dotted, decimal, hex or short form, then it is rejected', () => {
    fc.assert(
      fc.property(fc.ipV4(), (ip) => {
        const n = ip.split('.').reduce((a, o) => a * 256 + Number(o), 0);
        const [a = '0', b = '0', c = '0', d = '0'] = ip.split('.');
        for (const form of [
          ip,
          String(n),
          `0x${n.toString(16)}`,
          `0${Number(a).toString(8)}.${b}.${c}.${d}`,
          `${a}.${Number(b) * 65536 + Number(c) * 256 + Number(d)}`,
        ]) {
          expect(isIpLikeHostName(form)).toBe(true);
          expect(hostNameSchema.safeParse(form).success).toBe(false);
        }
      }),
    );
  });

  test('when an egress rule names an IP-looking host, then the run request is invalid', () => {
    const request = (host: string) =>
      runRequestSchema.safeParse({
        repo: '/srv/x',
        network: 'allowlist',
        egress: [{ host, port: 80 }],
        workItem: { description: 'x', execute: ['true'] },
      }).success;
    expect(request('example.com')).toBe(true);
    expect(request('2130706433')).toBe(false);
    expect(egressRuleSchema.safeParse({ host: '0x7f000001', port: 80 }).success).toBe(false);
  });
});
