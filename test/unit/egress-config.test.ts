/** The egress settings of the worker: trusted CIDR lists, parsed and checked once at start. */
import { loadWorkerConfig } from '../../worker/config';

describe('CHOIROS_EGRESS_* settings', () => {
  test('when unset, then no address range is excepted or denied and the bounds have their defaults', () => {
    const c = loadWorkerConfig({});
    expect(c.CHOIROS_EGRESS_ALLOW_CIDRS).toEqual([]);
    expect(c.CHOIROS_EGRESS_DENY_CIDRS).toEqual([]);
    expect(c.CHOIROS_EGRESS_RATE_PER_SECOND).toBe(50);
    expect(c.CHOIROS_EGRESS_MAX_ATTEMPTS).toBe(1000);
  });

  test('when CIDRs are listed, then they are split and trimmed; a bare address stands for itself', () => {
    const c = loadWorkerConfig({
      CHOIROS_EGRESS_ALLOW_CIDRS: '172.18.0.5/32, 10.1.0.0/16',
      CHOIROS_EGRESS_DENY_CIDRS: '203.0.113.7,2001:db8::/32',
    });
    expect(c.CHOIROS_EGRESS_ALLOW_CIDRS).toEqual(['172.18.0.5/32', '10.1.0.0/16']);
    expect(c.CHOIROS_EGRESS_DENY_CIDRS).toEqual(['203.0.113.7', '2001:db8::/32']);
  });

  test.each(['10.0.0.0/33', 'localhost', '10.0.0/8', '::1/129', '1.2.3.4/8/9', '1.2.3.4/x'])(
    'when a CIDR is malformed (%s), then the worker refuses to start',
    (bad) => {
      expect(() => loadWorkerConfig({ CHOIROS_EGRESS_ALLOW_CIDRS: bad })).toThrow(
        /CHOIROS_EGRESS_ALLOW_CIDRS/,
      );
      expect(() => loadWorkerConfig({ CHOIROS_EGRESS_DENY_CIDRS: bad })).toThrow(/CHOIROS_EGRESS_DENY_CIDRS/);
    },
  );
});
