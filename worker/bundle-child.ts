/**
 * Child process entry of bundleWorkflowsInChild(): bundles the workflows with webpack and writes
 * the bundle as JSON to the file named by argv[2]. Webpack's few hundred MiB leave with this process.
 */
import { writeFile } from 'node:fs/promises';
import { bundleWorkflows } from './bundle';

const out = process.argv[2];
if (!out) {
  process.stderr.write('usage: bundle-child <out.json>\n');
  process.exit(2);
}
bundleWorkflows().then(
  (bundle) =>
    writeFile(out, JSON.stringify({ code: bundle.code, sourceMap: bundle.sourceMap }), { mode: 0o600 }),
  (err: unknown) => {
    process.stderr.write(
      `bundle-child: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
    );
    process.exit(1);
  },
);
