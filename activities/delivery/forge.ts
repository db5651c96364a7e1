/**
 * Forge adapters (decision 0020): open a pull request for a delivered branch. One implementation,
 * GitHub's REST API (`POST /repos/{owner}/{repo}/pulls`), which Gitea serves too under `/api/v1`.
 */
import { ApplicationFailure } from '@temporalio/common';
import type { PullRequestResult } from './types';

export interface PullRequestRequest {
  /** The repository's https URL; owner and name are its last two path segments. */
  repo: string;
  head: string;
  base: string;
  title: string;
  body: string;
}

/** A forge that opens pull requests. */
export interface ForgeAdapter {
  readonly name: string;
  /** The branch pull requests target when a run's base ref is not a branch name. */
  readonly defaultBase: string;
  openPullRequest(req: PullRequestRequest): Promise<PullRequestResult>;
}

/** `{owner, name}` of a repository URL (`https://github.com/acme/app.git` → acme, app). */
export function ownerAndName(repo: string): { owner: string; name: string } {
  const segments = new URL(repo).pathname
    .replace(/\.git\/?$/, '')
    .split('/')
    .filter(Boolean);
  const name = segments.pop();
  const owner = segments.pop();
  if (!owner || !name)
    throw ApplicationFailure.create({
      type: 'delivery_failed',
      message: `cannot tell the owner and name of ${repo} for the forge`,
      nonRetryable: true,
    });
  return { owner, name };
}

const prAnswer = (v: unknown): { url: string | null; number: number | null } => {
  const o = (typeof v === 'object' && v !== null ? v : {}) as { html_url?: unknown; number?: unknown };
  return {
    url: typeof o.html_url === 'string' ? o.html_url : null,
    number: typeof o.number === 'number' && Number.isInteger(o.number) ? o.number : null,
  };
};

/**
 * GitHub's REST API with a token (a personal or installation token). A 422 "already exists" answer
 * finds the open pull request for the head instead; 5xx and network failures are retried by the
 * activity's policy, anything else fails the step for good. The token goes in a header only.
 */
export function githubForge(opts: {
  api: string;
  token: () => string;
  defaultBase?: string;
  fetchImpl?: typeof fetch;
  timeoutMs?: number;
}): ForgeAdapter {
  const doFetch = opts.fetchImpl ?? fetch;
  const base = opts.api.replace(/\/+$/, '');
  const call = async (method: string, path: string, body?: unknown): Promise<Response> => {
    try {
      return await doFetch(`${base}${path}`, {
        method,
        headers: {
          accept: 'application/vnd.github+json',
          authorization: `Bearer ${opts.token()}`,
          'x-github-api-version': '2022-11-28',
          'user-agent': 'choiros-orchestrator',
          ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
        },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        redirect: 'error',
        signal: AbortSignal.timeout(opts.timeoutMs ?? 30_000),
      });
    } catch (err) {
      throw ApplicationFailure.create({
        type: 'delivery_failed',
        message: `the forge API could not be reached: ${err instanceof Error ? err.name : 'error'}`,
        nonRetryable: false,
      });
    }
  };
  const fail = (res: Response, what: string): ApplicationFailure =>
    ApplicationFailure.create({
      type: 'delivery_failed',
      message: `the forge answered ${res.status} to ${what}`,
      nonRetryable: res.status < 500 && res.status !== 429,
    });
  return {
    name: 'github',
    defaultBase: opts.defaultBase ?? 'main',
    async openPullRequest(req) {
      const { owner, name } = ownerAndName(req.repo);
      const path = `/repos/${encodeURIComponent(owner)}/${encodeURIComponent(name)}/pulls`;
      const res = await call('POST', path, {
        title: req.title,
        head: req.head,
        base: req.base,
        body: req.body,
      });
      if (res.status === 201) return { forge: 'github', ...prAnswer(await res.json()), existing: false };
      if (res.status === 422) {
        const text = await res.text();
        if (/already exists/i.test(text)) {
          const q = `?state=open&head=${encodeURIComponent(`${owner}:${req.head}`)}`;
          const list = await call('GET', `${path}${q}`);
          if (!list.ok) throw fail(list, 'listing pull requests');
          const items: unknown = await list.json();
          const first: unknown = Array.isArray(items) ? items[0] : undefined;
          return { forge: 'github', ...prAnswer(first), existing: true };
        }
      }
      throw fail(res, 'opening a pull request');
    },
  };
}
