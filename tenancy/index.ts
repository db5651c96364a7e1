/** Tenancy shared by the API and the worker: the tenants file loader and repository access checks. */
export * from './load';
export * from './repo-access';
export * from './credentials';
