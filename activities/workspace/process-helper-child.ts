/**
 * The process helper (see process-helper.ts): a small child of the worker that runs programs on
 * its behalf and answers over the IPC channel (a long command's output streams back chunk by
 * chunk, each read once the worker acknowledged the last). It ignores SIGINT and SIGTERM, which a terminal or a
 * process-group signal sends to the whole group: the worker drains its in-flight activities after
 * such a signal, and they still need git. It ends once the worker is gone (the channel closes) and
 * the programs it was running have finished.
 */
import {
  execToReply,
  HELPER_READY,
  helperAckSchema,
  helperRequestSchema,
  helperSpawnRequestSchema,
  spawnToEvents,
} from './process-helper';

process.on('SIGINT', () => undefined);
process.on('SIGTERM', () => undefined);

/**
 * Per spawned command, its paused streams (stdout, stderr) in the order their chunks were sent: the
 * worker acknowledges chunks in that order, and each ack resumes the stream that sent the chunk.
 */
const reading = new Map<number, (() => void)[]>();

process.on('message', (msg: unknown) => {
  const ack = helperAckSchema.safeParse(msg);
  if (ack.success) {
    const queue = reading.get(ack.data.id);
    const read = queue?.shift();
    if (queue?.length === 0) reading.delete(ack.data.id);
    read?.();
    return;
  }
  const spawnReq = helperSpawnRequestSchema.safeParse(msg);
  if (spawnReq.success) {
    spawnToEvents(spawnReq.data, (event, read) => {
      if (event.event === 'output') reading.set(event.id, [...(reading.get(event.id) ?? []), read]);
      if (process.connected) process.send?.(event);
    });
    return;
  }
  const parsed = helperRequestSchema.safeParse(msg);
  if (!parsed.success) return;
  void execToReply(parsed.data).then((reply) => {
    if (process.connected) process.send?.(reply);
  });
});

process.send?.(HELPER_READY);

// Orphaned (the worker is gone): signals act normally again; the helper exits once idle.
process.on('disconnect', () => {
  process.removeAllListeners('SIGINT');
  process.removeAllListeners('SIGTERM');
});
