/** Verifier plans: pure sha256, scope matching and the selection function, table-driven. */
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  parseVerifierFile,
  scopeMatches,
  selectVerifierPlan,
  sha256Hex,
  type Mood,
  type VerifierPlanInput,
} from '../../contracts';

const nodeSha = (b: string | Buffer): string => createHash('sha256').update(b).digest('hex');

describe('sha256Hex (pure JS)', () => {
  test.each(['', 'abc', 'a'.repeat(55), 'a'.repeat(56), 'a'.repeat(64), 'é✓ unicode', 'x'.repeat(1000)])(
    'when hashing %j, then it equals node:crypto',
    (text) => {
      expect(sha256Hex(text)).toBe(nodeSha(text));
    },
  );
  test('when hashing random bytes of many lengths, then it equals node:crypto', () => {
    for (let n = 0; n < 300; n += 7) {
      const bytes = randomBytes(n);
      expect(sha256Hex(new Uint8Array(bytes))).toBe(nodeSha(bytes));
    }
  });
});

describe('scopeMatches', () => {
  test.each<[string, string, boolean]>([
    ['src/', 'src/a.ts', true],
    ['src/', 'src/deep/a.ts', true],
    ['src/', 'srcx/a.ts', false],
    ['src/', 'lib/src/a.ts', false],
    ['.github/', '.github/workflows/ci.yml', true],
    ['.github/', 'github/workflows/ci.yml', false],
    ['*.md', 'README.md', true],
    ['*.md', 'docs/README.md', false],
    ['**/*.md', 'docs/deep/README.md', true],
    ['**/*.md', 'README.md', true],
    ['docs/**', 'docs/a/b.txt', true],
    ['src/*.ts', 'src/a.ts', true],
    ['src/*.ts', 'src/a/b.ts', false],
    ['src/?.ts', 'src/a.ts', true],
    ['src/?.ts', 'src/ab.ts', false],
    ['file[0-9].txt', 'file7.txt', true],
    ['file[!0-9].txt', 'file7.txt', false],
    ['.env*', '.env.local', true],
    ['a.b', 'aXb', false],
    ['package.json', 'package.json', true],
    ['package.json', 'sub/package.json', false],
  ])('when scope is %j and path is %j, then match is %s', (scope, path, expected) => {
    expect(scopeMatches(scope, path)).toBe(expected);
  });
});

const catalog = parseVerifierFile(
  `
version: 1
profiles:
  default: [V-UNIT]
  SKEPTICAL: [V-UNIT, V-LINT]
  BOLD: []
verifiers:
  - { id: V-UNIT, description: unit, argv: ['true'] }
  - { id: V-LINT, description: lint, argv: ['true'] }
  - { id: V-DOCS, description: docs, argv: ['true'], scopes: ['docs/', '*.md'] }
  - { id: V-CI, description: ci, argv: ['true'], scopes: ['.github/'] }
  - { id: V-SEC, description: sec, argv: ['true'], scopes: ['src/auth/'], moods: [PARANOID, SKEPTICAL] }
`,
  'plan-test.yaml',
);

const input = (over: Partial<VerifierPlanInput> = {}): VerifierPlanInput => ({
  mood: 'CALM',
  required: [],
  touchedPaths: [],
  riskTier: 'low',
  ...over,
});

