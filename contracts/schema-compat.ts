/**
 * The additive-only rule for a schema version, checked over JSON Schemas: a newer schema may add
 * event types, optional properties and enum values; it may not remove or retype anything a
 * reader of the older schema relies on, nor require what the older schema did not.
 */

type Json = Record<string, unknown>;

const isObj = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Event-type branches of the union, keyed by their `event_type` const. */
function branches(schema: Json): Map<string, Json> {
  const out = new Map<string, Json>();
  const list = schema.oneOf ?? schema.anyOf;
  if (!Array.isArray(list)) return out;
  for (const b of list) {
    if (!isObj(b) || !isObj(b.properties)) continue;
    const et = b.properties.event_type;
    if (isObj(et) && typeof et.const === 'string') out.set(et.const, b);
  }
  return out;
}

function typeSet(s: Json): string[] {
  const t = s.type;
  if (typeof t === 'string') return [t];
  if (Array.isArray(t)) return t.filter((x): x is string => typeof x === 'string');
  if (Array.isArray(s.anyOf)) return s.anyOf.filter(isObj).flatMap(typeSet);
  return [];
}

function compare(oldS: Json, newS: Json, path: string, out: string[]): void {
  const oldTypes = typeSet(oldS);
  const newTypes = typeSet(newS);
  for (const t of oldTypes) if (!newTypes.includes(t)) out.push(`${path}: type ${t} was removed`);
  if ('const' in oldS && oldS.const !== newS.const) out.push(`${path}: const changed`);
  if (Array.isArray(oldS.enum)) {
    const newEnum = Array.isArray(newS.enum) ? newS.enum : [];
    for (const v of oldS.enum)
      if (!newEnum.includes(v)) out.push(`${path}: enum value ${JSON.stringify(v)} was removed`);
  }
  if (isObj(oldS.properties)) {
    const newProps = isObj(newS.properties) ? newS.properties : {};
    for (const [k, v] of Object.entries(oldS.properties)) {
      const nv = newProps[k];
      if (!isObj(nv)) out.push(`${path}.${k}: property was removed`);
      else if (isObj(v)) compare(v, nv, `${path}.${k}`, out);
    }
    const oldReq = new Set(Array.isArray(oldS.required) ? (oldS.required as string[]) : []);
    const newReq = Array.isArray(newS.required) ? (newS.required as string[]) : [];
    for (const r of newReq) if (!oldReq.has(r)) out.push(`${path}.${r}: became required`);
  }
  if (isObj(oldS.items) && isObj(newS.items)) compare(oldS.items, newS.items, `${path}[]`, out);
  if (Array.isArray(oldS.anyOf) && Array.isArray(newS.anyOf)) {
    oldS.anyOf.forEach((b, i) => {
      const nb = (newS.anyOf as unknown[])[i];
      if (isObj(b) && isObj(nb)) compare(b, nb, `${path}|${i}`, out);
    });
  }
}

/** Every way `next` breaks readers of `previous`; empty when the change is additive. */
export function breakingChanges(previous: Json, next: Json): string[] {
  const out: string[] = [];
  const prev = branches(previous);
  const nxt = branches(next);
  for (const [type, schema] of prev) {
    const n = nxt.get(type);
    if (!n) out.push(`${type}: event type was removed`);
    else compare(schema, n, type, out);
  }
  return out;
}
