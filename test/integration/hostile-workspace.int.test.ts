/**
 * The workspace boundary under attack (issue 13; docs/security.md). Each case is a real run through
 * the API, Temporal and the Docker driver whose command tries to make the host act for it — git
 * metadata of every kind, symlinks, hard links, special files, a file-count bomb, a byte bomb, a
 * disk and an inode filler, a process that outlives its command. For every case: no command ran on
 * the host (the proof file the attack would write is absent), the base branch did not move, the
 * source repository's own git files did not change, what was committed is exactly the expected
 * data, and a normal run in the same repository right after still commits exactly its change.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { link, mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { RunView } from '../../contracts';
import {
  env,
  git,
  makeGitRepo,
  startTestApi,
  startTestWorker,
  testWorkspaces,
  type TestApi,
  type TestWorker,
} from '../helpers/integration';
import { apiClient } from '../helpers/runs';

const QUOTA_MB = 64;
const MAX_ENTRIES = 2000;
const MAX_BYTES = 24 * 1024 * 1024;
const suffix = randomBytes(4).toString('hex');
const SECRET = `host-secret-${randomBytes(12).toString('hex')}`;

let api: TestApi;
let worker: TestWorker;
let proofDir: string;
let secretFile: string;

interface Case {
  name: string;
  /** Shell script run in the sandbox; @PROOF@, @REPO@ and @SECRET_FILE@ are replaced. */
  script: string;
  status: 'committed' | 'failed';
  /** Error code of a failed run. */
  code?: string;
  /** Exactly the paths the run branch holds (committed runs). */
  files?: string[];
  /** Further checks of the committed branch. */
  check?: (repo: string, branch: string, view: RunView) => void;
}

const fsmonitor = (cfg: string): string => `git config ${cfg} core.fsmonitor "touch @PROOF@"`;
/** A commit in a repository the run made (so HEAD resolves and host git would get to the index). */
const commitIn = (dir: string): string =>
  `git -C ${dir} -c user.name=m -c user.email=m@example.invalid commit -qm x`;

