/**
 * Import rules, checked by `npm run lint:deps` (and so by `npm test`) on the COMPILED JavaScript in
 * dist/: TypeScript 7's native compiler has no JS API for dependency-cruiser to read .ts with, and the
 * compiled files also show the lazy require() calls the backends and src/sys make. Type-only imports
 * are erased by the compiler and so are not dependencies here. Paths match with or without `dist/`.
 */
const D = '^(?:dist/)?'

/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    {
      name: 'format-is-a-leaf',
      comment:
        'src/format is the image format (create, read, extract, verify): it knows nothing about how an ' +
        'image is served, threaded, attached, parsed from a command line or layered, so any of those can ' +
        'change without touching it.',
      severity: 'error',
      from: {path: `${D}src/format/`},
      to: {path: `${D}(?:src/(?:serve|threads|lifecycle|commands|cli|layers)/|backends/)`},
    },
    {
      name: 'backend-imports-no-other-backend',
      comment:
        'A backend (backends/<os>/<name>/) is one folder: adding or rewriting one never touches another. ' +
        'The one exception is backends/linux/loop, which is not a backend (it exports no `backend`) but ' +
        'the loop-device helper the FUSE backend puts over its file.',
      severity: 'error',
      from: {path: `${D}backends/([^/]+/[^/]+)/`},
      to: {path: `${D}backends/`, pathNot: [`${D}backends/$1/`, `${D}backends/linux/loop/`]},
    },
    {
      name: 'backend-imports-no-format',
      comment:
        'Backends serve whatever BlockSource the BlockServer they are handed reads from; serving threads ' +
        'reopen it through src/sources from its descriptor. Importing src/format (VdimgImage, openImage) ' +
        'would tie a backend to one source kind.',
      severity: 'error',
      from: {path: `${D}backends/`},
      to: {path: `${D}src/format/`},
    },
    {
      name: 'serve-imports-no-backend',
      comment:
        'src/serve holds protocol servers (NBD, NFS) that backends build on; a backend may use them, never ' +
        'the other way round.',
      severity: 'error',
      from: {path: `${D}src/serve/`},
      to: {path: `${D}backends/`},
    },
    {
      name: 'core-and-sys-stay-below',
      comment:
        'src/core (the contracts: BlockSource, BlockServer, Backend) and src/sys (syscalls, errno) are the ' +
        'bottom layers everything else builds on; they must not reach up into servers, the lifecycle, ' +
        'commands or backends. (core/backends.ts loads backend modules by a computed path at run time, ' +
        'which is not an import; core/backend.ts imports only types from src/threads/config.)',
      severity: 'error',
      from: {path: `${D}src/(?:core|sys)/`},
      to: {path: `${D}(?:src/(?:serve|lifecycle|commands)/|backends/)`},
    },
    {
      name: 'commands-stay-thin',
      comment:
        'A command parses flags, calls the core or the lifecycle and formats the result, as oclif ' +
        'commands do; devices and syscalls belong to backends and src/sys, behind the lifecycle.',
      severity: 'error',
      from: {path: `${D}src/commands/`},
      to: {path: `${D}(?:backends/|src/sys/)`},
    },
    {
      name: 'no-circular-in-src',
      comment:
        'A cycle between modules of src/ means neither can be understood, loaded or tested without the ' +
        'other (and CommonJS hands one of them a half-initialised exports object).',
      severity: 'error',
      from: {path: `${D}src/`},
      to: {circular: true, viaOnly: {path: `${D}src/`}},
    },
  ],
  options: {
    doNotFollow: {path: 'node_modules'},
    exclude: {path: '\\.map$'},
    moduleSystems: ['cjs', 'es6'],
  },
}
