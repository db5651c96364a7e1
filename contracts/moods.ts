/**
 * The mood engine: each mood is a fixed policy bundle (verifier strictness, egress, budgets,
 * approval, interrupts); stricter moods and the approval a run needs follow from pure functions,
 * so workflows call them directly and replay gives the same answers.
 */
import type { Mood, VerifierResult } from './run';

/** Who must approve before a run commits. */
export type ApprovalRequirement = 'none' | 'owner' | 'independent';

export interface MoodPolicy {
  mood: Mood;
  /** One line for docs, events and the Temporal UI. */
  summary: string;
  /** Times a verifier that did not pass is run again in a fresh verifier container. */
  verifierReruns: number;
  /** Extra runs of a verifier that passed; each must pass too (independent confirmation). */
  confirmRuns: number;
  /** Whether a verifier that passed only on a rerun counts as a pass (`flaky` is recorded either way). */
  flakyPasses: boolean;
  /** `none` forces the execution lane off the network whatever the request asks. */
  egress: 'as_requested' | 'none';
  /** Approval the mood asks for before commit (the risk tier can raise it). */
  approval: ApprovalRequirement;
  /** A human confirms the command before it executes (a REQUEST_REVIEW interrupt). */
  interruptBeforeExecute: boolean;
  /** Default wall-clock budget of the whole run, seconds (the request may lower it). */
  wallClockSeconds: number;
  /** The next stricter mood, for a retried work item; null at the top. */
  stricter: Mood | null;
}

const HOUR = 3600;

/** The policy table. Deterministic and versioned with the code; docs/moods.md explains it. */
export const MOOD_POLICIES: Readonly<Record<Mood, MoodPolicy>> = {
  CALM: {
    mood: 'CALM',
    summary: 'the default: one rerun of a failing verifier; a pass on the rerun counts (recorded as flaky)',
    verifierReruns: 1,
    confirmRuns: 0,
    flakyPasses: true,
    egress: 'as_requested',
    approval: 'none',
    interruptBeforeExecute: false,
    wallClockSeconds: HOUR,
    stricter: 'SKEPTICAL',
  },
  CURIOUS: {
    mood: 'CURIOUS',
    summary: "exploratory: like CALM; the allow-list's CURIOUS profile chooses the checks",
    verifierReruns: 1,
    confirmRuns: 0,
    flakyPasses: true,
    egress: 'as_requested',
    approval: 'none',
    interruptBeforeExecute: false,
    wallClockSeconds: HOUR,
    stricter: 'SKEPTICAL',
  },
  BOLD: {
    mood: 'BOLD',
    summary: 'fast: no reruns, a failure is final',
    verifierReruns: 0,
    confirmRuns: 0,
    flakyPasses: false,
    egress: 'as_requested',
    approval: 'none',
    interruptBeforeExecute: false,
    wallClockSeconds: HOUR,
    stricter: 'SKEPTICAL',
  },
  PETTY: {
    mood: 'PETTY',
    summary: 'strict about noise: no reruns, a flaky result fails',
    verifierReruns: 0,
    confirmRuns: 0,
    flakyPasses: false,
    egress: 'as_requested',
    approval: 'none',
    interruptBeforeExecute: false,
    wallClockSeconds: HOUR,
    stricter: 'SKEPTICAL',
  },
  SKEPTICAL: {
    mood: 'SKEPTICAL',
    summary: 'failures rerun twice to tell flaky from broken, but a flaky verifier still fails the run',
    verifierReruns: 2,
    confirmRuns: 0,
    flakyPasses: false,
    egress: 'as_requested',
    approval: 'none',
    interruptBeforeExecute: false,
    wallClockSeconds: HOUR,
    stricter: 'PARANOID',
  },
  CONTRITE: {
    mood: 'CONTRITE',
    summary: 'after a mistake: flaky results fail, the owner approves the commit',
    verifierReruns: 1,
    confirmRuns: 0,
    flakyPasses: false,
    egress: 'as_requested',
    approval: 'owner',
    interruptBeforeExecute: false,
    wallClockSeconds: HOUR,
    stricter: 'PARANOID',
  },
  DEFERENTIAL: {
    mood: 'DEFERENTIAL',
    summary: 'asks first: a human reviews the command before it runs and approves the commit',
    verifierReruns: 1,
    confirmRuns: 0,
    flakyPasses: false,
    egress: 'as_requested',
    approval: 'owner',
    interruptBeforeExecute: true,
    wallClockSeconds: 4 * HOUR,
    stricter: 'PARANOID',
  },
  PARANOID: {
    mood: 'PARANOID',
    summary: 'no network, every pass confirmed by an independent rerun, independent review before commit',
    verifierReruns: 0,
    confirmRuns: 1,
    flakyPasses: false,
    egress: 'none',
    approval: 'independent',
    interruptBeforeExecute: false,
    wallClockSeconds: 4 * HOUR,
    stricter: null,
  },
};

