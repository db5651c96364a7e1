/** Verification: every planned verifier under the mood's reruns and confirmations, then the verdict. */
import { judgeVerifierAttempts, nextVerifierAttempt, type VerifierOutcome } from '../../contracts';
import type { SandboxHandle, VerifyInput } from '../../activities/types';
import { VERIFIER_ACTIVITY_BOUND_SECONDS, hostActivities, hostSteps } from './profiles';
import { outputPayload, type RunState } from './state';

/** Runs the verifiers; true when every one passed (the commit may follow), else the run is discarded. */
export async function verify(run: RunState, handle: SandboxHandle, verifierIds: string[]): Promise<boolean> {
  const { runId, events, view } = run;
  const outcomes = await Promise.all(verifierIds.map((id) => verifyOne(run, handle, id)));
  for (const result of outcomes) {
    view.verifiers.push(result);
    events.emit('receipt.verifier.attestations', {
      run_id: runId,
      attestation: {
        verifier_id: result.id,
        result: result.result,
        ...outputPayload(result),
        artifact_hash: result.log?.digest ?? null,
        report_hash: result.reportDigest ?? null,
        ...(result.attempts ? { attempts: result.attempts, flaky: result.flaky ?? false } : {}),
      },
    });
  }
  // The exit code is a floor: anything but an explicit pass of every verifier discards.
  const failed = outcomes.filter((o) => o.result !== 'pass');
  if (failed.length === 0 && outcomes.length > 0) return true;
  run.discard(
    'verify',
    'verification_failed',
    outcomes.length === 0
      ? 'no verifier ran, so nothing was verified'
      : `verifier(s) did not pass: ${failed.map((f) => `${f.id}=${f.result}${f.flaky ? ' (flaky)' : ''}`).join(', ')}`,
    failed.map((f) => f.id),
  );
  return false;
}

/** One verifier under the mood: reruns after a non-pass, confirmations after a pass, each in a fresh container. */
async function verifyOne(run: RunState, handle: SandboxHandle, verifierId: string): Promise<VerifierOutcome> {
  const { runId, tenant, userId, workItem, events, policy, maxReruns } = run;
  const attempts: VerifierOutcome[] = [];
  const owner = { tenant, userId, workItemId: workItem.id };
  for (;;) {
    const results = attempts.map((a) => a.result);
    const next = attempts.length === 0 ? 'first' : nextVerifierAttempt(results, policy, maxReruns);
    if (next === 'done') break;
    if (next !== 'first') {
      events.emit('run.verifier.rerun', {
        run_id: runId,
        verifier_id: verifierId,
        attempt: attempts.length + 1,
        reason: next,
        previous: results,
      });
    }
    const input: VerifyInput = {
      sandboxId: handle.sandboxId,
      verifierId,
      owner,
      imageId: handle.imageId,
      attempt: attempts.length + 1,
    };
    const summary = { summary: `verify ${verifierId} (attempt ${attempts.length + 1})` };
    attempts.push(
      run.lean
        ? await events.carried((carried) =>
            hostSteps(handle.hostQueue, VERIFIER_ACTIVITY_BOUND_SECONDS).verifyStep.executeWithOptions(
              summary,
              [{ input, events: carried }],
            ),
          )
        : await hostActivities(
            handle.hostQueue,
            VERIFIER_ACTIVITY_BOUND_SECONDS,
          ).runVerifier.executeWithOptions(summary, [input]),
    );
  }
  const [only] = attempts;
  if (attempts.length === 1 && only) return only;
  const judged = judgeVerifierAttempts(
    attempts.map((a) => a.result),
    policy,
  );
  // The receipt shows the attempt that decided: a passing one for a pass, else the first failure.
  const shown =
    (judged.result === 'pass'
      ? attempts.filter((a) => a.result === 'pass').pop()
      : attempts.find((a) => a.result !== 'pass')) ?? only;
  if (!shown) throw new Error(`verifier ${verifierId} ran no attempt`);
  return { ...shown, result: judged.result, attempts: attempts.map((a) => a.result), flaky: judged.flaky };
}
