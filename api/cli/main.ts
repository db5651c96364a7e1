/**
 * The `choiros` command line: a client of the HTTP API.
 *   choiros runs start --repo <path> [--base-ref main] [--mood CALM] --verifier <ID>... [--description <text>]
 *                      [--idempotency-key <key>] [--watch] -- <argv...>
 *   choiros runs start --file request.json [--watch]
 *   choiros runs status <runId>
 *   choiros runs cancel <runId>
 *   choiros runs watch <runId>        live events, a progress line per work item; exit 0 when committed
 *   choiros runs approve|reject <runId> [--comment <text>]
 *   choiros runs answer <runId> <interruptId> <answer> [--comment <text>]
 *   choiros runs rerun <runId> [--mood <MOOD>] [--idempotency-key <key>] [--watch]
 *   choiros runs deliver <runId>      retry a failed delivery to the remote origin; exit 0 when delivered
 *   choiros graphs start <graph.json> [--idempotency-key <key>]
 *   choiros graphs status <graphId>   items, their runs and moods; exit 0 when completed
 *   choiros graphs cancel <graphId>
 *   choiros rebuilds start [--target choiros] [--ref main] [--approval-timeout <s>] [--reason <text>] [--watch]
 *   choiros rebuilds status <rebuildId> [--watch]   stage, progress, verify/build/deploy; --watch until it ends
 *   choiros rebuilds status [--target choiros]      what the target runs now: commit, image ids per service
 *   choiros rebuilds approve|reject <rebuildId> [--reason <text>]
 * Configuration: CHOIROS_API_URL (default http://127.0.0.1:8080) and CHOIROS_TOKEN, or --api / --token.
 */
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { deployedLines, rebuildWatchLines } from './rebuild-watch';
import { sseFrames } from './sse';
import {
  isTerminalRebuildStage,
  isTerminalStatus,
  runStatusSchema,
  type DeliveryView,
  type DeployedView,
  type EventEnvelope,
  type RebuildView,
  type RunView,
  type WorkGraphView,
} from '../../contracts';

const USAGE = `usage:
  choiros runs start --repo <path> [--base-ref <ref>] [--mood <MOOD>] --verifier <ID> [--verifier <ID>...]
                     [--description <text>] [--idempotency-key <key>] [--watch] -- <command> [args...]
  choiros runs start --file <request.json> [--idempotency-key <key>] [--watch]
  choiros runs status <runId>
  choiros runs cancel <runId>
  choiros runs watch <runId>
  choiros runs approve <runId> [--comment <text>]
  choiros runs reject <runId> [--comment <text>]
  choiros runs answer <runId> <interruptId> <answer> [--comment <text>]
  choiros runs rerun <runId> [--mood <MOOD>] [--idempotency-key <key>] [--watch]
  choiros runs deliver <runId>
  choiros graphs start <graph.json> [--idempotency-key <key>]
  choiros graphs status <graphId>
  choiros graphs cancel <graphId>
  choiros rebuilds start [--target <name>] [--ref <ref>] [--approval-timeout <seconds>] [--reason <text>] [--watch]
  choiros rebuilds status <rebuildId> [--watch]
  choiros rebuilds status [--target <name>]
  choiros rebuilds approve <rebuildId> [--reason <text>]
  choiros rebuilds reject <rebuildId> [--reason <text>]
options: --api <url> (CHOIROS_API_URL), --token <jwt> (CHOIROS_TOKEN), --json (raw JSON output)`;

class CliError extends Error {
  constructor(
    message: string,
    /** The HTTP status, when the API answered. */
    readonly status?: number,
  ) {
    super(message);
  }
}

interface Ctx {
  api: string;
  token: string;
  json: boolean;
  out: (line: string) => void;
}

