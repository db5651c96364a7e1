/** The published event schema: in sync with the zod schemas, and only ever changed additively within v1. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  EVENT_PAYLOAD_SCHEMAS,
  EVENT_SCHEMA_VERSION,
  EVENT_TYPES,
  SUBJECT_LAYOUT_VERSION,
  breakingChanges,
  eventSubject,
  eventsJsonSchema,
  knownEventSchema,
} from '../../contracts';
import { renderEventsSchema } from '../../infra/scripts/gen-event-schema';

const dir = join(__dirname, '../../contracts/schema');
const published = JSON.parse(readFileSync(join(dir, 'events.v1.schema.json'), 'utf8')) as Record<
  string,
  unknown
>;
const baseline = JSON.parse(readFileSync(join(dir, 'events.v1.baseline.json'), 'utf8')) as Record<
  string,
  unknown
>;

test('when the zod schemas change, then the published JSON Schema was regenerated (npm run schema:events)', () => {
  expect(readFileSync(join(dir, 'events.v1.schema.json'), 'utf8')).toBe(renderEventsSchema());
});

test('when the subject layout is published, then it is the layout the publisher builds from the envelope (tenant-qualified)', () => {
  expect(published['x-choiros-subject']).toEqual({
    layout: SUBJECT_LAYOUT_VERSION,
    pattern: 'choiros.<tenant>.<user_id>.run.<run_id>.<event_type>',
  });
  expect(SUBJECT_LAYOUT_VERSION).toBe(2);
  // The envelope did not change with the layout: it always carried the tenant, so v0/v1 readers keep working.
  expect(EVENT_SCHEMA_VERSION).toBe(1);
  const subject = eventSubject({
    tenant: 'acme',
    user_id: 'alice',
    run_id: 'run-1',
    event_type: 'note.status',
  });
  const filled = String((published['x-choiros-subject'] as { pattern: string }).pattern)
    .replace('<tenant>', 'acme')
    .replace('<user_id>', 'alice')
    .replace('<run_id>', 'run-1')
    .replace('<event_type>', 'note.status');
  expect(subject).toBe(filled);
});

test('every event type has a payload schema and a branch in the published schema', () => {
  expect(Object.keys(EVENT_PAYLOAD_SCHEMAS).sort()).toEqual([...EVENT_TYPES].sort());
  expect((eventsJsonSchema().oneOf as unknown[]).length).toBe(EVENT_TYPES.length);
});

test('when compared with the v1 baseline, then the published schema has only additive changes', () => {
  expect(breakingChanges(baseline, published)).toEqual([]);
});

describe('the additive-only rule', () => {
  const schemaWith = (payload: Record<string, unknown>, required: string[]) => ({
    oneOf: [
      {
        properties: {
          event_type: { const: 'x.y' },
          payload: { type: 'object', properties: payload, required },
        },
      },
    ],
  });
  const base = schemaWith({ a: { type: 'string' }, b: { type: 'string', enum: ['p', 'q'] } }, ['a']);

  test('when an optional field or an enum value is added, then nothing breaks', () => {
    expect(
      breakingChanges(
        base,
        schemaWith(
          { a: { type: 'string' }, b: { type: 'string', enum: ['p', 'q', 'r'] }, c: { type: 'number' } },
          ['a'],
        ),
      ),
    ).toEqual([]);
  });
  test('when a field is removed, retyped or newly required, or an event type or enum value disappears, then each is reported', () => {
    expect(breakingChanges(base, schemaWith({ b: { type: 'string', enum: ['p', 'q'] } }, []))).toEqual([
      'x.y.payload.a: property was removed',
    ]);
    expect(
      breakingChanges(
        base,
        schemaWith({ a: { type: 'number' }, b: { type: 'string', enum: ['p', 'q'] } }, ['a']),
      ),
    ).toEqual(['x.y.payload.a: type string was removed']);
    expect(
      breakingChanges(
        base,
        schemaWith({ a: { type: 'string' }, b: { type: 'string', enum: ['p'] } }, ['a', 'b']),
      ),
    ).toEqual(['x.y.payload.b: enum value "q" was removed', 'x.y.payload.b: became required']);
    expect(breakingChanges(base, { oneOf: [] })).toEqual(['x.y: event type was removed']);
  });
});

test('when an event from a real run is checked, then it matches the schema of its type', () => {
  const ev = {
    schema_version: 1,
    id: 'run-1:2',
    timestamp: 1,
    user_id: 'alice',
    source: 'system',
    event_type: 'note.status',
    payload: { run_id: 'run-1', status: 'running', previous: 'created', mood: 'CALM', stage: 'execute' },
    tenant: 'acme',
    run_id: 'run-1',
    work_item_id: 'wi-1',
    seq: 2,
  };
  expect(knownEventSchema.safeParse(ev).success).toBe(true);
  expect(knownEventSchema.safeParse({ ...ev, payload: { ...ev.payload, status: 'sleeping' } }).success).toBe(
    false,
  );
});
