/** Self-rebuild: targets, requests, the rebuild view and the approval decision (design.md, "Self-rebuild"). */
import { z } from 'zod';
import { argvSchema } from './run';
import { idSchema, refSchema } from './ids';
import { globToRegExp } from './glob';

/** Target names end up in workflow ids, container names and image names: lower-case and short. */
export const TARGET_NAME_PATTERN = /^[a-z0-9][a-z0-9-]{0,22}$/;
export const targetNameSchema = z
  .string()
  .regex(TARGET_NAME_PATTERN, 'must be 1-23 characters of a-z, 0-9 and "-", starting with a letter or digit');

/** Docker image repository names we build and tag (`<name>:<sha>`), optionally with a registry prefix. */
const imageRepoSchema = z
  .string()
  .regex(/^[a-z0-9]+([._-][a-z0-9]+)*(\/[a-z0-9]+([._-][a-z0-9]+)*)*$/, 'must be a lower-case image name');

/** A path inside the target repository: relative, no `..`, no leading `/` or `-`. */
const repoPathSchema = z
  .string()
  .min(1)
  .max(300)
  .regex(/^[A-Za-z0-9._][A-Za-z0-9._/-]*$/, 'must be a relative path (A-Z a-z 0-9 . _ / -)')
  .refine((p) => !p.split('/').includes('..'), 'must not contain ".."');

const envKey = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,63}$/);

/** One verifier suite of a target: an argv run in a network-less sandbox on the commit's worktree. */
export const rebuildSuiteSchema = z
  .object({
    name: idSchema,
    argv: argvSchema,
    timeoutSeconds: z.number().int().min(1).max(7200).default(600),
    /**
     * Image the suite runs in (`name:tag` on the worker's engine); default the worker's sandbox
     * image. The platform's own suites use the verify image (node + every dependency at
     * /node_modules, built once per lockfile by infra/images/build.sh).
     */
    image: z
      .string()
      .max(200)
      .regex(/^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?$/, 'must be an image name[:tag]')
      .optional(),
  })
  .strict();

/** One image a target builds: `<image>:<sha>` from a Dockerfile in the repository. */
export const rebuildImageSchema = z
  .object({
    /** Role of the image in the target (`api`, `worker`, `sandbox`). */
    name: idSchema,
    /** Repository part of the tag, e.g. `choiros-api`. */
    image: imageRepoSchema,
    dockerfile: repoPathSchema,
    /** Build context directory, relative to the repository root. */
    context: repoPathSchema.default('.'),
    /** Build arguments; `{{commit}}` is replaced by the commit sha. BASE_IMAGE goes here. */
    buildArgs: z.record(envKey, z.string().max(1000)).default({}),
  })
  .strict();

/**
 * How a deployed service proves it is healthy: with a published port, HTTP 200 on `path` from
 * 127.0.0.1 (carrying the commit when `expectVersion`); without one (a worker), staying up for
 * `stableSeconds`.
 */
export const healthCheckSchema = z
  .object({
    path: z
      .string()
      .regex(/^\/[A-Za-z0-9._/-]*$/)
      .default('/healthz'),
    /** The response body must contain the commit sha (the new version answers, not the old). */
    expectVersion: z.boolean().default(true),
    timeoutSeconds: z.number().int().min(1).max(600).default(30),
    /** Portless services: how long the new container must keep running. */
    stableSeconds: z.number().int().min(1).max(600).default(5),
  })
  .strict();

/**
 * `stop-first` stops the old container before starting the new one (they share a host port);
 * `start-first` starts the new one beside the old and stops the old only after the new one is
 * healthy: what a worker that deploys its own replacement needs (portless services only).
 */
export const DEPLOY_STRATEGIES = ['stop-first', 'start-first'] as const;

