/** Express middleware: bearer-token authentication and scope checks. */
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import { AppError, type Principal } from '../../contracts';
import { MAX_TOKEN_LENGTH, type TokenVerifier } from './token-verifier';
import { REQUIRED_SCOPE, authorize, type Action } from './policy';

export function principalOf(res: Response): Principal {
  const p = res.locals.principal as Principal | undefined;
  if (!p) throw new AppError('unauthenticated', 'the access token is missing, invalid or expired');
  return p;
}

export function authenticate(verify: TokenVerifier): RequestHandler {
  return (req: Request, res: Response, next: NextFunction) => {
    const header = req.headers.authorization;
    const missing = new AppError('unauthenticated', 'the access token is missing, invalid or expired', {
      headers: { 'WWW-Authenticate': 'Bearer' },
    });
    // Cap before parsing: an oversized header is refused unread.
    if (!header || header.length > MAX_TOKEN_LENGTH + 7) return next(missing);
    const match = /^Bearer ([A-Za-z0-9._~+/=-]+)$/.exec(header);
    if (!match?.[1]) return next(missing);
    verify(match[1]).then(
      (principal) => {
        res.locals.principal = principal;
        next();
      },
      (err: unknown) => next(err),
    );
  };
}

/** Refuses (403) a caller whose token lacks the action's scope; resource checks happen in the handler. */
export function requireAction(action: Action): RequestHandler {
  return (_req, res, next) => {
    if (authorize(principalOf(res), action) === 'forbidden') {
      return next(new AppError('forbidden', `this operation needs the ${REQUIRED_SCOPE[action]} scope`));
    }
    next();
  };
}
