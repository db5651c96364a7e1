/**
 * The process helper (see process-helper.ts): a small child of the worker that runs programs on
 * its behalf and answers over the IPC channel. It ignores SIGINT and SIGTERM, which a terminal or a
 * process-group signal sends to the whole group: the worker drains its in-flight activities after
 * such a signal, and they still need git. It ends once the worker is gone (the channel closes) and
 * the programs it was running have finished.
 */
import { execToReply, HELPER_READY, helperRequestSchema } from './process-helper';

process.on('SIGINT', () => undefined);
process.on('SIGTERM', () => undefined);

process.on('message', (msg: unknown) => {
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
