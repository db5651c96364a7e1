/** Pure contracts: ids, subjects, the run request schema, canonical JSON, the verifier file. */
import {
  canonicalJson,
  eventEnvelopeSchema,
  isGitUrl,
  isValidId,
  parseVerifierFile,
  refSchema,
  runEventSubject,
  runRequestSchema,
  runStartMetadata,
  userInboxPrefix,
  userSubjectPrefix,
} from '../../contracts';

describe('ids and subjects', () => {
  test.each(['alice', 'A_b-9', 'x'.repeat(64)])('when the id is %s, then it is valid', (id) => {
    expect(isValidId(id)).toBe(true);
  });

  test.each(['', 'a.b', 'a*', 'a>', 'a b', '../x', 'x'.repeat(65), 'é'])(
    'when the id is %j, then it is rejected',
    (id) => {
      expect(isValidId(id)).toBe(false);
    },
  );

  test('when building subjects, then they follow choiros.<tenant>.<user>.run.<run>.<type> and refuse wildcards', () => {
    const alice = { tenant: 'acme', userId: 'alice' };
    expect(runEventSubject(alice, 'run-1', 'note.status')).toBe('choiros.acme.alice.run.run-1.note.status');
    expect(userSubjectPrefix(alice)).toBe('choiros.acme.alice.>');
    expect(userInboxPrefix(alice)).toBe('_INBOX_acme.alice');
    expect(() => runEventSubject({ tenant: 'acme', userId: 'alice.*' }, 'run-1', 'note.status')).toThrow(
      /userId/,
    );
    expect(() => runEventSubject({ tenant: 'ac.me', userId: 'alice' }, 'run-1', 'note.status')).toThrow(
      /tenant/,
    );
    expect(() => runEventSubject(alice, 'run-1', 'Note.Status')).toThrow(/event type/);
  });

  test('when the same user id is in two tenants, then their prefixes and inboxes are disjoint, and no pair of (tenant, user) shares one', () => {
    const a = { tenant: 'acme', userId: 'alice' };
    const g = { tenant: 'globex', userId: 'alice' };
    expect(userSubjectPrefix(a)).not.toBe(userSubjectPrefix(g));
    // `_` and `-` are id characters: joining tenant and user with either would let a_b/c meet a/b_c.
    expect(userInboxPrefix({ tenant: 'a_b', userId: 'c' })).not.toBe(
      userInboxPrefix({ tenant: 'a', userId: 'b_c' }),
    );
    expect(userSubjectPrefix({ tenant: 'a_b', userId: 'c' })).not.toBe(
      userSubjectPrefix({ tenant: 'a', userId: 'b_c' }),
    );
  });
});

describe('git refs', () => {
  test.each(['main', 'feature/x', 'v1.2.3', 'a1b2c3d'])('when the ref is %s, then it is accepted', (r) => {
    expect(refSchema.safeParse(r).success).toBe(true);
  });
  test.each(['-x', '--upload-pack=x', 'a..b', 'a/', 'x.lock', 'a b', 'HEAD@{1}', ''])(
    'when the ref is %j, then it is refused',
    (r) => {
      expect(refSchema.safeParse(r).success).toBe(false);
    },
  );
});

describe('run request', () => {
  const base = { repo: '/srv/repo', workItem: { description: 'd', execute: ['true'] } };

  test('when optional fields are missing, then defaults apply', () => {
    const r = runRequestSchema.parse(base);
    expect(r).toMatchObject({
      baseRef: 'main',
      mood: 'CALM',
      workItem: { riskTier: 'low', requiredVerifiers: [], acceptanceCriteria: [] },
    });
  });

  test('when execute has an empty program or a NUL byte, then it is refused', () => {
    expect(
      runRequestSchema.safeParse({ ...base, workItem: { ...base.workItem, execute: [''] } }).success,
    ).toBe(false);
    expect(
      runRequestSchema.safeParse({ ...base, workItem: { ...base.workItem, execute: ['a\0b'] } }).success,
    ).toBe(false);
  });

  test.each([
    ['file:///srv/repo.git', true],
    ['file:///srv/my_repo-1/.git', true],
    ['file:///srv/../etc', false],
    ['file://host/srv/repo', false],
    ['file:///srv/repo --upload-pack=touch', false],
    ['ext::sh -c touch% /tmp/pwned', false],
    ['-uhttps://x', false],
    ['https://example.invalid/r.git', true],
    ['https://git.example.invalid:8443/acme/app', true],
    ['http://127.0.0.1:8080/acme/app.git', true],
    ['http://localhost/acme/app.git', true],
    ['http://example.invalid/r.git', false],
    ['https://user:tok@example.invalid/r.git', false],
    ['https://tok@example.invalid/r.git', false],
    ['https://example.invalid/r.git?x=1', false],
    ['https://example.invalid/a/../r.git', false],
    ['https://example.invalid//r.git', false],
    ['https://-oProxyCommand=x/r.git', false],
    ['https://EXAMPLE.invalid/r.git', false],
    ['ssh://git@example.invalid/r.git', false],
  ])('when the repo is %j, then accepted is %s', (repo, ok) => {
    expect(isGitUrl(repo)).toBe(ok);
    expect(runRequestSchema.safeParse({ ...base, repo }).success).toBe(ok);
  });

  test('when the repo has .. segments or is a URL, then it is refused with a message', () => {
    const dots = runRequestSchema.safeParse({ ...base, repo: '/srv/../etc' });
    expect(dots.success).toBe(false);
    const url = runRequestSchema.safeParse({ ...base, repo: 'ssh://example.invalid/r.git' });
    expect(url.success).toBe(false);
    expect(url.error?.issues[0]?.message).toMatch(/absolute path/);
    // Embedded credentials get their own message, which never repeats the value.
    const creds = runRequestSchema.safeParse({ ...base, repo: 'https://u:s3cret@example.invalid/r.git' });
    expect(creds.error?.issues.map((i) => i.message)).toEqual([
      "must not embed credentials: name the repository host's credentials in the tenants file",
    ]);
  });
});

