import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
import { TEMPORAL_DYNAMIC_CONFIG } from '../../infra/stack/temporal';

const ROOT = join(__dirname, '..', '..');

describe('Temporal dynamic configuration', () => {
  it('the compose stack gives its server the same values as the dev server gets', () => {
    const file = parse(
      readFileSync(join(ROOT, 'infra/compose/temporal-dynamic-config.yaml'), 'utf8'),
    ) as Record<string, { value: unknown; constraints?: unknown }[]>;
    const fromFile = Object.fromEntries(
      Object.entries(file).map(([key, entries]) => {
        expect(entries).toHaveLength(1);
        expect(entries[0]?.constraints).toBeUndefined();
        return [key, entries[0]?.value];
      }),
    );
    expect(fromFile).toEqual(TEMPORAL_DYNAMIC_CONFIG);
  });

  it('the compose file points the server at that file', () => {
    const compose = parse(readFileSync(join(ROOT, 'docker-compose.yml'), 'utf8')) as {
      services: { temporal: { environment: Record<string, string>; volumes: string[] } };
    };
    const temporal = compose.services.temporal;
    const path = temporal.environment.DYNAMIC_CONFIG_FILE_PATH;
    expect(temporal.volumes).toContain(`./infra/compose/temporal-dynamic-config.yaml:${path}:ro`);
  });

  it('keeps enough buffered queries for a burst of admission joins', () => {
    // One query per joining run is held behind the gate's pending workflow task (decision 0015).
    expect(TEMPORAL_DYNAMIC_CONFIG['history.MaxBufferedQueryCount']).toBeGreaterThanOrEqual(256);
  });
});
