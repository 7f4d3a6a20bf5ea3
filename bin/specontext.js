#!/usr/bin/env node
// Entry point of the `specontext` CLI; the commands live in cli/ (compiled to dist/).
require('../dist/cli/main.js').main(process.argv);
