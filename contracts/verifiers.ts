/** The verifier allow-list file: platform configuration, never read from a run's worktree. */
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { idSchema } from './ids';
import { argvSchema } from './run';

export const verifierSpecSchema = z
  .object({
    id: idSchema,
    description: z.string().min(1).max(2000),
    argv: argvSchema,
    timeoutSeconds: z.number().int().min(1).max(3600).default(300),
  })
  .strict();
export type VerifierSpec = z.output<typeof verifierSpecSchema>;

export const verifierFileSchema = z
  .object({
    version: z.literal(1),
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
  });
export type VerifierFile = z.output<typeof verifierFileSchema>;

/** Lookup over a validated allow-list. */
export class VerifierCatalog {
  private readonly byId: Map<string, VerifierSpec>;

  constructor(specs: VerifierSpec[]) {
    this.byId = new Map(specs.map((s) => [s.id, s]));
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
  return new VerifierCatalog(parsed.data.verifiers);
}
