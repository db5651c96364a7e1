/** A promise-friendly client of `choiros.v1.Runs` for tests. */
import * as grpc from '@grpc/grpc-js';
import { loadRunsConstructor } from '../../api/grpc/server';

type Unary = (
  req: unknown,
  md: grpc.Metadata,
  cb: (err: grpc.ServiceError | null, res: unknown) => void,
) => void;

export type UnaryMethod =
  | 'StartRun'
  | 'GetRun'
  | 'ListRuns'
  | 'CancelRun'
  | 'ApproveRun'
  | 'RejectRun'
  | 'AnswerInterrupt'
  | 'RerunRun';

export interface RunsClient {
  call<T = Record<string, unknown>>(method: UnaryMethod, req: unknown, token?: string): Promise<T>;
  watch(req: { run_id: string; after_seq?: number }, token?: string): Promise<Record<string, unknown>[]>;
  close(): void;
}

export function runsClient(address: string): RunsClient {
  const Runs = loadRunsConstructor();
  const client = new Runs(address, grpc.credentials.createInsecure()) as unknown as grpc.Client &
    Record<string, Unary>;
  const md = (token?: string): grpc.Metadata => {
    const m = new grpc.Metadata();
    if (token !== undefined) m.set('authorization', `Bearer ${token}`);
    return m;
  };
  return {
    call<T>(method: string, req: unknown, token?: string): Promise<T> {
      return new Promise((resolve, reject) => {
        const fn = client[method] as Unary;
        fn.call(client, req, md(token), (err, res) => (err ? reject(err) : resolve(res as T)));
      });
    },
    watch(req, token) {
      return new Promise((resolve, reject) => {
        const out: Record<string, unknown>[] = [];
        const stream = (
          client as unknown as {
            WatchRun: (r: unknown, m: grpc.Metadata) => grpc.ClientReadableStream<Record<string, unknown>>;
          }
        ).WatchRun(req, md(token));
        stream.on('data', (d: Record<string, unknown>) => out.push(d));
        stream.on('end', () => resolve(out));
        stream.on('error', reject);
      });
    },
    close() {
      client.close();
    },
  };
}

/** The gRPC status and `choiros-error-code` trailer a call ended with (OK when it succeeded). */
export async function grpcCode(p: Promise<unknown>): Promise<[number, string | undefined]> {
  try {
    await p;
    return [grpc.status.OK, undefined];
  } catch (e) {
    const err = e as grpc.ServiceError;
    return [err.code, err.metadata?.get('choiros-error-code')[0] as string | undefined];
  }
}
