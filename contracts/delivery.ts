/** Delivery of committed branches to remote origins, and the pull request body (decisions 0019, 0020). Pure. */
import type { VerifierOutcome } from './run';

/** A branch name as a pull request's base: the run's base ref when it names a branch, else the default. */
export function pullRequestBase(baseRef: string, fallback: string): string {
  const b = baseRef.replace(/^refs\/heads\//, '');
  return /^[A-Za-z0-9._/-]{1,200}$/.test(b) && !/^[0-9a-f]{40}([0-9a-f]{24})?$/.test(b) && !b.includes('..')
    ? b
    : fallback;
}

/** The receipts of a delivered run, as Markdown for a pull request body (no secret is ever in a receipt). */
export function pullRequestBody(r: {
  runId: string;
  description: string;
  commit: string;
  baseCommit: string;
  verifiers: readonly Pick<VerifierOutcome, 'id' | 'result' | 'reportDigest' | 'outputSha256' | 'log'>[];
  changedPaths: readonly string[];
}): string {
  const rows = r.verifiers.map(
    (v) =>
      `| ${v.id} | ${v.result} | ${v.reportDigest ? `\`${v.reportDigest}\`` : '–'} | ${v.log?.digest ? `\`${v.log.digest}\`` : `\`${v.outputSha256}\``} |`,
  );
  const paths = r.changedPaths.slice(0, 50).map((p) => `- \`${p.replace(/`/g, "'")}\``);
  if (r.changedPaths.length > 50) paths.push(`- … and ${r.changedPaths.length - 50} more`);
  return [
    `ChoirOS run \`${r.runId}\`: ${r.description.split('\n')[0]?.slice(0, 200) ?? ''}`,
    '',
    `Commit \`${r.commit}\` on base \`${r.baseCommit}\`.`,
    '',
    '### Verifier receipts',
    '',
    '| verifier | result | report digest | output digest |',
    '| --- | --- | --- | --- |',
    ...rows,
    '',
    '### Changed paths',
    '',
    ...paths,
    '',
    'Re-check a report with `npm run verdict -- <report digest>`.',
  ].join('\n');
}
