/**
 * Short-lived NATS credentials for one principal (tenant, user), signed with the CHOIROS account
 * key: subscribe to `choiros.<tenant>.<userId>.>` and the principal's own inbox prefix
 * `_INBOX_<tenant>.<userId>.>`, publish nothing. The same user id in another tenant is another
 * principal with another prefix. Publishing nothing also
 * means no JetStream API access (every JetStream request is a publish to `$JS.API.>`), so a user
 * cannot create consumers or fetch stream messages that would bypass subscribe permissions;
 * history goes through the gateway's SSE route instead.
 */
import { encodeUser, fmtCreds } from 'nats-jwt';
import { createUser, fromSeed } from 'nkeys.js';
import { userInboxPrefix, userSubjectPrefix, type SubjectOwner } from '../../contracts';

export interface UserNatsCredentials {
  /** A `.creds` file's text: the user JWT and its nkey seed. */
  creds: string;
  jwt: string;
  seed: string;
  /** Epoch seconds. */
  expiresAt: number;
  subjectPrefix: string;
  inboxPrefix: string;
}

export async function mintUserCreds(
  accountSeed: string,
  owner: SubjectOwner,
  ttlSeconds: number,
): Promise<UserNatsCredentials> {
  const account = fromSeed(new TextEncoder().encode(accountSeed));
  const user = createUser();
  const expiresAt = Math.floor(Date.now() / 1000) + ttlSeconds;
  const subjectPrefix = userSubjectPrefix(owner);
  const inboxPrefix = userInboxPrefix(owner);
  const jwt = await encodeUser(
    `user-${owner.tenant}-${owner.userId}`,
    user,
    account,
    {
      pub: { allow: [], deny: ['>'] },
      sub: { allow: [subjectPrefix, `${inboxPrefix}.>`], deny: [] },
    },
    { exp: expiresAt },
  );
  return {
    creds: new TextDecoder().decode(fmtCreds(jwt, user)),
    jwt,
    seed: new TextDecoder().decode(user.getSeed()),
    expiresAt,
    subjectPrefix,
    inboxPrefix,
  };
}
