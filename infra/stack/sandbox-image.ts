/** Builds the sandbox image locally (no registry) when it is missing or its inputs changed. */
import { createHash } from 'node:crypto';
import { copyFile, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type Docker from 'dockerode';

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
  const inputs = createHash('sha256')
    .update(dockerfile)
    .update(busybox)
    .update(baseImage)
    .digest('hex')
    .slice(0, 32);
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
    const stream = await opts.docker.buildImage(
      { context: ctx, src: ['Dockerfile', 'busybox'] },
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
