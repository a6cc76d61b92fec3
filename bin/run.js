#!/usr/bin/env node
// The vdev command line. Compiled commands live in dist/src/commands (run `npm run build` first).
require('../dist/src/cli/main.js').main(process.argv.slice(2));