const cases: Case[] = [
  {
    name: 'gitdir-pointer-rewrite',
    // The attack as found: a repository of its own, core.fsmonitor, and the .git pointer aimed at it.
    // (`rm -f .git` first: under git worktrees, the layout this replaced, the tree had a pointer.)
    script: `rm -f .git; git init -q evil && echo a > evil/a && git -C evil add a && ${commitIn('evil')} && ${fsmonitor('-f evil/.git/config')} && printf 'gitdir: evil/.git\\n' > .git && echo c > f.txt`,
    status: 'committed',
    files: ['README.md', 'evil/a', 'f.txt'],
  },
  {
    name: 'gitdir-replaced',
    script: `rm -f .git; git init -q . && git add README.md && ${commitIn('.')} && ${fsmonitor('-f .git/config')} && git config -f .git/config core.hooksPath hooks && echo c > f.txt`,
    status: 'committed',
    files: ['README.md', 'f.txt'],
  },
  {
    name: 'config-driven-commands',
    script: [
      'git init -q .',
      'git config -f .git/config core.pager "touch @PROOF@"',
      'git config -f .git/config diff.external "touch @PROOF@"',
      'git config -f .git/config core.sshCommand "touch @PROOF@"',
      'git config -f .git/config credential.helper "!touch @PROOF@"',
      'git config -f .git/config core.alternateRefsCommand "touch @PROOF@"',
      'git config -f .git/config include.path /workspace/inc',
      "printf '[core]\\n\\tfsmonitor = touch @PROOF@\\n' > inc",
      'echo c > f.txt',
    ].join(' && '),
    status: 'committed',
    files: ['README.md', 'f.txt', 'inc'],
  },
  {
    name: 'attribute-driven-filters',
    script: [
      'git init -q .',
      'git config -f .git/config filter.evil.clean "touch @PROOF@"',
      'git config -f .git/config filter.evil.smudge "touch @PROOF@"',
      'git config -f .git/config filter.evil.process "touch @PROOF@"',
      'git config -f .git/config filter.evil.required true',
      'git config -f .git/config diff.evil.textconv "touch @PROOF@"',
      "printf '* filter=evil diff=evil merge=evil\\n' > .gitattributes",
      'echo c > f.txt',
    ].join(' && '),
    status: 'committed',
    files: ['.gitattributes', 'README.md', 'f.txt'],
    // No filter ran on the way in: the blob is the file's bytes.
    check: (repo, branch) => expect(git(repo, 'show', `${branch}:f.txt`)).toBe('c'),
  },
  {
    name: 'hooks',
    script: [
      'rm -f .git; git init -q .',
      'for h in pre-commit post-commit reference-transaction post-checkout post-index-change fsmonitor-watchman pre-auto-gc; do printf "#!/bin/sh\\ntouch @PROOF@\\n" > .git/hooks/$h; chmod +x .git/hooks/$h; done',
      'mkdir -p .githooks && cp .git/hooks/pre-commit .githooks/pre-commit',
      'git config -f .git/config core.hooksPath /workspace/.githooks',
      'echo c > f.txt',
    ].join(' && '),
    status: 'committed',
    files: ['.githooks/pre-commit', 'README.md', 'f.txt'],
  },
  {
    name: 'dotgit-symlink-to-source-repo',
    // Aimed at the source repository itself: obeying it would commit onto its checked-out branch.
    script: 'rm -f .git; ln -s @REPO@/.git .git && echo c > f.txt',
    status: 'committed',
    files: ['README.md', 'f.txt'],
  },
  {
    name: 'nested-repository',
    script: `mkdir sub && cd sub && git init -q && ${fsmonitor('-f .git/config')} && echo n > n.txt && cd .. && echo c > f.txt`,
    status: 'committed',
    files: ['README.md', 'f.txt', 'sub/n.txt'],
  },
  {
    name: 'nested-gitfile',
    script: `mkdir -p sub evil && git init -q evil/r && ${fsmonitor('-f evil/r/.git/config')} && printf 'gitdir: ../evil/r/.git\\n' > sub/.git && echo s > sub/s.txt`,
    status: 'committed',
    files: ['README.md', 'sub/s.txt'],
  },
  {
    name: 'dotgit-other-spellings',
    script:
      "mkdir .GIT git~1 .Git && printf '[core]\\n\\tfsmonitor = touch @PROOF@\\n' > .GIT/config && cp .GIT/config .Git/config && echo x > git~1/x && echo c > f.txt",
    status: 'committed',
    files: ['README.md', 'f.txt'],
  },
  {
    name: 'bare-repository-lookalike',
    // A tree root that looks like a bare git dir: discovery from the tree would take it.
    script:
      "mkdir -p objects/info refs/heads && echo 'ref: refs/heads/main' > HEAD && printf '[core]\\n\\tbare = true\\n\\tfsmonitor = touch @PROOF@\\n' > config && echo c > f.txt",
    status: 'committed',
    files: ['HEAD', 'README.md', 'config', 'f.txt'],
  },
  {
    name: 'symlinks-out-of-the-tree',
    script:
      'ln -s /etc/shadow shadow && ln -s @SECRET_FILE@ secret.txt && ln -s / root && ln -s ../../../../.. up && ln -s @REPO@/.git/config repo-config && echo c > f.txt',
    status: 'committed',
    files: ['README.md', 'f.txt', 'repo-config', 'root', 'secret.txt', 'shadow', 'up'],
    check: (repo, branch) => {
      // Stored as links (mode 120000 and the target's name), never the target's content.
      const modes = git(repo, 'ls-tree', branch, 'secret.txt', 'shadow', 'root');
      expect(modes.split('\n').every((l) => l.startsWith('120000 '))).toBe(true);
      expect(git(repo, 'cat-file', '-p', `${branch}:secret.txt`)).toBe(secretFile);
    },
  },
  {
    name: 'process-outlives-its-command',
    // Swaps a file for a symlink and plants git metadata after the command "finished".
    script:
      '(sleep 1; rm -f f.txt; ln -s @SECRET_FILE@ f.txt; git init -q .; echo late > late.txt) </dev/null >/dev/null 2>&1 & echo c > f.txt',
    status: 'committed',
    files: ['README.md', 'f.txt'],
    check: (repo, branch) => expect(git(repo, 'show', `${branch}:f.txt`)).toBe('c'),
  },
  {
    name: 'hard-links',
    // Links out of the tree cross a mount (EXDEV); links inside it are ordinary data.
    script:
      'touch /tmp/x; ln /etc/hostname hl1 2>/dev/null; ln /tmp/x hl2 2>/dev/null; echo a > a.txt && ln a.txt b.txt && echo c > f.txt',
    status: 'committed',
    files: ['README.md', 'a.txt', 'b.txt', 'f.txt'],
  },
  {
    name: 'special-files',
    script: 'mkfifo pipe && mkfifo sub-pipe && echo c > f.txt',
    status: 'committed',
    files: ['README.md', 'f.txt'],
  },
  {
    name: 'file-count-bomb',
    script: `i=0; while [ $i -lt ${MAX_ENTRIES + 500} ]; do : > f$i; i=$((i+1)); done`,
    status: 'failed',
    code: 'workspace_too_large',
  },
  {
    name: 'byte-bomb',
    script: `dd if=/dev/zero of=big bs=1M count=${MAX_BYTES / 1024 / 1024 + 6} 2>/dev/null`,
    status: 'failed',
    code: 'workspace_too_large',
  },
  {
    name: 'disk-filler',
    script: `dd if=/dev/zero of=fill bs=1M count=${QUOTA_MB * 4} 2>/dev/null; true`,
    status: 'failed',
    code: 'disk_quota_exceeded',
  },
  {
    name: 'inode-filler',
    script: 'i=0; while : > n$i 2>/dev/null; do i=$((i+1)); done; true',
    status: 'failed',
    code: 'disk_quota_exceeded',
  },
  {
    name: 'tmp-filler',
    // /tmp is a sized tmpfs: the writer gets ENOSPC, the run goes on, the host is untouched.
    script: 'dd if=/dev/zero of=/tmp/fill bs=1M count=1024 2>/dev/null; echo c > f.txt',
    status: 'committed',
    files: ['README.md', 'f.txt'],
  },
  {
    name: 'deep-tree',
    script: 'd=.; i=0; while [ $i -lt 200 ]; do d=$d/d; i=$((i+1)); done; mkdir -p $d && echo deep > $d/f',
    status: 'committed',
    check: (repo, branch) => {
      const files = git(repo, 'ls-tree', '-r', '--name-only', branch).split('\n');
      expect(files).toHaveLength(2);
      expect(files.find((f) => f.endsWith('/f'))?.split('/')).toHaveLength(201);
    },
  },
  {
    name: 'option-like-names',
    // Names that a host command taking them as arguments would read as options.
    script: "touch -- -rf '--exec=sh' '--upload-pack=sh' \"$(printf 'new\\nline')\" && echo c > f.txt",
    status: 'committed',
    files: ['--exec=sh', '--upload-pack=sh', '-rf', 'README.md', 'f.txt', 'new\nline'],
  },
];

