/** What `choiros rebuilds start|status --watch` and `rebuilds status --target` print. */
import { deployedLines, rebuildWatchLines } from '../../api/cli/rebuild-watch';
import type { RebuildView } from '../../contracts';

const commit = 'c'.repeat(40);

function buildView(overrides: Partial<RebuildView> = {}): RebuildView {
  return {
    rebuildId: 'rb_choiros_r1',
    target: 'choiros',
    ref: 'main',
    stage: 'resolving',
    requestedBy: { tenant: 'default', userId: 'alice' },
    createdAt: new Date(0).toISOString(),
    verify: [],
    images: [],
    deploy: [],
    stageMs: {},
    events: { emitted: 0, published: 0 },
    ...overrides,
  };
}

describe('rebuild watch lines', () => {
  test('when stages pass between two polls (an approval given at once), then each is printed, in order', () => {
    const building = buildView({ stage: 'building', commit, stageMs: { resolving: 10, verifying: 5_000 } });
    expect(rebuildWatchLines(undefined, building).filter((l) => l.startsWith('['))).toEqual([
      '[resolving]',
      '[verifying]',
      '[building]',
    ]);
    const deploying = buildView({
      stage: 'deploying',
      commit,
      stageMs: { resolving: 10, verifying: 5_000, building: 4_000, awaiting_approval: 900 },
      approval: { decision: 'approve', by: 'bob', at: new Date(0).toISOString() },
    });
    expect(rebuildWatchLines(building, deploying)).toEqual([
      '  approved by bob',
      '[awaiting_approval]',
      '[deploying]',
    ]);
    expect(rebuildWatchLines(deploying, deploying)).toEqual([]);
  });

  test('when a rebuild goes from verifying to a build step, then one line per new suite result and one progress line per image step', () => {
    const first = buildView({ stage: 'verifying', commit });
    expect(rebuildWatchLines(undefined, first)).toEqual([
      'rebuild rb_choiros_r1: target choiros @ main, requested by alice',
      `  commit ${commit}`,
      '[verifying]',
    ]);
    const suite = {
      suite: 'typecheck',
      passed: true,
      exitCode: 0,
      timedOut: false,
      durationMs: 61_000,
      outputTail: '',
    };
    const building = buildView({
      stage: 'building',
      commit,
      verify: [suite],
      progress: {
        activity: 'buildImage',
        image: 'api',
        step: 3,
        totalSteps: 12,
        cachedSteps: 2,
        line: 'COPY api ./api',
      },
    });
    expect(rebuildWatchLines(first, building)).toEqual([
      '  suite typecheck: pass in 61s',
      '[building]',
      '  image api: step 3/12 (2 cached) COPY api ./api',
    ]);
    // The same poll twice prints nothing new; the next step prints its line.
    expect(rebuildWatchLines(building, building)).toEqual([]);
    const step4 = { ...building, progress: { ...building.progress, step: 4, line: 'COPY worker ./worker' } };
    expect(rebuildWatchLines(building, step4)).toEqual([
      '  image api: step 4/12 (2 cached) COPY worker ./worker',
    ]);
  });

  test('when images are built, approved, deployed and one service fails its health check, then each fact is a line and the rollback is named', () => {
    const built = buildView({
      stage: 'awaiting_approval',
      commit,
      approvalDeadline: '2026-01-01T00:00:00.000Z',
      images: [
        {
          name: 'api',
          tag: `choiros-api:${commit}`,
          imageId: 'sha256:0123456789abcdef',
          durationMs: 30_000,
          cachedSteps: 9,
          totalSteps: 12,
        },
      ],
    });
    const lines = rebuildWatchLines(buildView({ stage: 'building', commit }), built);
    expect(lines).toEqual([
      `  image api: built choiros-api:${commit} 0123456789ab in 30s (9/12 steps cached)`,
      '[awaiting_approval]',
      '  waiting for approval (rebuild:approve, not alice) before 2026-01-01T00:00:00.000Z: choiros rebuilds approve rb_choiros_r1',
    ]);
    const rolled = buildView({
      ...built,
      stage: 'rolled_back',
      approval: { decision: 'approve', by: 'bob', at: new Date(0).toISOString() },
      deploy: [
        {
          service: 'api',
          image: `choiros-api:${commit}`,
          previousImage: 'sha256:aaaaaaaaaaaaaaaa',
          changed: true,
          healthy: false,
          rolledBack: true,
        },
      ],
      error: { code: 'health_check_failed', message: 'service api is not healthy' },
      finishedAt: new Date(1).toISOString(),
      stageMs: { deploying: 40_000 },
    });
    expect(rebuildWatchLines(built, rolled)).toEqual([
      '  approved by bob',
      `  deploy api: aaaaaaaaaaaa -> choiros-api:${commit}`,
      '  health api: UNHEALTHY',
      '  rolled back api to aaaaaaaaaaaa',
      // deploying passed between the two polls: it is named too.
      '[deploying]',
      '[rolled_back]',
      '  error health_check_failed: service api is not healthy',
      'rebuild rb_choiros_r1 rolled_back (deploying 40s)',
    ]);
  });

  test('when a target has a completed rebuild, then status names the commit and each service image id; without one, says so', () => {
    expect(
      deployedLines({
        target: 'choiros',
        rebuildId: 'rb_choiros_r1',
        commit,
        deployedAt: '2026-01-01T00:00:00.000Z',
        services: [{ service: 'api', image: `choiros-api:${commit}`, imageId: 'sha256:abc' }],
      }),
    ).toEqual([
      `target choiros: commit ${commit} (rebuild rb_choiros_r1, finished 2026-01-01T00:00:00.000Z)`,
      `  api: choiros-api:${commit} sha256:abc`,
    ]);
    expect(deployedLines({ target: 'choiros', services: [] })[0]).toMatch(/no completed rebuild yet/);
  });
});
