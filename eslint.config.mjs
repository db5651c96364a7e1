// Lint gate: type-aware rules everywhere, and a determinism fence around workflows/.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

const nodeBuiltins = [
  'fs',
  'fs/promises',
  'path',
  'os',
  'child_process',
  'crypto',
  'http',
  'https',
  'net',
  'dns',
  'stream',
  'util',
  'worker_threads',
  'cluster',
  'process',
  'timers',
  'events',
  'url',
  'zlib',
  'tls',
  'dgram',
  'readline',
  'vm',
];

export default tseslint.config(
  {
    ignores: [
      'node_modules/',
      'dist/',
      'coverage/',
      '.data/',
      'eslint.config.mjs',
      'jest.config.js',
      'bin/',
      'infra/images/',
    ],
  },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': ['error', { checksVoidReturn: { arguments: false } }],
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/consistent-type-imports': ['error', { fixStyle: 'inline-type-imports' }],
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/require-await': 'off',
    },
  },
  {
    files: ['workflows/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          paths: [
            ...nodeBuiltins.flatMap((m) => [
              { name: m, message: 'workflows are deterministic: no Node builtins' },
              { name: `node:${m}`, message: 'workflows are deterministic: no Node builtins' },
            ]),
            ...[
              'nats',
              'dockerode',
              'jose',
              'express',
              'pino',
              '@temporalio/worker',
              '@temporalio/client',
              '@temporalio/activity',
            ].map((name) => ({ name, message: 'workflows do no I/O: use an activity' })),
          ],
          patterns: [
            {
              group: ['**/activities/**', '!**/activities/types'],
              allowTypeImports: true,
              message: 'workflows import activities with `import type` only',
            },
            {
              group: ['**/api/**', '**/worker/**', '**/infra/**'],
              message: 'workflows import contracts only',
            },
          ],
        },
      ],
      'no-restricted-globals': [
        'error',
        { name: 'setTimeout', message: 'use sleep() from @temporalio/workflow' },
        { name: 'setInterval', message: 'use sleep() in a loop' },
        { name: 'process', message: 'no process access in workflows' },
      ],
      'no-restricted-properties': [
        'error',
        { object: 'Math', property: 'random', message: 'use uuid4() or a seeded source from the SDK' },
      ],
    },
  },
  {
    files: ['contracts/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          paths: nodeBuiltins.map((name) => ({ name, message: 'contracts are pure: no Node APIs' })),
          patterns: [
            { group: ['node:*'], message: 'contracts are pure: no Node APIs' },
            {
              group: ['**/activities/**', '**/api/**', '**/worker/**', '**/workflows/**', '**/infra/**'],
              message: 'contracts import nothing of ours',
            },
          ],
        },
      ],
    },
  },
  {
    files: ['api/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            {
              group: ['**/activities/**', '**/worker/**', '**/workflows/**'],
              allowTypeImports: true,
              message: 'the API imports contracts only',
            },
          ],
        },
      ],
    },
  },
  {
    // Tests read untyped response bodies (supertest) and use jest's asymmetric matchers (typed any).
    files: ['test/**/*.ts'],
    rules: {
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
    },
  },
);