describe('event envelope', () => {
  test('when an event has the v0 fields plus ours, then it validates; unknown fields are refused', () => {
    const ev = {
      schema_version: 1,
      id: 'run-1:1',
      timestamp: 1,
      user_id: 'alice',
      source: 'system',
      event_type: 'run.created',
      payload: {},
      tenant: 'acme',
      run_id: 'run-1',
      seq: 1,
    };
    expect(eventEnvelopeSchema.safeParse(ev).success).toBe(true);
    expect(eventEnvelopeSchema.safeParse({ ...ev, extra: 1 }).success).toBe(false);
    expect(eventEnvelopeSchema.safeParse({ ...ev, seq: 0 }).success).toBe(false);
  });
});

describe('canonical JSON', () => {
  test('when keys are in any order, then the bytes are the same', () => {
    expect(canonicalJson({ b: 1, a: [{ d: 2, c: null }], e: undefined })).toBe(
      '{"a":[{"c":null,"d":2}],"b":1}',
    );
    expect(canonicalJson({ a: 1, b: 2 })).toBe(canonicalJson({ b: 2, a: 1 }));
  });
  test('when a number is not finite, then it throws', () => {
    expect(() => canonicalJson({ a: Infinity })).toThrow();
  });
});

describe('verifier allow-list', () => {
  test('when the file is valid YAML, then verifiers are looked up by id', () => {
    const c = parseVerifierFile(
      'version: 1\nverifiers:\n  - id: V-1\n    description: x\n    argv: ["true"]\n',
      'f.yaml',
    );
    expect(c.get('V-1')).toMatchObject({ argv: ['true'], timeoutSeconds: 300 });
    expect(c.ids()).toEqual(['V-1']);
  });
  test('when ids repeat or argv is a string, then the error names the file and field', () => {
    expect(() =>
      parseVerifierFile(
        'version: 1\nverifiers:\n  - {id: V-1, description: x, argv: [a]}\n  - {id: V-1, description: y, argv: [b]}\n',
        'f.yaml',
      ),
    ).toThrow(/f\.yaml: verifiers\.1\.id duplicate/);
    expect(() =>
      parseVerifierFile(
        'version: 1\nverifiers:\n  - {id: V-1, description: x, argv: "rm -rf /"}\n',
        'g.yaml',
      ),
    ).toThrow(/g\.yaml: verifiers\.0\.argv/);
  });
});

test('when a run starts (API, graph child or bench), then its memo and search attributes come from its input', () => {
  const { memo, typedSearchAttributes } = runStartMetadata({
    runId: 'run-1',
    tenant: 'acme',
    userId: 'alice',
    requestHash: 'h',
    requestedAt: 5,
    startedBy: { scopes: ['runs:write'], tokenId: 'jti-1' },
    graph: { graphId: 'graph-1', itemId: 'A', attempt: 2 },
    request: {
      repo: '/srv/repo',
      baseRef: 'main',
      mood: 'SKEPTICAL',
      workItem: {
        id: 'A',
        description: 'x'.repeat(600),
        execute: ['sh', '-c', 'true'],
        requiredVerifiers: ['V-1'],
        riskTier: 'medium',
        acceptanceCriteria: [],
        dependsOn: [],
      },
    },
  });
  expect(memo).toMatchObject({
    requestHash: 'h',
    requestedAt: 5,
    startedByTokenId: 'jti-1',
    graphId: 'graph-1',
  });
  expect(memo.summary).toMatchObject({
    workItemId: 'A',
    mood: 'SKEPTICAL',
    execute: 'sh -c true',
    riskTier: 'medium',
  });
  expect(memo.summary.description).toHaveLength(500);
  expect(Object.fromEntries(typedSearchAttributes.map((p) => [p.key.name, p.value]))).toEqual({
    ChoirTenant: 'acme',
    ChoirUserId: 'alice',
    ChoirRunStatus: 'created',
    ChoirMood: 'SKEPTICAL',
    ChoirRepo: '/srv/repo',
  });
});