/** What must not change on the host, per repository. */
function hostState(repo: string): string {
  const hash = createHash('sha256');
  hash.update(git(repo, 'for-each-ref', '--format=%(refname) %(objectname)', 'refs/heads/main', 'refs/tags'));
  hash.update(git(repo, 'symbolic-ref', 'HEAD'));
  hash.update(readFileSync(join(repo, '.git/config')));
  for (const h of readdirSync(join(repo, '.git/hooks')).sort()) hash.update(h);
  hash.update(readFileSync(secretFile));
  return hash.digest('hex');
}

const expand = (script: string, proof: string, repo: string): string =>
  script.replaceAll('@PROOF@', proof).replaceAll('@REPO@', repo).replaceAll('@SECRET_FILE@', secretFile);

beforeAll(async () => {
  proofDir = await mkdtemp(join(env.workDir(), 'proofs-'));
  secretFile = join(proofDir, 'host-secret.txt');
  await writeFile(secretFile, SECRET);
  worker = await startTestWorker('it-hostile-ws', {
    extraEnv: {
      CHOIROS_WORKSPACE_QUOTA_MB: String(QUOTA_MB),
      CHOIROS_WORKSPACE_MAX_ENTRIES: String(MAX_ENTRIES),
      CHOIROS_WORKSPACE_MAX_BYTES: String(MAX_BYTES),
    },
  });
  api = await startTestApi();
});