describe('selectVerifierPlan', () => {
  test.each<[string, Partial<VerifierPlanInput>, string[], string[]]>([
    ['nothing touched, CALM: the default profile', {}, ['V-UNIT'], []],
    ['SKEPTICAL: its own profile', { mood: 'SKEPTICAL' }, ['V-LINT', 'V-UNIT'], []],
    ['BOLD: an empty profile overrides the default', { mood: 'BOLD' }, [], []],
    ['required ids are added', { required: ['V-LINT'] }, ['V-LINT', 'V-UNIT'], []],
    [
      'unknown required ids are reported',
      { required: ['V-NOPE', 'V-LINT'] },
      ['V-LINT', 'V-UNIT'],
      ['V-NOPE'],
    ],
    ['a prefix scope selects', { touchedPaths: ['docs/guide/x.txt'] }, ['V-DOCS', 'V-UNIT'], []],
    ['a glob scope selects', { touchedPaths: ['CHANGELOG.md'] }, ['V-DOCS', 'V-UNIT'], []],
    ['a leading dot is kept', { touchedPaths: ['.github/workflows/ci.yml'] }, ['V-CI', 'V-UNIT'], []],
    ['dot-stripped path does not match', { touchedPaths: ['github/workflows/ci.yml'] }, ['V-UNIT'], []],
    ['mood-restricted scope, other mood', { touchedPaths: ['src/auth/login.ts'] }, ['V-UNIT'], []],
    [
      'mood-restricted scope, its mood',
      { mood: 'PARANOID', touchedPaths: ['src/auth/login.ts'] },
      ['V-SEC', 'V-UNIT'],
      [],
    ],
  ])('when %s, then the plan is right', (_name, over, ids, unknown) => {
    const plan = selectVerifierPlan(catalog, input(over));
    expect(plan.verifierIds).toEqual(ids);
    expect(plan.unknownRequired).toEqual(unknown);
  });

  test('when a verifier is selected for several reasons, then each is recorded', () => {
    const plan = selectVerifierPlan(
      catalog,
      input({ required: ['V-DOCS'], touchedPaths: ['a.md', 'docs/x'] }),
    );
    expect(plan.reasons['V-DOCS']).toEqual(['required', 'scope:*.md', 'scope:docs/']);
    expect(plan.reasons['V-UNIT']).toEqual(['profile']);
  });

  test('when inputs are permuted or repeated, then the plan and its id are identical', () => {
    const a = selectVerifierPlan(
      catalog,
      input({ required: ['V-LINT', 'V-DOCS'], touchedPaths: ['b', 'a', 'a'] }),
    );
    const b = selectVerifierPlan(
      catalog,
      input({ required: ['V-DOCS', 'V-LINT'], touchedPaths: ['a', 'b'] }),
    );
    expect(b).toEqual(a);
    expect(a.planId).toMatch(/^[0-9a-f]{64}$/);
  });

  test('when only the risk tier differs, then the selection is equal and the plan id differs', () => {
    const low = selectVerifierPlan(catalog, input({ riskTier: 'low' }));
    const high = selectVerifierPlan(catalog, input({ riskTier: 'high' }));
    expect(high.verifierIds).toEqual(low.verifierIds);
    expect(high.planId).not.toBe(low.planId);
  });

  test('when computed, then the plan id is sha256("plan:" + sha256(canonical inputs))', () => {
    const plan = selectVerifierPlan(catalog, input({ required: ['V-NOPE'], touchedPaths: ['.github/x'] }));
    const canonical =
      '{"mood":"CALM","required":["V-NOPE"],"risk_tier":"low","touched_paths":[".github/x"],' +
      '"unknown_required":["V-NOPE"],"verifier_ids":["V-CI","V-UNIT"]}';
    expect(plan.inputsHash).toBe(nodeSha(canonical));
    expect(plan.planId).toBe(nodeSha(`plan:${nodeSha(canonical)}`));
  });

  test.each<Mood>(['CALM', 'PARANOID'])(
    'when the mood is %s, then the result is stable across calls',
    (mood) => {
      expect(selectVerifierPlan(catalog, input({ mood }))).toEqual(
        selectVerifierPlan(catalog, input({ mood })),
      );
    },
  );
});

describe('allow-list files of the repository', () => {
  test.each(['infra/verifiers.yaml', 'test/fixtures/verifiers.yaml'])(
    'when %s is parsed, then it is valid',
    (f) => {
      const text = readFileSync(join(__dirname, '../..', f), 'utf8');
      expect(parseVerifierFile(text, f).ids().length).toBeGreaterThan(0);
    },
  );

  test('when a profile names an unknown verifier, then parsing fails naming it', () => {
    expect(() =>
      parseVerifierFile(
        'version: 1\nprofiles: {CALM: [V-X]}\nverifiers:\n  - {id: V-1, description: x, argv: [a]}\n',
        'p.yaml',
      ),
    ).toThrow(/p\.yaml: profiles\.CALM\.0 unknown verifier V-X/);
  });

  test('when a profile is not a mood, then parsing fails', () => {
    expect(() =>
      parseVerifierFile(
        'version: 1\nprofiles: {SLEEPY: []}\nverifiers:\n  - {id: V-1, description: x, argv: [a]}\n',
        'p.yaml',
      ),
    ).toThrow(/profiles/);
  });
});
