/**
 * What `choiros rebuilds start|status --watch` prints: one line per new fact between two polls of a
 * rebuild (stage, suite result, build step of each image, built image, approval, deploy, health,
 * rollback), and the "what is deployed now" lines of `choiros rebuilds status`.
 */
import type { DeployedView, RebuildView } from '../../contracts';

const secs = (ms: number): string => `${Math.round(ms / 1000)}s`;
const short = (id: string): string => id.replace(/^sha256:/, '').slice(0, 12);

/** A build step heartbeat (activities/images BuildProgress), when the running activity is a build. */
function buildProgress(v: RebuildView): string | undefined {
  const p = v.progress;
  if (!p || p.activity !== 'buildImage') return undefined;
  const image = typeof p.image === 'string' ? p.image : '?';
  const step = typeof p.step === 'number' ? p.step : 0;
  const total = typeof p.totalSteps === 'number' ? p.totalSteps : 0;
  const cached = typeof p.cachedSteps === 'number' ? p.cachedSteps : 0;
  const line = typeof p.line === 'string' ? p.line.trim().slice(0, 100) : '';
  if (total === 0) return `  image ${image}: starting the build`;
  return `  image ${image}: step ${step}/${total} (${cached} cached)${line ? ` ${line}` : ''}`;
}

/** The stages a rebuild has entered, in order: those it left (their times) and the one it is in. */
function stagesOf(v: RebuildView): string[] {
  const stages = Object.keys(v.stageMs);
  return stages.includes(v.stage) ? stages : [...stages, v.stage];
}

/** The lines `next` adds to what `prev` (the previous poll, or nothing) showed. */
export function rebuildWatchLines(prev: RebuildView | undefined, next: RebuildView): string[] {
  const out: string[] = [];
  if (!prev)
    out.push(
      `rebuild ${next.rebuildId}: target ${next.target} @ ${next.ref}, requested by ${next.requestedBy.userId}`,
    );
  if (next.commit && next.commit !== prev?.commit) out.push(`  commit ${next.commit}`);
  for (const s of next.verify.slice(prev?.verify.length ?? 0))
    out.push(
      `  suite ${s.suite}: ${s.passed ? 'pass' : `FAIL (exit ${s.exitCode}${s.timedOut ? ', timed out' : ''})`} in ${secs(s.durationMs)}`,
    );
  for (const i of next.images.slice(prev?.images.length ?? 0))
    out.push(
      `  image ${i.name}: built ${i.tag} ${short(i.imageId)} in ${secs(i.durationMs)} (${i.cachedSteps}/${i.totalSteps} steps cached)${i.pushed ? `, pushed ${i.pushed}` : ''}`,
    );
  if (next.approval && JSON.stringify(next.approval) !== JSON.stringify(prev?.approval))
    out.push(
      `  ${next.approval.decision === 'approve' ? 'approved' : 'rejected'} by ${next.approval.by}${next.approval.reason ? `: ${next.approval.reason}` : ''}`,
    );
  next.deploy.forEach((d, n) => {
    const before = prev?.deploy[n];
    if (!before)
      out.push(
        `  deploy ${d.service}: ${d.changed ? `${d.previousImage ? short(d.previousImage) : 'nothing'} -> ${d.image}` : `already on ${d.image}`}`,
      );
    if (d.healthy !== undefined && before?.healthy !== d.healthy)
      out.push(`  health ${d.service}: ${d.healthy ? 'healthy' : 'UNHEALTHY'}`);
    if (d.rolledBack && !before?.rolledBack)
      out.push(`  rolled back ${d.service} to ${d.previousImage ? short(d.previousImage) : 'nothing'}`);
  });
  // After the facts of the stage that ended, every stage entered since the last poll, in order: a
  // stage shorter than the poll interval (an approval given at once) is in the view's stage times.
  const seen = new Set(prev ? stagesOf(prev) : []);
  for (const stage of stagesOf(next)) if (!seen.has(stage)) out.push(`[${stage}]`);
  const progress = buildProgress(next);
  if (progress && progress !== (prev ? buildProgress(prev) : undefined)) out.push(progress);
  if (next.stage === 'awaiting_approval' && prev?.stage !== 'awaiting_approval')
    out.push(
      `  waiting for approval (rebuild:approve, not ${next.requestedBy.userId}) before ${next.approvalDeadline ?? '?'}: choiros rebuilds approve ${next.rebuildId}`,
    );
  if (next.error && next.error.message !== prev?.error?.message)
    out.push(`  error ${next.error.code}: ${next.error.message}`);
  if (next.finishedAt && !prev?.finishedAt)
    out.push(
      `rebuild ${next.rebuildId} ${next.stage} (${Object.entries(next.stageMs)
        .map(([k, ms]) => `${k} ${secs(ms)}`)
        .join(', ')})`,
    );
  return out;
}

/** `choiros rebuilds status --target <t>`: the release running now, per service. */
export function deployedLines(d: DeployedView): string[] {
  if (!d.rebuildId)
    return [`target ${d.target}: no completed rebuild yet (the stack runs what it was started with)`];
  return [
    `target ${d.target}: commit ${d.commit ?? '?'} (rebuild ${d.rebuildId}, finished ${d.deployedAt ?? '?'})`,
    ...d.services.map((s) => `  ${s.service}: ${s.image} ${s.imageId}`),
  ];
}