/** One long-running service the docker deployer replaces: a container from one of the target's images. */
export const rebuildServiceSchema = z
  .object({
    name: idSchema,
    /** `name` of the image (in `images`) the container runs. */
    image: idSchema,
    /**
     * `docker` deployer: the container name on the engine; the deployer owns exactly this name (and
     * `<container>-prev`). The `compose` deployer finds the container by its compose labels instead
     * (`name` is the compose service).
     */
    container: z
      .string()
      .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/)
      .optional(),
    containerPort: z.number().int().min(1).max(65535).optional(),
    /** Published on 127.0.0.1 only. */
    hostPort: z.number().int().min(1).max(65535).optional(),
    strategy: z.enum(DEPLOY_STRATEGIES).default('stop-first'),
    /** Environment; `{{commit}}` and `{{image:<name>}}` are replaced by the commit and an image's tag. */
    env: z.record(envKey, z.string().max(4000)).default({}),
    /** Extra bind mounts `host:container[:ro]` (e.g. the engine socket for a worker). */
    binds: z
      .array(z.string().regex(/^\/[^:\0]+:\/[^:\0]+(:ro)?$/))
      .max(10)
      .default([]),
    health: healthCheckSchema.default({
      path: '/healthz',
      expectVersion: true,
      timeoutSeconds: 30,
      stableSeconds: 5,
    }),
  })
  .strict()
  .refine((s) => (s.containerPort === undefined) === (s.hostPort === undefined), {
    message: 'containerPort and hostPort go together',
  })
  .refine((s) => s.strategy === 'stop-first' || s.hostPort === undefined, {
    message: 'start-first needs a service without a published port (old and new run side by side)',
  });

/**
 * `docker`: containers this deployer creates itself; `compose`: the api and worker of the compose
 * project the worker runs in (docs/production.md, "Upgrades"); `noop`: nothing is deployed.
 */
export const DEPLOYERS = ['docker', 'compose', 'noop'] as const;
export type DeployerKind = (typeof DEPLOYERS)[number];