afterAll(async () => {
  await api?.stop();
  await worker?.stop();
});

function runRequest(repo: string, script: string, verifiers: string[]) {
  return {
    repo,
    baseRef: 'main',
    mood: 'CALM',
    workItem: {
      description: 'hostile workspace case',
      execute: ['sh', '-c', script],
      requiredVerifiers: verifiers,
      riskTier: 'low',
    },
  };
}

test(`when ${cases.length} runs attack the workspace boundary, then the host obeys none of them, and a normal run after each still commits exactly its change`, async () => {
  expect(cases.length).toBeGreaterThanOrEqual(20);
  const client = apiClient(api);
  const prepared = await Promise.all(
    cases.map(async (c, i) => {
      const repo = (await makeGitRepo({ 'README.md': 'hello\n' })).path;
      const proof = join(proofDir, `proof-${c.name}`);
      const token = await api.token({ sub: `mallory${i}`, tenant: 'acme' });
      return { c, repo, proof, token, main: git(repo, 'rev-parse', 'main'), state: hostState(repo) };
    }),
  );

  // The attacks, a few at a time (each is a real sandbox).
  const results: { view: RunView }[] = [];
  for (let i = 0; i < prepared.length; i += 6) {
    const batch = prepared.slice(i, i + 6);
    results.push(
      ...(await Promise.all(
        batch.map(async (p) => {
          const res = await client.call<RunView>('POST', '/v1/runs', {
            token: p.token,
            key: `hostile-${p.c.name}-${suffix}`,
            body: runRequest(p.repo, expand(p.c.script, p.proof, p.repo), ['V-TRUE']),
          });
          expect(res.status).toBe(201);
          return { view: await client.waitTerminal(res.body.runId, p.token, 240_000) };
        }),
      )),
    );
  }

  const table: string[] = [];
  for (const [i, p] of prepared.entries()) {
    const { view } = results[i]!;
    const { c, repo } = p;
    const branch = `choiros/run/${view.runId}`;
    table.push(`${c.name.padEnd(32)} ${view.status.padEnd(10)} ${view.error?.code ?? ''}`);
    // No command ran on the host; the base branch and the repository's own files are as they were.
    expect({ case: c.name, proof: existsSync(p.proof) }).toEqual({ case: c.name, proof: false });
    expect({ case: c.name, main: git(repo, 'rev-parse', 'main') }).toEqual({ case: c.name, main: p.main });
    expect({ case: c.name, host: hostState(repo) }).toEqual({ case: c.name, host: p.state });
    expect({ case: c.name, status: view.status, code: view.error?.code }).toEqual({
      case: c.name,
      status: c.status,
      code: c.code,
    });
    if (c.status === 'committed') {
      expect(git(repo, 'rev-parse', `${branch}^`)).toBe(p.main);
      if (c.files) {
        const files = git(repo, 'ls-tree', '-r', '-z', '--name-only', branch).split('\0').filter(Boolean);
        expect({ case: c.name, files: files.sort() }).toEqual({ case: c.name, files: [...c.files].sort() });
      }
      c.check?.(repo, branch, view);
      // Nothing of a host file reached the commit, the run view or the receipts.
      expect(() => git(repo, 'grep', '-q', SECRET, branch)).toThrow();
    } else {
      expect(git(repo, 'branch', '--list', branch)).toBe('');
    }
    expect(JSON.stringify(view)).not.toContain(SECRET);
    // The workspace is gone, its filesystem unmounted.
    expect(existsSync(join(worker.dataDir, 'worktrees', view.runId))).toBe(false);
  }
  process.stdout.write(`hostile workspace cases:\n${table.join('\n')}\n`);
  // No run's filesystem stays mounted (the warm pool's idle slots, decision 0016, are no run's).
  const mounts = (await readFile('/proc/self/mountinfo', 'utf8'))
    .split('\n')
    .filter((l) => !l.includes(join(worker.dataDir, 'worktrees', '.pool', '')));
  expect(mounts.join('\n')).not.toContain(join(worker.dataDir, 'worktrees'));

  // A normal run right after each case, in the same repository, commits exactly its change.
  for (let i = 0; i < prepared.length; i += 7) {
    await Promise.all(
      prepared.slice(i, i + 7).map(async (p) => {
        const res = await client.call<RunView>('POST', '/v1/runs', {
          token: p.token,
          key: `after-${p.c.name}-${suffix}`,
          body: runRequest(p.repo, 'echo done > RESULT.txt', ['V-RESULT-FILE', 'V-README-INTACT']),
        });
        expect(res.status).toBe(201);
        const view = await client.waitTerminal(res.body.runId, p.token, 240_000);
        expect({ case: p.c.name, status: view.status }).toEqual({ case: p.c.name, status: 'committed' });
        const branch = `choiros/run/${view.runId}`;
        expect(git(p.repo, 'rev-parse', `${branch}^`)).toBe(p.main);
        expect(git(p.repo, 'diff', '--name-only', `main..${branch}`)).toBe('RESULT.txt');
        expect(git(p.repo, 'show', `${branch}:RESULT.txt`)).toBe('done');
      }),
    );
  }
}, 900_000);