export function moodPolicy(mood: Mood): MoodPolicy {
  return MOOD_POLICIES[mood];
}

/** The mood a failed work item is retried in; the mood itself when there is nothing stricter. */
export function stricterMood(mood: Mood): Mood {
  return MOOD_POLICIES[mood].stricter ?? mood;
}

/** Approval requirements in order of strictness. */
export const APPROVAL_RANK: Record<ApprovalRequirement, number> = { none: 0, owner: 1, independent: 2 };
const RISK_APPROVAL: Record<string, ApprovalRequirement> = {
  low: 'none',
  medium: 'owner',
  high: 'independent',
};

export interface ApprovalPolicy {
  requirement: ApprovalRequirement;
  /** Distinct approvers needed (1 unless the request asks for more). */
  quorum: number;
  /** Why approval is needed, for the event and the UI. */
  reasons: string[];
}

/** The stricter of what the mood, the risk tier and the request ask for. */
export function approvalPolicy(
  mood: Mood,
  riskTier: string,
  review: { required?: boolean; quorum?: number } = {},
): ApprovalPolicy {
  const candidates: [ApprovalRequirement, string][] = [
    [MOOD_POLICIES[mood].approval, `mood ${mood}`],
    [RISK_APPROVAL[riskTier] ?? 'independent', `risk tier ${riskTier}`],
    [review.required || (review.quorum ?? 1) > 1 ? 'owner' : 'none', 'the request asks for review'],
  ];
  let requirement: ApprovalRequirement = 'none';
  for (const [r] of candidates) if (APPROVAL_RANK[r] > APPROVAL_RANK[requirement]) requirement = r;
  const reasons = candidates.filter(([r]) => r !== 'none').map(([r, why]) => `${why}: ${r}`);
  return { requirement, quorum: requirement === 'none' ? 0 : Math.max(1, review.quorum ?? 1), reasons };
}

/** What the attempts of one verifier add up to under a mood. */
export interface VerifierJudgement {
  result: VerifierResult;
  /** Attempts disagreed (some passed, some did not). */
  flaky: boolean;
}

/**
 * Judges a verifier's attempts: the first result, then reruns (after a non-pass) or confirmations
 * (after a pass). The exit code stays a floor: a verifier passes only if some attempt passed, and
 * with confirmations every attempt must pass; disagreement is `flaky`, a pass only where the mood allows.
 */
export function judgeVerifierAttempts(attempts: VerifierResult[], policy: MoodPolicy): VerifierJudgement {
  const first = attempts[0];
  if (first === undefined) return { result: 'error', flaky: false };
  const passes = attempts.filter((a) => a === 'pass').length;
  const flaky = passes > 0 && passes < attempts.length;
  if (passes === attempts.length) return { result: 'pass', flaky: false };
  if (passes === 0) return { result: first, flaky: false };
  if (policy.flakyPasses && first !== 'pass') return { result: 'pass', flaky };
  const failing = attempts.find((a) => a !== 'pass') ?? 'fail';
  return { result: failing, flaky };
}

/** The next attempt to make, given the attempts so far: `rerun`, `confirm` or `done`. */
export function nextVerifierAttempt(
  attempts: VerifierResult[],
  policy: MoodPolicy,
  maxReruns: number,
): 'rerun' | 'confirm' | 'done' {
  const first = attempts[0];
  if (first === undefined) return 'rerun';
  if (first === 'pass') {
    const confirmations = attempts.length - 1;
    return confirmations < policy.confirmRuns && attempts.every((a) => a === 'pass') ? 'confirm' : 'done';
  }
  const reruns = attempts.length - 1;
  const last = attempts[attempts.length - 1];
  return last !== 'pass' && reruns < Math.min(policy.verifierReruns, maxReruns) ? 'rerun' : 'done';
}
