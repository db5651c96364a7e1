#!/usr/bin/env node
// `npx choiros …` / `npm run cli -- …`: runs the TypeScript CLI through tsx.
'use strict';
const { spawnSync } = require('node:child_process');
const path = require('node:path');
const { pathToFileURL } = require('node:url');
// Resolve tsx from this package, so the command works from any directory.
const tsx = pathToFileURL(path.join(__dirname, '../node_modules/tsx/dist/loader.mjs')).href;
const result = spawnSync(
  process.execPath,
  ['--import', tsx, path.join(__dirname, '../api/cli/main.ts'), ...process.argv.slice(2)],
  {
    stdio: 'inherit',
  },
);
process.exit(result.status === null ? 1 : result.status);