test('when a tree holds a hard link to a file outside it (a local-driver run could make one), then the seal refuses the tree and nothing is committed', async () => {
  const dataDir = await mkdtemp(join(env.workDir(), 'data-hardlink-'));
  const repo = await makeGitRepo({ 'README.md': 'hello\n' });
  const ws = testWorkspaces(dataDir);
  const runId = `it-hardlink-${suffix}`;
  const { tree } = await ws.create({ runId, tenant: 'acme', repo: repo.path, baseRef: 'main' });
  await mkdir(join(tree, 'sub'));
  await link(secretFile, join(tree, 'sub', 'stolen.txt'));
  expect(statSync(join(tree, 'sub', 'stolen.txt')).nlink).toBe(2);
  await expect(ws.seal(runId)).rejects.toMatchObject({ type: 'workspace_unsafe', nonRetryable: true });
  await expect(
    ws.commit(runId, { message: 'm', authorName: 'a', authorEmail: 'a@b.invalid' }),
  ).rejects.toThrow();
  expect(git(repo.path, 'branch', '--list', `choiros/run/${runId}`)).toBe('');
  expect(await ws.destroy({ runId, tenant: 'acme', repo: repo.path, keepBranch: false })).toEqual([
    'worktree',
  ]);
  expect(readFileSync(secretFile, 'utf8')).toBe(SECRET);
});

test('when a run names the platform data dir or a workspace as its repository, then the workspace refuses it before git looks', async () => {
  const dataDir = await mkdtemp(join(env.workDir(), 'data-forbidden-'));
  const platformRepo = await makeGitRepo({ 'README.md': 'platform\n' });
  const ws = testWorkspaces(dataDir, { forbiddenRepoRoots: [platformRepo.path] });
  const first = await ws.create({
    runId: `it-ok-${suffix}`,
    tenant: 'acme',
    repo: (await makeGitRepo()).path,
    baseRef: 'main',
  });
  for (const repo of [
    first.tree,
    join(dataDir, 'worktrees'),
    platformRepo.path,
    join(platformRepo.path, '.git'),
  ]) {
    await expect(
      ws.create({ runId: `it-no-${suffix}`, tenant: 'acme', repo, baseRef: 'main' }),
    ).rejects.toMatchObject({
      type: 'repo_not_allowed',
    });
  }
  expect(git(platformRepo.path, 'for-each-ref', '--format=%(refname)')).toBe('refs/heads/main');
});
