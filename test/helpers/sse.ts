/** A minimal SSE client for tests: reads `id`/`event`/`data` frames from a fetch response. */
export interface SseFrame {
  id?: string;
  event?: string;
  data: string;
}

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
  const decoder = new TextDecoder();
  let buffer = '';
  try {
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      buffer += decoder.decode(chunk, { stream: true });
      let idx: number;
      while ((idx = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, idx);
        buffer = buffer.slice(idx + 2);
        const frame: SseFrame = { data: '' };
        let hasData = false;
        for (const line of block.split('\n')) {
          if (line.startsWith(':')) continue;
          const [field, ...rest] = line.split(':');
          const value = rest.join(':').replace(/^ /, '');
          if (field === 'id') frame.id = value;
          else if (field === 'event') frame.event = value;
          else if (field === 'data') {
            frame.data += value;
            hasData = true;
          }
        }
        if (hasData) frames.push(frame);
        if (frames.length >= stopAfter) {
          abort.abort();
          return { status: res.status, frames, contentType: res.headers.get('content-type') };
        }
      }
    }
  } catch (err) {
    if (!abort.signal.aborted) throw err;
  }
  return { status: res.status, frames, contentType: res.headers.get('content-type') };
}
