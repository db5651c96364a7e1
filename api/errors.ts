/** Maps every error to RFC 9457 problem+json in one place. */
import type { ErrorRequestHandler, Response } from 'express';
import type { Logger } from 'pino';
import type { ZodError } from 'zod';
import { AppError, HTTP_STATUS_BY_CODE, TITLE_BY_CODE, type ErrorCode, type FieldError } from '../contracts';

export interface ProblemBody {
  type: string;
  title: string;
  status: number;
  code: ErrorCode;
  detail: string;
  instance?: string;
  errors?: FieldError[];
}

export function problemType(code: ErrorCode): string {
  return `https://choiros.dev/problems/${code.replace(/_/g, '-')}`;
}

export function sendProblem(
  res: Response,
  code: ErrorCode,
  detail: string,
  extra: Partial<ProblemBody> = {},
): void {
  const status = HTTP_STATUS_BY_CODE[code];
  const body: ProblemBody = {
    type: problemType(code),
    title: TITLE_BY_CODE[code],
    status,
    code,
    detail,
    ...extra,
  };
  res.status(status).type('application/problem+json').send(JSON.stringify(body));
}

/** A 400 naming each bad field (dotted path), from a zod error. */
export function validationError(err: ZodError, prefix = ''): AppError {
  const errors: FieldError[] = err.issues.map((i) => ({
    field: [prefix, ...i.path.map(String)].filter(Boolean).join('.') || '(body)',
    message: i.message,
  }));
  const detail = errors.map((e) => `${e.field}: ${e.message}`).join('; ');
  return new AppError('validation_failed', detail, { errors });
}

interface BodyParserError {
  type?: string;
  status?: number;
}

export function errorMiddleware(logger: Logger): ErrorRequestHandler {
  return (err: unknown, req, res, _next) => {
    void _next;
    if (res.headersSent) return;
    if (err instanceof AppError) {
      for (const [k, v] of Object.entries(err.options.headers ?? {})) res.setHeader(k, v);
      sendProblem(res, err.code, err.message, {
        instance: req.originalUrl,
        ...(err.options.errors ? { errors: err.options.errors } : {}),
      });
      return;
    }
    const bp = err as BodyParserError;
    if (bp?.type === 'entity.too.large')
      return sendProblem(res, 'payload_too_large', 'request body exceeds the size limit');
    if (bp?.type === 'entity.parse.failed')
      return sendProblem(res, 'validation_failed', 'request body is not valid JSON');
    if (bp?.type === 'encoding.unsupported' || bp?.type === 'charset.unsupported') {
      return sendProblem(res, 'unsupported_media_type', 'unsupported body encoding');
    }
    logger.error({ err, path: req.originalUrl }, 'unhandled error');
    sendProblem(res, 'internal', 'an internal error occurred', { instance: req.originalUrl });
  };
}
