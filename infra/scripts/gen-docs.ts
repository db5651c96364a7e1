/**
 * `npm run docs:gen`: writes the generated docs (docs/configuration.md from the config schemas,
 * docs/api.md from api/openapi.ts, the decision list in docs/architecture.md from docs/decisions/).
 * test/unit/docs-generated.test.ts fails while any of them is stale.
 */
import { writeFile } from 'node:fs/promises';
import { API_DOC, renderApiDoc } from './gen-api-doc';
import { CONFIGURATION_DOC, renderConfigurationDoc } from './gen-config-doc';
import { ARCHITECTURE_DOC, renderArchitectureDoc } from './gen-decisions';

export function generatedDocs(): [string, string][] {
  return [
    [CONFIGURATION_DOC, renderConfigurationDoc()],
    [API_DOC, renderApiDoc()],
    [ARCHITECTURE_DOC, renderArchitectureDoc()],
  ];
}

if (require.main === module) {
  Promise.resolve()
    .then(async () => {
      for (const [file, text] of generatedDocs()) {
        await writeFile(file, text);
        process.stdout.write(`wrote ${file}\n`);
      }
    })
    .catch((err: unknown) => {
      process.stderr.write(`docs:gen: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    });
}