/** Everything a rebuild of one target needs; captured in the workflow input at request time. */
export const rebuildTargetSchema = z
  .object({
    name: targetNameSchema,
    /** Absolute path of the git repository the target is built from. */
    repo: z.string().regex(/^\/[^\0]*$/, 'must be an absolute path'),
    suites: z.array(rebuildSuiteSchema).max(20).default([]),
    images: z.array(rebuildImageSchema).min(1).max(10),
    deployer: z.enum(DEPLOYERS).default('noop'),
    /**
     * Refs this target may be rebuilt from: branch or tag names or globs (`main`, `release/*`).
     * Absent: any ref. Run branches (`choiros/run/*`) are refused either way.
     */
    refs: z
      .array(
        z
          .string()
          .min(1)
          .max(200)
          .regex(/^[A-Za-z0-9._/*?-]+$/, 'must be a ref name or a glob (A-Z a-z 0-9 . _ / - * ?)'),
      )
      .min(1)
      .max(50)
      .optional(),
    services: z.array(rebuildServiceSchema).max(10).default([]),
    /**
     * Network of image builds: `none` (the default: a Dockerfile's RUN steps reach nothing, so a
     * ref's own Dockerfiles cannot fetch or send anything) or `default` (the engine's bridge).
     */
    buildNetwork: z.enum(['none', 'default']).default('none'),
    /** Distinct approvers (never the requester) a rebuild of this target needs before it deploys. */
    approvalQuorum: z.number().int().min(1).max(5).default(1),
    /** Labels put on every container and image of this target (e.g. a test's id). */
    labels: z.record(z.string().regex(/^[a-z0-9._-]{1,64}$/), z.string().max(200)).default({}),
  })
  .strict()
  .superRefine((t, ctx) => {
    const images = new Set(t.images.map((i) => i.name));
    for (const [i, s] of t.services.entries()) {
      if (t.deployer === 'docker' && s.container === undefined)
        ctx.addIssue({
          code: 'custom',
          path: ['services', i, 'container'],
          message: 'the docker deployer needs a container name',
        });
      if (!images.has(s.image))
        ctx.addIssue({
          code: 'custom',
          path: ['services', i, 'image'],
          message: `no image named ${s.image}`,
        });
    }
  });
export type RebuildTarget = z.output<typeof rebuildTargetSchema>;
export type RebuildTargetInput = z.input<typeof rebuildTargetSchema>;
export type RebuildImageSpec = RebuildTarget['images'][number];
export type RebuildServiceSpec = RebuildTarget['services'][number];

/** The targets file (`CHOIROS_REBUILD_TARGETS_FILE`): `targets: [...]`. */
export const rebuildTargetsFileSchema = z
  .object({ targets: z.array(rebuildTargetSchema).max(50) })
  .strict()
  .refine(
    (f) => new Set(f.targets.map((t) => t.name)).size === f.targets.length,
    'target names must be unique',
  );

/** `POST /v1/rebuilds` body. */
export const rebuildRequestSchema = z
  .object({
    target: targetNameSchema.default('choiros'),
    ref: refSchema.default('main'),
    /** How long the pipeline waits for an approval before it ends without deploying. */
    approvalTimeoutSeconds: z
      .number()
      .int()
      .min(1)
      .max(7 * 86400)
      .optional(),
    reason: z.string().max(2000).optional(),
  })
  .strict();
export type RebuildRequest = z.output<typeof rebuildRequestSchema>;

/** `POST /v1/rebuilds/:id/approve|reject` body (optional). */
export const rebuildDecisionBodySchema = z.object({ reason: z.string().max(2000).optional() }).strict();

export const REBUILD_STAGES = [
  'resolving',
  'verifying',
  'building',
  'awaiting_approval',
  'deploying',
  'rolling_back',
  'completed',
  'verification_failed',
  'build_failed',
  'rejected',
  'approval_timed_out',
  'rolled_back',
  'failed',
  'cancelled',
] as const;
export type RebuildStage = (typeof REBUILD_STAGES)[number];
export const TERMINAL_REBUILD_STAGES: readonly RebuildStage[] = [
  'completed',
  'verification_failed',
  'build_failed',
  'rejected',
  'approval_timed_out',
  'rolled_back',
  'failed',
  'cancelled',
];
export function isTerminalRebuildStage(s: RebuildStage): boolean {
  return TERMINAL_REBUILD_STAGES.includes(s);
}

/** Activity timing knobs; tests shorten them, production keeps the defaults. */
export const rebuildTimingsSchema = z
  .object({
    /** Without a heartbeat for this long, a build attempt is taken as lost and retried on another worker. */
    buildHeartbeatSeconds: z.number().int().min(2).max(600).default(60),
    buildTimeoutSeconds: z
      .number()
      .int()
      .min(10)
      .max(4 * 3600)
      .default(3600),
  })
  .strict();
export type RebuildTimings = z.output<typeof rebuildTimingsSchema>;

export interface RebuildWorkflowInput {
  tenant: string;
  userId: string;
  request: RebuildRequest;
  /** The resolved target, as configured when the rebuild was requested. */
  target: RebuildTarget;
  approvalTimeoutSeconds: number;
  timings: RebuildTimings;
  requestedAt: number;
}

const failureSchema = z.object({ code: z.string(), message: z.string() });

export const rebuildViewSchema = z.object({
  rebuildId: z.string(),
  target: z.string(),
  ref: z.string(),
  commit: z.string().optional(),
  stage: z.enum(REBUILD_STAGES),
  requestedBy: z.object({ tenant: z.string(), userId: z.string() }),
  reason: z.string().optional(),
  createdAt: z.string(),
  finishedAt: z.string().optional(),
  approvalDeadline: z.string().optional(),
  approval: z
    .object({
      decision: z.enum(['approve', 'reject']),
      by: z.string(),
      at: z.string(),
      reason: z.string().optional(),
    })
    .optional(),
  /** Who approved so far, when the target needs more than one approver. */
  approvals: z.array(z.string()).optional(),
  verify: z.array(
    z.object({
      suite: z.string(),
      passed: z.boolean(),
      exitCode: z.number().int(),
      timedOut: z.boolean(),
      durationMs: z.number().int(),
      outputTail: z.string(),
    }),
  ),
  images: z.array(
    z.object({
      name: z.string(),
      tag: z.string(),
      imageId: z.string(),
      durationMs: z.number().int(),
      cachedSteps: z.number().int(),
      totalSteps: z.number().int(),
      pushed: z.string().optional(),
    }),
  ),
  deploy: z.array(
    z.object({
      service: z.string(),
      image: z.string(),
      previousImage: z.string().optional(),
      changed: z.boolean(),
      healthy: z.boolean().optional(),
      rolledBack: z.boolean().optional(),
    }),
  ),
  /** Wall time of each stage in ms (verify, build, approval, deploy). */
  stageMs: z.record(z.string(), z.number().int()),
  /** Live progress of the current activity (from its heartbeat), when one is running. */
  progress: z.record(z.string(), z.unknown()).optional(),
  error: failureSchema.optional(),
  events: z.object({ emitted: z.number().int(), published: z.number().int() }),
});
export type RebuildView = z.infer<typeof rebuildViewSchema>;

/**
 * `GET /v1/rebuild-targets/:target/deployed`: the release a target runs now, from its last
 * completed rebuild (a rolled-back or rejected rebuild changes nothing).
 */
export const deployedViewSchema = z.object({
  target: z.string(),
  /** Absent while no rebuild of the target has completed. */
  rebuildId: z.string().optional(),
  commit: z.string().optional(),
  deployedAt: z.string().optional(),
  services: z.array(
    z.object({
      service: z.string(),
      /** The image tag the service runs (`<image>:<commit>`). */
      image: z.string(),
      /** Its image id (content digest, `sha256:...`). */
      imageId: z.string(),
    }),
  ),
});
export type DeployedView = z.infer<typeof deployedViewSchema>;

/** The approval decision a principal with `rebuild:approve` sends (by workflow update). */
export interface RebuildDecision {
  decision: 'approve' | 'reject';
  tenant: string;
  userId: string;
  reason?: string;
}

/** Workflow id of a target's rebuilds: one at a time per target. */
export function rebuildWorkflowId(target: string): string {
  return `rebuild-${target}`;
}

/** Rebuild id `rb_<target>_<temporal run id>`: names one rebuild of a target, strict-id safe. */
export function rebuildIdOf(target: string, runId: string): string {
  return `rb_${target}_${runId}`;
}

const REBUILD_ID =
  /^rb_([a-z0-9][a-z0-9-]{0,22})_([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$/;

/** The target and Temporal run id of a rebuild id, or undefined when it is not one. */
export function parseRebuildId(id: string): { target: string; runId: string } | undefined {
  const m = REBUILD_ID.exec(id);
  return m?.[1] && m[2] ? { target: m[1], runId: m[2] } : undefined;
}

/** Replaces `{{commit}}` and `{{image:<name>}}` in a config string. */
export function expandTemplate(
  value: string,
  vars: { commit: string; images: Record<string, string> },
): string {
  return value
    .replace(/\{\{commit\}\}/g, vars.commit)
    .replace(/\{\{image:([A-Za-z0-9_-]+)\}\}/g, (m, name: string) => vars.images[name] ?? m);
}

/** A run's branch (`choiros/run/<runId>`, however spelled: `heads/…`, `refs/heads/…`): never a rebuild's source. */
const RUN_BRANCH = /(^|\/)choiros\/run(\/|$)/;

/**
 * May `target` be rebuilt from `ref`? Never from a run branch (unreviewed run output); and, when
 * the target lists `refs`, only from a ref one of them matches (`refs/heads/` or `refs/tags/`
 * prefixes are ignored for the comparison). Pure: the gateway asks before it starts a rebuild.
 */
export function rebuildRefAllowed(target: Pick<RebuildTarget, 'refs'>, ref: string): boolean {
  if (RUN_BRANCH.test(ref)) return false;
  if (!target.refs) return true;
  const name = ref.replace(/^(refs\/)?(heads|tags)\//, '');
  return target.refs.some((g) => globToRegExp(g).test(name));
}
