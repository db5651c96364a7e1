/** Builds the sandbox image locally (no registry) when it is missing or its inputs changed. */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFile, cp, mkdir, mkdtemp, readFile, realpath, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import type Docker from 'dockerode';

const run = promisify(execFile);

/**
 * Host files that give a `FROM scratch` sandbox `node` and `git`: the binaries (node at
 * /usr/local/bin/node, git with its /usr/lib/git-core helpers) and the shared libraries `ldd`
 * names, at the same absolute paths. Only used when the base is scratch; a real base image
 * (e.g. node:20-slim) brings its own. Missing tools are skipped, never fatal.
 */
export async function hostTools(): Promise<{ from: string; to: string; dir?: boolean }[]> {
  const files: { from: string; to: string; dir?: boolean }[] = [];
  const libs = new Set<string>();
  const add = async (bin: string, to: string): Promise<void> => {
    const real = await realpath(bin);
    files.push({ from: real, to });
    const { stdout } = await run('ldd', [real]);
    for (const m of stdout.matchAll(/(\/[^\s()]+\.so[^\s()]*)/g)) if (m[1]) libs.add(m[1]);
  };
  const which = async (name: string): Promise<string | undefined> =>
    run('sh', ['-c', `command -v ${name}`]).then(
      (r) => r.stdout.trim() || undefined,
      () => undefined,
    );
  const node = await which('node');
  if (node) await add(node, '/usr/local/bin/node');
  const git = await which('git');
  if (git) {
    await add(git, '/usr/bin/git');
    const core = await stat('/usr/lib/git-core').then(
      () => true,
      () => false,
    );
    if (core) files.push({ from: '/usr/lib/git-core', to: '/usr/lib/git-core', dir: true });
    const templates = await stat('/usr/share/git-core/templates').then(
      () => true,
      () => false,
    );
    if (templates)
      files.push({ from: '/usr/share/git-core/templates', to: '/usr/share/git-core/templates', dir: true });
  }
  for (const lib of libs) files.push({ from: await realpath(lib), to: lib });
  return files;
}

export const DEFAULT_SANDBOX_IMAGE = 'choiros-sandbox:local';
const HASH_LABEL = 'choiros.image-inputs';

export async function ensureSandboxImage(opts: {
  docker: Docker;
  repoRoot: string;
  busybox: string;
  image?: string;
  baseImage?: string;
  log?: (line: string) => void;
}): Promise<{ image: string; id: string; built: boolean }> {
  const image = opts.image ?? DEFAULT_SANDBOX_IMAGE;
  const dockerfileDir = join(opts.repoRoot, 'infra/images/sandbox');
  const dockerfile = await readFile(join(dockerfileDir, 'Dockerfile'));
  const busybox = await readFile(opts.busybox);
  const baseImage = opts.baseImage ?? 'scratch';
  const tools = baseImage === 'scratch' ? await hostTools() : [];
  const hash = createHash('sha256').update(dockerfile).update(busybox).update(baseImage);
  // Host tools change with host upgrades: path, size and mtime are enough to notice.
  for (const t of tools) {
    const s = await stat(t.from);
    hash.update(`${t.from}>${t.to}:${s.size}:${s.mtimeMs}\n`);
  }
  const inputs = hash.digest('hex').slice(0, 32);
  try {
    const info = await opts.docker.getImage(image).inspect();
    if (info.Config?.Labels?.[HASH_LABEL] === inputs) return { image, id: info.Id, built: false };
  } catch {
    /* missing: build it */
  }
  opts.log?.(`building sandbox image ${image} (base ${baseImage})`);
  const ctx = await mkdtemp(join(tmpdir(), 'choiros-sandbox-ctx-'));
  try {
    await copyFile(join(dockerfileDir, 'Dockerfile'), join(ctx, 'Dockerfile'));
    await copyFile(opts.busybox, join(ctx, 'busybox'));
    await mkdir(join(ctx, 'rootfs'), { recursive: true });
    for (const t of tools) {
      const dest = join(ctx, 'rootfs', t.to);
      await mkdir(dirname(dest), { recursive: true });
      if (t.dir) await cp(t.from, dest, { recursive: true, verbatimSymlinks: true });
      else await copyFile(t.from, dest);
    }
    // .keep: COPY of an empty directory still needs something in the context.
    await copyFile(join(dockerfileDir, 'Dockerfile'), join(ctx, 'rootfs', '.choiros-rootfs'));
    const stream = await opts.docker.buildImage(
      { context: ctx, src: ['Dockerfile', 'busybox', 'rootfs'] },
      {
        t: image,
        buildargs: { BASE_IMAGE: baseImage },
        labels: { [HASH_LABEL]: inputs },
        rm: true,
        forcerm: true,
      },
    );
    await new Promise<void>((resolve, reject) => {
      opts.docker.modem.followProgress(
        stream,
        (err: Error | null, res: { error?: string }[]) => {
          const failed = res?.find((r) => r.error);
          if (err || failed)
            reject(new Error(`sandbox image build failed: ${err?.message ?? failed?.error ?? ''}`));
          else resolve();
        },
        (ev: { stream?: string }) => {
          const line = ev.stream?.trim();
          if (line) opts.log?.(line);
        },
      );
    });
  } finally {
    await rm(ctx, { recursive: true, force: true });
  }
  const info = await opts.docker.getImage(image).inspect();
  return { image, id: info.Id, built: true };
}