async function call(
  ctx: Ctx,
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<unknown> {
  const res = await fetch(`${ctx.api}${path}`, {
    method,
    headers: {
      authorization: `Bearer ${ctx.token}`,
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      ...headers,
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  const parsed: unknown = text ? JSON.parse(text) : undefined;
  if (!res.ok) {
    const p = parsed as { code?: string; detail?: string } | undefined;
    throw new CliError(
      `${method} ${path}: ${res.status} ${p?.code ?? ''} ${p?.detail ?? text}`.trim(),
      res.status,
    );
  }
  return parsed;
}

function rebuildSummary(v: RebuildView): string {
  const progress = v.progress
    ? `  progress: ${Object.entries(v.progress)
        .map(([k, x]) => `${k}=${typeof x === 'string' ? x : JSON.stringify(x)}`)
        .join(' ')}`
    : '';
  return [
    `rebuild ${v.rebuildId}: ${v.stage}`,
    `  target ${v.target} @ ${v.ref}${v.commit ? ` (${v.commit.slice(0, 12)})` : ''}, by ${v.requestedBy.userId}`,
    v.verify.length
      ? `  verify: ${v.verify.map((s) => `${s.suite}=${s.passed ? 'pass' : 'fail'}`).join(' ')}`
      : '',
    v.images.length ? `  images: ${v.images.map((i) => i.tag).join(' ')}` : '',
    v.approvalDeadline && v.stage === 'awaiting_approval' ? `  approve before ${v.approvalDeadline}` : '',
    v.approval
      ? `  ${v.approval.decision} by ${v.approval.by}${v.approval.reason ? `: ${v.approval.reason}` : ''}`
      : '',
    v.deploy.length
      ? `  deploy: ${v.deploy.map((d) => `${d.service}${d.healthy === false ? ' (unhealthy)' : ''}${d.rolledBack ? ' (rolled back)' : ''}`).join(' ')}`
      : '',
    progress,
    v.error ? `  error ${v.error.code}: ${v.error.message}` : '',
  ]
    .filter(Boolean)
    .join('\n');
}

/** How long `--watch` keeps retrying while the API does not answer (e.g. it is being replaced). */
const WATCH_UNREACHABLE_MS = 300_000;

/**
 * Polls a rebuild until it ends, printing what changed as lines (stage, suites, a progress line per
 * image build step, built images, approval, deploy, health, rollback); exit 0 when completed.
 */
async function watchRebuild(ctx: Ctx, rebuildId: string): Promise<number> {
  let prev: RebuildView | undefined;
  let lastJson = '';
  let unreachableSince: number | undefined;
  for (;;) {
    let v: RebuildView;
    try {
      v = (await call(ctx, 'GET', `/v1/rebuilds/${encodeURIComponent(rebuildId)}`)) as RebuildView;
      unreachableSince = undefined;
    } catch (err) {
      // The deploy may be replacing the API this talks to: wait for it (5 minutes at most).
      const transient = !(err instanceof CliError) || (err.status !== undefined && err.status >= 502);
      if (!transient) throw err;
      if (unreachableSince === undefined) {
        unreachableSince = Date.now();
        if (!ctx.json) ctx.out(`  (the API does not answer: ${(err as Error).message}; retrying)`);
      } else if (Date.now() - unreachableSince > WATCH_UNREACHABLE_MS) throw err;
      await new Promise((r) => setTimeout(r, 2000));
      continue;
    }
    if (ctx.json) {
      const line = JSON.stringify(v);
      if (line !== lastJson) ctx.out(line);
      lastJson = line;
    } else for (const line of rebuildWatchLines(prev, v)) ctx.out(line);
    prev = v;
    if (isTerminalRebuildStage(v.stage)) return v.stage === 'completed' ? 0 : 1;
    await new Promise((r) => setTimeout(r, 2000));
  }
}

async function rebuilds(
  ctx: Ctx,
  verb: string | undefined,
  id: string | undefined,
  values: RebuildFlags,
): Promise<number> {
  const need = (): string => {
    if (!id) throw new CliError(`rebuilds ${verb ?? ''} needs a rebuild id\n${USAGE}`);
    return encodeURIComponent(id);
  };
  switch (verb) {
    case 'start': {
      const timeout = values['approval-timeout'];
      const v = (await call(ctx, 'POST', '/v1/rebuilds', {
        ...(values.target ? { target: values.target } : {}),
        ...(values.ref ? { ref: values.ref } : {}),
        ...(timeout ? { approvalTimeoutSeconds: Number(timeout) } : {}),
        ...(values.reason ? { reason: values.reason } : {}),
      })) as RebuildView;
      ctx.out(ctx.json ? JSON.stringify(v) : `started ${v.rebuildId}`);
      return values.watch ? watchRebuild(ctx, v.rebuildId) : 0;
    }
    case 'status': {
      if (!id) {
        // No rebuild named: what the target runs now.
        const target = encodeURIComponent(values.target ?? 'choiros');
        const d = (await call(ctx, 'GET', `/v1/rebuild-targets/${target}/deployed`)) as DeployedView;
        ctx.out(ctx.json ? JSON.stringify(d) : deployedLines(d).join('\n'));
        return 0;
      }
      if (values.watch) return watchRebuild(ctx, need());
      const v = (await call(ctx, 'GET', `/v1/rebuilds/${need()}`)) as RebuildView;
      ctx.out(ctx.json ? JSON.stringify(v) : rebuildSummary(v));
      return isTerminalRebuildStage(v.stage) && v.stage !== 'completed' ? 1 : 0;
    }
    case 'approve':
    case 'reject': {
      const v = (await call(
        ctx,
        'POST',
        `/v1/rebuilds/${need()}/${verb}`,
        values.reason ? { reason: values.reason } : {},
      )) as RebuildView;
      ctx.out(
        ctx.json ? JSON.stringify(v) : `${verb === 'approve' ? 'approved' : 'rejected'} ${v.rebuildId}`,
      );
      return 0;
    }
    default:
      throw new CliError(`unknown command rebuilds ${verb ?? ''}\n${USAGE}`);
  }
}

interface RebuildFlags {
  target?: string;
  ref?: string;
  'approval-timeout'?: string;
  reason?: string;
  watch?: boolean;
}

function summary(v: RunView): string {
  const verifiers = v.verifiers.map((x) => `${x.id}=${x.result}`).join(' ');
  return [
    `run ${v.runId}: ${v.status}`,
    `  work item ${v.workItem.id}: ${v.workItem.description.split('\n')[0] ?? ''}`,
    `  repo ${v.repo} @ ${v.baseRef}${v.baseCommit ? ` (${v.baseCommit.slice(0, 12)})` : ''}, mood ${v.mood}`,
    v.execution
      ? `  execute: exit ${v.execution.exitCode}${v.execution.timedOut ? ' (timed out)' : ''} in ${v.execution.durationMs} ms`
      : '',
    verifiers ? `  verifiers: ${verifiers}` : '',
    v.queuePosition ? `  queued: position ${v.queuePosition}` : '',
    ...(v.interrupts ?? []).map(
      (i) =>
        `  interrupt ${i.id} (${i.kind}, ${i.status}): ${i.question} [${i.options.join('|')}]` +
        (i.status === 'open' ? ` default ${i.defaultAction} at ${i.deadline}` : ` answer ${i.answer ?? ''}`),
    ),
    v.approval
      ? `  approval (${v.approval.requirement}, ${v.approval.approvals.length}/${v.approval.quorum}): ${v.approval.decision ?? `waiting until ${v.approval.deadline}`}`
      : '',
    v.rerunOf ? `  rerun of ${v.rerunOf}` : '',
    v.commit ? `  committed ${v.commit.slice(0, 12)} on ${v.branch ?? ''}` : '',
    v.delivery ? `  ${deliveryLine(v.delivery)}` : '',
    v.error ? `  error ${v.error.code}: ${v.error.message}` : '',
  ]
    .filter(Boolean)
    .join('\n');
}

function deliveryLine(d: DeliveryView): string {
  return [
    `delivery ${d.status} (attempt ${d.attempt}) ${d.remoteRef}`,
    d.error ? ` error ${d.error.code}: ${d.error.message}` : '',
    d.pullRequest?.url ? ` pull request ${d.pullRequest.url}` : '',
  ].join('');
}

/** Follows a run's SSE stream, reconnecting with Last-Event-ID; returns the final status. */
export async function watch(ctx: Ctx, runId: string): Promise<string> {
  let lastId = '';
  let finalStatus = '';
  const progress = new Map<string, string>();
  for (let attempt = 0; attempt < 30 && !finalStatus; attempt++) {
    const res = await fetch(`${ctx.api}/v1/runs/${runId}/events`, {
      headers: {
        authorization: `Bearer ${ctx.token}`,
        accept: 'text/event-stream',
        ...(lastId ? { 'last-event-id': lastId } : {}),
      },
    }).catch(() => undefined);
    if (!res) {
      await new Promise((r) => setTimeout(r, 1000));
      continue;
    }
    if (!res.ok || !res.body) {
      const p = (await res.json().catch(() => ({}))) as { code?: string; detail?: string };
      throw new CliError(`watch ${runId}: ${res.status} ${p.code ?? ''} ${p.detail ?? ''}`.trim());
    }
    try {
      for await (const frame of sseFrames(res.body)) {
        if (frame.id) lastId = frame.id;
        const event = JSON.parse(frame.data) as EventEnvelope;
        if (ctx.json) ctx.out(frame.data);
        else ctx.out(describe(event, progress));
        if (event.event_type === 'run.completed') finalStatus = String(event.payload.status);
      }
    } catch {
      // Connection dropped: reconnect and resume after the last event seen.
    }
  }
  if (!finalStatus) throw new CliError(`watch ${runId}: the event stream kept failing; try again`);
  return finalStatus;
}

function describe(e: EventEnvelope, progress: Map<string, string>): string {
  const p = e.payload;
  const wi = e.work_item_id ?? e.run_id;
  let detail = '';
  switch (e.event_type) {
    case 'note.status':
      progress.set(wi, `${String(p.status)}`);
      detail = `${String(p.previous)} → ${String(p.status)}`;
      break;
    case 'receipt.verifier.attestations': {
      const a = p.attestation as { verifier_id?: string; result?: string; exit_code?: number };
      detail = `${a.verifier_id ?? '?'}: ${a.result ?? '?'} (exit ${a.exit_code ?? '?'})`;
      break;
    }
    case 'run.execution.completed':
      detail = `exit ${String(p.exit_code)} in ${String(p.duration_ms)} ms`;
      break;
    case 'receipt.commit':
      detail = `${String(p.commit).slice(0, 12)} on ${String(p.branch)}`;
      break;
    case 'run.failed':
    case 'run.discarded':
      detail = JSON.stringify(p.error ?? p.reason ?? '');
      break;
    case 'run.completed':
      progress.set(wi, String(p.status));
      detail = String(p.status);
      break;
    default:
      detail = '';
  }
  const line = `#${e.seq} ${new Date(e.timestamp).toISOString()} ${e.event_type}${detail ? ` ${detail}` : ''}`;
  return `${line}\n  [${wi}] ${progress.get(wi) ?? 'created'}`;
}

export async function main(
  argv: string[],
  env: NodeJS.ProcessEnv,
  out: (line: string) => void,
): Promise<number> {
  const dashdash = argv.indexOf('--');
  const args = dashdash >= 0 ? argv.slice(0, dashdash) : argv;
  const command = dashdash >= 0 ? argv.slice(dashdash + 1) : [];
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      api: { type: 'string' },
      token: { type: 'string' },
      json: { type: 'boolean' },
      repo: { type: 'string' },
      'base-ref': { type: 'string' },
      mood: { type: 'string' },
      verifier: { type: 'string', multiple: true },
      description: { type: 'string' },
      'idempotency-key': { type: 'string' },
      file: { type: 'string' },
      watch: { type: 'boolean' },
      comment: { type: 'string' },
      target: { type: 'string' },
      ref: { type: 'string' },
      'approval-timeout': { type: 'string' },
      reason: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help || positionals.length === 0) {
    out(USAGE);
    return values.help ? 0 : 2;
  }
  const token = values.token ?? env.CHOIROS_TOKEN;
  if (!token)
    throw new CliError(
      'no token: set CHOIROS_TOKEN or pass --token (npm run token -- --sub <user> makes a dev token)',
    );
  const ctx: Ctx = {
    api: (values.api ?? env.CHOIROS_API_URL ?? 'http://127.0.0.1:8080').replace(/\/$/, ''),
    token,
    json: values.json ?? false,
    out,
  };
  const [group, verb, runId] = positionals;
  if (group === 'graphs') return graphs(ctx, verb, runId, values['idempotency-key']);
  if (group === 'rebuilds') return rebuilds(ctx, verb, runId, values);
  if (group !== 'runs') throw new CliError(`unknown command ${group ?? ''}\n${USAGE}`);
  const needRun = (): string => {
    if (!runId) throw new CliError(`runs ${verb ?? ''} needs a run id\n${USAGE}`);
    return runId;
  };
  const exitFor = (status: string): number => (status === 'committed' ? 0 : 1);
  switch (verb) {
    case 'start': {
      let body: unknown;
      if (values.file) body = JSON.parse(await readFile(values.file, 'utf8'));
      else {
        if (!values.repo || command.length === 0)
          throw new CliError(`runs start needs --repo and a command after --\n${USAGE}`);
        body = {
          repo: values.repo,
          ...(values['base-ref'] ? { baseRef: values['base-ref'] } : {}),
          ...(values.mood ? { mood: values.mood } : {}),
          workItem: {
            description: values.description ?? command.join(' '),
            execute: command,
            requiredVerifiers: values.verifier ?? [],
          },
        };
      }
      const key = values['idempotency-key'];
      const view = (await call(
        ctx,
        'POST',
        '/v1/runs',
        body,
        key ? { 'idempotency-key': key } : {},
      )) as RunView;
      out(ctx.json ? JSON.stringify(view) : `started ${view.runId}`);
      if (!values.watch) return 0;
      return exitFor(await watch(ctx, view.runId));
    }
    case 'status': {
      const view = (await call(ctx, 'GET', `/v1/runs/${encodeURIComponent(needRun())}`)) as RunView;
      out(ctx.json ? JSON.stringify(view) : summary(view));
      const status = runStatusSchema.parse(view.status);
      return isTerminalStatus(status) ? exitFor(status) : 0;
    }
    case 'cancel': {
      const view = (await call(ctx, 'POST', `/v1/runs/${encodeURIComponent(needRun())}/cancel`)) as RunView;
      out(
        ctx.json ? JSON.stringify(view) : `cancellation requested for ${view.runId} (status ${view.status})`,
      );
      return 0;
    }
    case 'watch':
      return exitFor(await watch(ctx, needRun()));
    case 'approve':
    case 'reject': {
      const res = (await call(
        ctx,
        'POST',
        `/v1/runs/${encodeURIComponent(needRun())}/${verb}`,
        values.comment ? { comment: values.comment } : {},
      )) as { result: { outcome: string; approvals: number; quorum: number } };
      out(
        ctx.json
          ? JSON.stringify(res)
          : `${verb === 'approve' ? 'approved' : 'rejected'} ${needRun()}: ${res.result.outcome} (${res.result.approvals}/${res.result.quorum})`,
      );
      return 0;
    }
    case 'answer': {
      const [, , , interruptId, answer] = positionals;
      if (!interruptId || !answer)
        throw new CliError(`runs answer needs <runId> <interruptId> <answer>\n${USAGE}`);
      const res = await call(
        ctx,
        'POST',
        `/v1/runs/${encodeURIComponent(needRun())}/interrupts/${encodeURIComponent(interruptId)}/answer`,
        { answer, ...(values.comment ? { comment: values.comment } : {}) },
      );
      out(ctx.json ? JSON.stringify(res) : `answered ${interruptId} of ${needRun()}: ${answer}`);
      return 0;
    }
    case 'rerun': {
      const key = values['idempotency-key'];
      const view = (await call(
        ctx,
        'POST',
        `/v1/runs/${encodeURIComponent(needRun())}/rerun`,
        values.mood ? { mood: values.mood } : {},
        key ? { 'idempotency-key': key } : {},
      )) as RunView;
      out(ctx.json ? JSON.stringify(view) : `started ${view.runId} (rerun of ${needRun()})`);
      if (!values.watch) return 0;
      return exitFor(await watch(ctx, view.runId));
    }
    case 'deliver': {
      const delivery = (await call(
        ctx,
        'POST',
        `/v1/runs/${encodeURIComponent(needRun())}/delivery`,
        {},
      )) as DeliveryView;
      out(ctx.json ? JSON.stringify(delivery) : `${needRun()}: ${deliveryLine(delivery)}`);
      return delivery.status === 'failed' ? 1 : 0;
    }
    default:
      throw new CliError(`unknown command runs ${verb ?? ''}\n${USAGE}`);
  }
}

function graphSummary(v: WorkGraphView): string {
  const counts = Object.entries(v.counts)
    .map(([k, n]) => `${k} ${n}`)
    .join(', ');
  return [
    `graph ${v.graphId}: ${v.status} (${counts})`,
    `  repo ${v.repo} @ ${v.baseRef}, mood ${v.mood}, parallelism ${v.parallelism}${v.continuedAsNew ? `, continued as new ${v.continuedAsNew}×` : ''}`,
    v.integrationBranch
      ? `  graph branch ${v.integrationBranch}${v.integrationCommit ? ` at ${v.integrationCommit.slice(0, 12)}` : ''}`
      : '',
    ...v.items.map(
      (i) =>
        `  ${i.id}: ${i.status}${i.runs.length ? ` — ${i.runs.map((r) => `${r.runId} ${r.mood} ${r.status}`).join(', ')}` : ''}${i.blockedBy ? ` (blocked by ${i.blockedBy.join(', ')})` : ''}${i.error ? ` [${i.error.code}]` : ''}`,
    ),
    v.error ? `  error ${v.error.code}: ${v.error.message}` : '',
  ]
    .filter(Boolean)
    .join('\n');
}

/** `choiros graphs start <file>|status <id>|cancel <id>`. */
async function graphs(
  ctx: Ctx,
  verb: string | undefined,
  arg: string | undefined,
  key?: string,
): Promise<number> {
  if (!arg)
    throw new CliError(`graphs ${verb ?? ''} needs ${verb === 'start' ? 'a file' : 'a graph id'}\n${USAGE}`);
  const print = (v: WorkGraphView, text: string): void => ctx.out(ctx.json ? JSON.stringify(v) : text);
  switch (verb) {
    case 'start': {
      const body: unknown = JSON.parse(await readFile(arg, 'utf8'));
      const v = (await call(
        ctx,
        'POST',
        '/v1/work-graphs',
        body,
        key ? { 'idempotency-key': key } : {},
      )) as WorkGraphView;
      print(v, `started ${v.graphId}`);
      return 0;
    }
    case 'status': {
      const v = (await call(ctx, 'GET', `/v1/work-graphs/${encodeURIComponent(arg)}`)) as WorkGraphView;
      print(v, graphSummary(v));
      return v.status === 'running' || v.status === 'completed' ? 0 : 1;
    }
    case 'cancel': {
      const v = (await call(
        ctx,
        'POST',
        `/v1/work-graphs/${encodeURIComponent(arg)}/cancel`,
      )) as WorkGraphView;
      print(v, `cancellation requested for ${v.graphId} (status ${v.status})`);
      return 0;
    }
    default:
      throw new CliError(`unknown command graphs ${verb ?? ''}\n${USAGE}`);
  }
}

if (require.main === module) {
  main(process.argv.slice(2), process.env, (l) => process.stdout.write(`${l}\n`)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`choiros: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(err instanceof CliError ? 2 : 1);
    },
  );
}
