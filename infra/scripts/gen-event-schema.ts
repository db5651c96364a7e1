/** `npm run schema:events`: writes the published JSON Schema of events (contracts/schema/events.v1.schema.json). */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { eventsJsonSchema } from '../../contracts';

export const EVENTS_SCHEMA_FILE = join(__dirname, '../../contracts/schema/events.v1.schema.json');

export function renderEventsSchema(): string {
  return `${JSON.stringify(eventsJsonSchema(), null, 2)}\n`;
}

if (require.main === module) {
  writeFile(EVENTS_SCHEMA_FILE, renderEventsSchema())
    .then(() => process.stdout.write(`wrote ${EVENTS_SCHEMA_FILE}\n`))
    .catch((err: unknown) => {
      process.stderr.write(`schema:events: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    });
}
