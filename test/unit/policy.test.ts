/** The authorisation policy as a table. */
import type { Principal } from '../../contracts';
import { authorize, type Action, type Decision, type RunResource } from '../../api/auth/policy';

const p = (userId: string, tenant: string, scopes: string[]): Principal => ({ userId, tenant, scopes });
const alice = p('alice', 'acme', ['runs:read', 'runs:write']);
const aliceReadOnly = p('alice', 'acme', ['runs:read']);
const bob = p('bob', 'acme', ['runs:read', 'runs:write']);
const reviewer = p('rev', 'acme', ['runs:read', 'runs:approve']);
const admin = p('root', 'acme', ['runs:read', 'runs:write', 'tenant:admin']);
const otherAdmin = p('root', 'globex', ['runs:read', 'runs:write', 'tenant:admin']);
const alicesRun: RunResource = { tenant: 'acme', ownerId: 'alice' };
const aliceInGlobex: RunResource = { tenant: 'globex', ownerId: 'alice' };

const table: [string, Principal, Action, RunResource | undefined, Decision][] = [
  ['owner reads', alice, 'runs.read', alicesRun, 'allow'],
  ['owner watches', alice, 'runs.watch', alicesRun, 'allow'],
  ['owner cancels', alice, 'runs.cancel', alicesRun, 'allow'],
  ['owner without runs:write cancels', aliceReadOnly, 'runs.cancel', alicesRun, 'forbidden'],
  ['start needs runs:write', aliceReadOnly, 'runs.start', undefined, 'forbidden'],
  ['start with runs:write', alice, 'runs.start', undefined, 'allow'],
  ['another user reads', bob, 'runs.read', alicesRun, 'not_found'],
  ['another user cancels', bob, 'runs.cancel', alicesRun, 'not_found'],
  ['another user watches', bob, 'runs.watch', alicesRun, 'not_found'],
  ['same user id in another tenant', alice, 'runs.read', aliceInGlobex, 'not_found'],
  ['tenant admin reads', admin, 'runs.read', alicesRun, 'allow'],
  ['tenant admin watches', admin, 'runs.watch', alicesRun, 'allow'],
  ['tenant admin cannot cancel', admin, 'runs.cancel', alicesRun, 'not_found'],
  ["another tenant's admin reads", otherAdmin, 'runs.read', alicesRun, 'not_found'],
  ['credentials need runs:read', p('x', 'acme', ['runs:write']), 'nats.credentials', undefined, 'forbidden'],
  ['no scopes at all', p('x', 'acme', []), 'runs.list', undefined, 'forbidden'],
  ['owner approves own run', alice, 'runs.approve', alicesRun, 'allow'],
  ['owner answers own interrupt', alice, 'runs.answer', alicesRun, 'allow'],
  ['another writer approves', bob, 'runs.approve', alicesRun, 'not_found'],
  ['reviewer approves in tenant', reviewer, 'runs.approve', alicesRun, 'allow'],
  ['reviewer answers in tenant', reviewer, 'runs.answer', alicesRun, 'allow'],
  ['reviewer cannot cancel', reviewer, 'runs.cancel', alicesRun, 'forbidden'],
  [
    'reviewer of another tenant approves',
    p('rev', 'globex', ['runs:approve']),
    'runs.approve',
    alicesRun,
    'not_found',
  ],
  ['read-only owner approves', aliceReadOnly, 'runs.approve', alicesRun, 'forbidden'],
  [
    'reviewer reads a run awaiting approval',
    reviewer,
    'runs.read',
    { ...alicesRun, status: 'awaiting_approval' },
    'allow',
  ],
  [
    'reviewer watches a run awaiting approval',
    reviewer,
    'runs.watch',
    { ...alicesRun, status: 'awaiting_approval' },
    'allow',
  ],
  [
    'reviewer reads a run not awaiting approval',
    reviewer,
    'runs.read',
    { ...alicesRun, status: 'running' },
    'not_found',
  ],
  ['reviewer reads a run of unknown status', reviewer, 'runs.read', alicesRun, 'not_found'],
  [
    'reviewer cancels a run awaiting approval',
    reviewer,
    'runs.cancel',
    { ...alicesRun, status: 'awaiting_approval' },
    'forbidden',
  ],
  [
    'reviewer of another tenant reads a run awaiting approval',
    p('rev', 'globex', ['runs:read', 'runs:approve']),
    'runs.read',
    { ...alicesRun, status: 'awaiting_approval' },
    'not_found',
  ],
  ['tenant admin approves', admin, 'runs.approve', alicesRun, 'not_found'],
  [
    'reviewer without runs:write approves own run',
    reviewer,
    'runs.approve',
    { tenant: 'acme', ownerId: 'rev' },
    'forbidden',
  ],
];

test.each(table)('when %s, then %s', (_name, principal, action, resource, expected) => {
  expect(authorize(principal, action, resource)).toBe(expected);
});
