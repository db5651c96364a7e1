/** Express middleware: bearer-token authentication and scope checks. */
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import type { Principal } from '../../contracts';
import { bearerToken, missingToken, type TokenVerifier } from './token-verifier';
import { requireScopeFor, type Action } from './policy';

export function principalOf(res: Response): Principal {
  const p = res.locals.principal as Principal | undefined;
  if (!p) throw missingToken();
  return p;
}

export function authenticate(verify: TokenVerifier): RequestHandler {
  return (req: Request, res: Response, next: NextFunction) => {
    const token = bearerToken(req.headers.authorization);
    if (!token) return next(missingToken());
    verify(token).then(
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
    requireScopeFor(principalOf(res), action);
    next();
  };
}
