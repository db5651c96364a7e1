/** Narrow unit tests of the Temporal run service's mapping logic (the real path is in the integration tests). */
import { ServiceError } from '@temporalio/client';
import { AppError } from '../../contracts';
import { deriveRunId } from '../../api/runs/service';
import { mapTemporalError, pastDeadline } from '../../api/temporal';

function grpcError(code: number): Error {
  return Object.assign(new Error(`grpc ${code}`), { code, details: 'x', metadata: {} });
}

describe('run ids', () => {
  test('when tenant, user and key are the same, then the run id is the same; any change gives another', () => {
    const a = deriveRunId('acme', 'alice', 'k1');
    expect(a).toMatch(/^run-[0-9a-f]{32}$/);
    expect(deriveRunId('acme', 'alice', 'k1')).toBe(a);
    expect(
      new Set([
        a,
        deriveRunId('acme', 'bob', 'k1'),
        deriveRunId('globex', 'alice', 'k1'),
        deriveRunId('acme', 'alice', 'k2'),
      ]).size,
    ).toBe(4);
  });

  test('when fields would concatenate the same, then the ids still differ', () => {
    expect(deriveRunId('a', 'bc', 'k')).not.toBe(deriveRunId('ab', 'c', 'k'));
  });
});

describe('Temporal errors', () => {
  test.each([14, 4])(
    'when the service answers gRPC code %d, then it maps to 503 service_unavailable with Retry-After',
    (code) => {
      const mapped = mapTemporalError(new ServiceError('down', { cause: grpcError(code) }));
      expect(mapped).toBeInstanceOf(AppError);
      expect((mapped as AppError).code).toBe('service_unavailable');
      expect((mapped as AppError).options.headers?.['Retry-After']).toBe('5');
    },
  );

  test("when a call is cancelled once the request's deadline has passed, then it maps to 503 with Retry-After; before the deadline it passes through", () => {
    const cancelled = new ServiceError('Failed to start Workflow', { cause: grpcError(1) });
    const late = pastDeadline(cancelled, 1000, 1000);
    expect(late).toBeInstanceOf(AppError);
    expect((late as AppError).code).toBe('service_unavailable');
    expect((late as AppError).options.headers?.['Retry-After']).toBe('5');
    expect(pastDeadline(cancelled, 1000, 999)).toBe(cancelled);
    const invalid = new ServiceError('bad', { cause: grpcError(3) });
    expect(pastDeadline(invalid, 1000, 2000)).toBe(invalid);
  });

  test('when the error is anything else, then it passes through unchanged', () => {
    const other = grpcError(3);
    expect(mapTemporalError(other)).toBe(other);
  });
});
