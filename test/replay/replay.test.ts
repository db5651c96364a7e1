/**
 * Replays recorded workflow histories (test/fixtures/histories) against the current workflow
 * code: a change that is not replay-safe (without patched()) fails here, before it reaches a
 * running platform. Re-record with `CHOIROS_RECORD_HISTORIES=1 npm run test:integration`, only
 * for intended, versioned changes.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { DefaultLogger, Runtime, Worker, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { bundleWorkflows } from '../../worker/bundle';
import { workflowTracingOptions } from '../../worker/tracing';

Runtime.install({ logger: new DefaultLogger('WARN') });

const dir = join(__dirname, '../fixtures/histories');
const files = readdirSync(dir).filter((f) => f.endsWith('.json'));

let bundle: WorkflowBundleWithSourceMap;
beforeAll(async () => {
  // The bundle every worker runs (worker/bundle.ts): replay sees what runs.
  bundle = await bundleWorkflows();
}, 120_000);

test('the recorded histories exist', () => {
  expect(files.length).toBeGreaterThanOrEqual(3);
});

test.each(files)(
  'when %s is replayed on the current workflow code, then it is deterministic',
  async (file) => {
    const history: unknown = JSON.parse(readFileSync(join(dir, file), 'utf8'));
    await Worker.runReplayHistory(
      { workflowBundle: bundle, replayName: file, ...workflowTracingOptions(undefined) },
      history,
      file.replace(/\.json$/, ''),
    );
  },
  120_000,
);
