/** The mood engine: the policy table, approval requirements and verifier judgement are pure and deterministic. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  MOODS,
  MOOD_POLICIES,
  approvalPolicy,
  judgeVerifierAttempts,
  moodPolicy,
  nextVerifierAttempt,
  stricterMood,
  type Mood,
  type VerifierResult,
} from '../../contracts';

describe('the policy table', () => {
  test('when any mood is looked up, then it has a policy of its own (no mood falls through)', () => {
    for (const mood of MOODS) expect(moodPolicy(mood).mood).toBe(mood);
    expect(Object.keys(MOOD_POLICIES).sort()).toEqual([...MOODS].sort());
  });

  test('when a work item keeps failing, then stricter moods lead to PARANOID and stop there', () => {
    for (const mood of MOODS) {
      const seen = new Set<Mood>([mood]);
      let m: Mood = mood;
      while (m !== 'PARANOID') {
        m = stricterMood(m);
        expect(seen.has(m)).toBe(false);
        seen.add(m);
      }
    }
    expect(stricterMood('CALM')).toBe('SKEPTICAL');
    expect(stricterMood('SKEPTICAL')).toBe('PARANOID');
    expect(stricterMood('PARANOID')).toBe('PARANOID');
  });

  test('when PARANOID, then no network, confirmations and independent review', () => {
    expect(moodPolicy('PARANOID')).toMatchObject({ egress: 'none', confirmRuns: 1, approval: 'independent' });
    expect(moodPolicy('DEFERENTIAL').interruptBeforeExecute).toBe(true);
  });
});

describe('approval requirements', () => {
  const table: [Mood, string, { required?: boolean; quorum?: number }, string, number][] = [
    ['CALM', 'low', {}, 'none', 0],
    ['CALM', 'medium', {}, 'owner', 1],
    ['CALM', 'high', {}, 'independent', 1],
    ['CONTRITE', 'low', {}, 'owner', 1],
    ['PARANOID', 'low', {}, 'independent', 1],
    ['CALM', 'low', { required: true }, 'owner', 1],
    ['CALM', 'low', { quorum: 3 }, 'owner', 3],
    ['PARANOID', 'medium', { quorum: 2 }, 'independent', 2],
  ];
  test.each(table)(
    'when mood %s, risk %s and request %j, then %s with quorum %d',
    (mood, risk, review, req, quorum) => {
      const p = approvalPolicy(mood, risk, review);
      expect(p.requirement).toBe(req);
      expect(p.quorum).toBe(quorum);
      if (req !== 'none') expect(p.reasons.length).toBeGreaterThan(0);
    },
  );
});

describe('verifier judgement', () => {
  const calm = moodPolicy('CALM');
  const skeptical = moodPolicy('SKEPTICAL');
  const paranoid = moodPolicy('PARANOID');
  const judge: [string, VerifierResult[], Mood, VerifierResult, boolean][] = [
    ['a single pass', ['pass'], 'CALM', 'pass', false],
    ['a fail then a pass, flaky passes', ['fail', 'pass'], 'CALM', 'pass', true],
    ['a fail then a pass, flaky fails', ['fail', 'pass'], 'SKEPTICAL', 'fail', true],
    ['fails only', ['fail', 'fail', 'fail'], 'SKEPTICAL', 'fail', false],
    ['a timeout first', ['timeout', 'fail'], 'SKEPTICAL', 'timeout', false],
    ['a pass not confirmed', ['pass', 'fail'], 'PARANOID', 'fail', true],
    ['a pass confirmed', ['pass', 'pass'], 'PARANOID', 'pass', false],
    ['no attempts', [], 'CALM', 'error', false],
  ];
  test.each(judge)('when %s (%j in %s), then %s, flaky %s', (_n, attempts, mood, result, flaky) => {
    expect(judgeVerifierAttempts(attempts, moodPolicy(mood))).toEqual({ result, flaky });
  });

  test('when attempts are planned, then failures rerun up to the lower of mood and budget, passes are confirmed only where the mood asks', () => {
    expect(nextVerifierAttempt(['fail'], calm, 5)).toBe('rerun');
    expect(nextVerifierAttempt(['fail', 'fail'], calm, 5)).toBe('done');
    expect(nextVerifierAttempt(['fail', 'fail'], skeptical, 5)).toBe('rerun');
    expect(nextVerifierAttempt(['fail'], skeptical, 0)).toBe('done');
    expect(nextVerifierAttempt(['fail', 'pass'], skeptical, 5)).toBe('done');
    expect(nextVerifierAttempt(['pass'], calm, 5)).toBe('done');
    expect(nextVerifierAttempt(['pass'], paranoid, 5)).toBe('confirm');
    expect(nextVerifierAttempt(['pass', 'pass'], paranoid, 5)).toBe('done');
    expect(nextVerifierAttempt(['pass', 'fail'], paranoid, 5)).toBe('done');
  });
});

/** One row of the table in docs/moods.md, built from the policy so the doc cannot drift. */
function moodRow(p: (typeof MOOD_POLICIES)[Mood]): string {
  const cells = [
    p.mood,
    p.verifierReruns,
    p.confirmRuns,
    p.flakyPasses ? 'yes' : 'no',
    p.egress === 'none' ? 'none (forced)' : 'as requested',
    p.approval,
    p.interruptBeforeExecute ? 'yes' : 'no',
    `${p.wallClockSeconds / 3600} h`,
    p.stricter ?? '–',
    p.summary,
  ];
  return `| ${cells.join(' | ')} |`;
}

test('when docs/moods.md is read, then its table matches the policy table row for row', () => {
  // Cell padding is prettier's business: compare cells, not spaces.
  const norm = (s: string): string => s.replace(/[ \t]+/g, ' ').replace(/ ?\| ?/g, '|');
  const doc = norm(readFileSync(join(__dirname, '../../docs/moods.md'), 'utf8'));
  for (const mood of MOODS) expect(doc).toContain(norm(moodRow(MOOD_POLICIES[mood])));
});
