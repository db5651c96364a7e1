/** Verifier reports (stored as canonical JSON artifacts) and the verdict rule, shared by the worker and `npm run verdict`. */
import { z } from 'zod';
import type { VerifierResult } from './run';

const digestSchema = z.string().regex(/^[0-9a-f]{64}$/);

/** What one verifier did, with the digest of its stored log. Immutable once stored. */
export const verifierReportSchema = z
  .object({
    kind: z.literal('choiros.verifier.report'),
    version: z.literal(1),
    runId: z.string(),
    verifierId: z.string(),
    argv: z.array(z.string()),
    timeoutSeconds: z.number().int(),
    exitCode: z.number().int(),
    timedOut: z.boolean(),
    oomKilled: z.boolean(),
    durationMs: z.number().int().nonnegative(),
    /** sha256 and size of the complete output, as it streamed. */
    outputSha256: digestSchema,
    outputBytes: z.number().int().nonnegative(),
    /** The stored log: the whole output, or its first `bytes` bytes when `truncated`. */
    log: z
      .object({ digest: digestSchema, bytes: z.number().int().nonnegative(), truncated: z.boolean() })
      .strict(),
  })
  .strict();
export type VerifierReport = z.infer<typeof verifierReportSchema>;

/** The exit code is a floor: only a command that exited 0 in time, without being OOM-killed, passes. */
export function verdictOf(o: { exitCode: number; timedOut: boolean; oomKilled?: boolean }): VerifierResult {
  if (o.timedOut) return 'timeout';
  if (o.oomKilled) return 'fail';
  return o.exitCode === 0 ? 'pass' : 'fail';
}

export interface VerdictCheck {
  result: VerifierResult;
  /** Why the stored evidence does or does not support the result. */
  problems: string[];
}

/**
 * Re-derives a verdict from a report and facts about its stored log. Evidence that does not line
 * up (log missing, wrong size, a complete log whose digest differs from the streamed output's)
 * gives `error`, never `pass`.
 */
export function checkVerdict(
  report: VerifierReport,
  log: { digest: string; bytes: number } | undefined,
): VerdictCheck {
  const problems: string[] = [];
  if (!log) problems.push(`log ${report.log.digest} is not in the store`);
  else {
    if (log.digest !== report.log.digest)
      problems.push(`log hashes to ${log.digest}, report says ${report.log.digest}`);
    if (log.bytes !== report.log.bytes)
      problems.push(`log has ${log.bytes} bytes, report says ${report.log.bytes}`);
  }
  if (!report.log.truncated && report.log.digest !== report.outputSha256)
    problems.push('complete log does not match the output digest');
  if (report.log.truncated !== report.log.bytes < report.outputBytes)
    problems.push('truncation flag does not match the sizes');
  return { result: problems.length > 0 ? 'error' : verdictOf(report), problems };
}
