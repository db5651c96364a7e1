/**
 * `npm run verdict -- <reportDigest>`: recomputes a verifier's verdict from the artifact store
 * alone (its report and stored log), with no Temporal, NATS or Docker. Prints one JSON line;
 * exits 0 on `pass`, 1 on `fail`/`timeout`, 2 on `error` (evidence missing or inconsistent).
 */
import { createHash } from 'node:crypto';
import { checkVerdict, verifierReportSchema, type VerdictCheck } from '../contracts';
import { LocalArtifactStore } from '../activities/artifacts/local-store';
import { DIGEST_PATTERN, type ArtifactStore } from '../activities/artifacts/store';
import { loadWorkerConfig } from './config';

/** The verdict of the report stored under `reportDigest`, re-derived from stored evidence. */
export async function verdictFromStore(
  store: ArtifactStore,
  reportDigest: string,
): Promise<VerdictCheck & { verifierId?: string; runId?: string }> {
  let raw: unknown;
  try {
    raw = JSON.parse((await store.getBytes(reportDigest)).toString('utf8'));
  } catch (err) {
    return { result: 'error', problems: [`report ${reportDigest}: ${(err as Error).message}`] };
  }
  const parsed = verifierReportSchema.safeParse(raw);
  if (!parsed.success)
    return { result: 'error', problems: [`report ${reportDigest} is not a verifier report`] };
  const report = parsed.data;
  let log: { digest: string; bytes: number } | undefined;
  if (await store.has(report.log.digest)) {
    // Hash what is actually stored, so a tampered blob shows up as a digest mismatch.
    const hash = createHash('sha256');
    let bytes = 0;
    const stream = await store.get(report.log.digest);
    try {
      for await (const chunk of stream as AsyncIterable<Buffer>) {
        hash.update(chunk);
        bytes += chunk.length;
      }
      log = { digest: hash.digest('hex'), bytes };
    } catch {
      log = { digest: createHash('sha256').update('unreadable').digest('hex'), bytes };
    }
  }
  return { ...checkVerdict(report, log), verifierId: report.verifierId, runId: report.runId };
}

async function main(): Promise<void> {
  const digest = process.argv[2] ?? '';
  if (!DIGEST_PATTERN.test(digest)) {
    process.stderr.write('usage: npm run verdict -- <reportDigest (64 hex)>\n');
    process.exitCode = 64;
    return;
  }
  const config = loadWorkerConfig(process.env);
  const check = await verdictFromStore(new LocalArtifactStore(config.artifactsDir), digest);
  process.stdout.write(`${JSON.stringify({ reportDigest: digest, ...check })}\n`);
  process.exitCode = check.result === 'pass' ? 0 : check.result === 'error' ? 2 : 1;
}

if (require.main === module) {
  main().catch((err: unknown) => {
    process.stderr.write(`verdict: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
