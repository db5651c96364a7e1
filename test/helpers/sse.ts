/** A minimal SSE client for tests: reads `id`/`event`/`data` frames from a fetch response. */
import { sseFrames, type SseFrame } from '../../api/cli/sse';

export type { SseFrame };

/** Reads frames until `stopAfter` frames (then aborts the connection) or the stream ends. */
export async function readSse(
  url: string,
  headers: Record<string, string>,
  stopAfter = Infinity,
): Promise<{ status: number; frames: SseFrame[]; contentType: string | null }> {
  const abort = new AbortController();
  const res = await fetch(url, {
    headers: { accept: 'text/event-stream', ...headers },
    signal: abort.signal,
  });
  const frames: SseFrame[] = [];
  if (res.status !== 200 || !res.body)
    return { status: res.status, frames, contentType: res.headers.get('content-type') };
  try {
    for await (const frame of sseFrames(res.body)) {
      frames.push(frame);
      if (frames.length >= stopAfter) {
        abort.abort();
        return { status: res.status, frames, contentType: res.headers.get('content-type') };
      }
    }
  } catch (err) {
    if (!abort.signal.aborted) throw err;
  }
  return { status: res.status, frames, contentType: res.headers.get('content-type') };
}
