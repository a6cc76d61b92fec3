#!/usr/bin/env node
// The vdev command line. Compiled commands live in dist/src/commands (run `npm run build` first).
// oclif checks at every start that Node satisfies @oclif/core's own `engines` (loading semver: 47 modules, a
// fifth of what a command loads — seconds in the TCG VM of the tests); npm checks ours at install.
process.env.OCLIF_DISABLE_ENGINE_WARNING ??= '1'
require('../dist/src/cli/main.js').main(process.argv.slice(2));
