/** The verifier allow-list file: platform configuration, never read from a run's worktree. */
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { idSchema } from './ids';
import { argvSchema, moodSchema, type Mood } from './run';

/** A path scope: repository-relative, `/`-separated, no `..` segment, no leading `/`. */
const scopeSchema = z
  .string()
  .min(1)
  .max(512)
  .refine((s) => !s.startsWith('/'), 'must be repository-relative (no leading /)')
  .refine((s) => !s.split('/').includes('..'), 'must not contain ".." segments')
  .refine((s) => !s.includes('\0'), 'contains a NUL byte');

export const verifierSpecSchema = z
  .object({
    id: idSchema,
    description: z.string().min(1).max(2000),
    argv: argvSchema,
    timeoutSeconds: z.number().int().min(1).max(3600).default(300),
    /** Touched paths that select this verifier: `dir/` is a prefix, anything else a glob (see glob.ts). */
    scopes: z.array(scopeSchema).max(64).default([]),
    /** Moods in which scope selection applies; empty means every mood. */
    moods: z.array(moodSchema).max(16).default([]),
    /** Globs (relative to /workspace) of files the verifier leaves that are kept as artifacts. */
    artifacts: z.array(scopeSchema).max(32).default([]),
  })
  .strict();
export type VerifierSpec = z.output<typeof verifierSpecSchema>;

export const verifierFileSchema = z
  .object({
    version: z.literal(1),
    /** Verifier ids every run in a mood gets (the mood's profile); `default` applies to moods not listed. */
    profiles: z
      .record(z.string(), z.array(idSchema).max(64))
      .refine(
        (p) => Object.keys(p).every((k) => k === 'default' || moodSchema.safeParse(k).success),
        'profile names must be moods (CALM, SKEPTICAL, …) or default',
      )
      .default({}),
    verifiers: z.array(verifierSpecSchema).min(1),
  })
  .strict()
  .superRefine((file, ctx) => {
    const seen = new Set<string>();
    file.verifiers.forEach((v, i) => {
      if (seen.has(v.id))
        ctx.addIssue({ code: 'custom', path: ['verifiers', i, 'id'], message: `duplicate id ${v.id}` });
      seen.add(v.id);
    });
    for (const [profile, ids] of Object.entries(file.profiles)) {
      ids.forEach((id, i) => {
        if (!seen.has(id))
          ctx.addIssue({ code: 'custom', path: ['profiles', profile, i], message: `unknown verifier ${id}` });
      });
    }
  });
export type VerifierFile = z.output<typeof verifierFileSchema>;

/** Lookup over a validated allow-list. */
export class VerifierCatalog {
  private readonly byId: Map<string, VerifierSpec>;

  constructor(
    specs: VerifierSpec[],
    private readonly profiles: Partial<Record<Mood | 'default', string[]>> = {},
  ) {
    this.byId = new Map(specs.map((s) => [s.id, s]));
  }

  /** Every spec, sorted by id. */
  specs(): VerifierSpec[] {
    return this.ids().map((id) => this.byId.get(id) as VerifierSpec);
  }

  /** The profile (default verifier ids) of a mood: its own entry, else `default`, else none. */
  profile(mood: Mood): string[] {
    return [...(this.profiles[mood] ?? this.profiles.default ?? [])];
  }

  get(id: string): VerifierSpec | undefined {
    return this.byId.get(id);
  }

  ids(): string[] {
    return [...this.byId.keys()].sort();
  }
}

/** Parses and validates allow-list text (YAML or JSON); the error names the file and the offending field. */
export function parseVerifierFile(text: string, source: string): VerifierCatalog {
  let raw: unknown;
  try {
    raw = parseYaml(text);
  } catch (err) {
    throw new Error(`invalid verifier allow-list ${source}: ${(err as Error).message}`);
  }
  const parsed = verifierFileSchema.safeParse(raw);
  if (!parsed.success) {
    const first = parsed.error.issues[0];
    throw new Error(
      `invalid verifier allow-list ${source}: ${first?.path.join('.') ?? ''} ${first?.message ?? ''}`.trim(),
    );
  }
  return new VerifierCatalog(parsed.data.verifiers, parsed.data.profiles);
}
