// Runs a wasm32-wasip1 test binary under Node's WASI, so the metering logic's tests also run as
// 32-bit WebAssembly (the way the filter runs). Started by scripts/wasi-run.sh (cargo's target
// runner) as: node wasi-runner.mjs STATUS_FILE TEST.wasm [ARGS...]
import { readFile } from 'node:fs/promises';
import { writeFileSync } from 'node:fs';
import { WASI } from 'node:wasi';
import process from 'node:process';

const [statusFile, file, ...args] = process.argv.slice(2);
const wasi = new WASI({
  version: 'preview1',
  args: [file, ...args],
  env: process.env,
  // Tests read fixtures by absolute path.
  preopens: { '/': '/' },
  returnOnExit: true,
});
const module = await WebAssembly.compile(await readFile(file));
// The binary also links the proxy-wasm glue, which imports Envoy's host functions from "env".
// The logic under test makes no host call; a stub that throws proves it.
const imports = wasi.getImportObject();
for (const imp of WebAssembly.Module.imports(module)) {
  if (imp.module === 'env' && imp.kind === 'function') {
    imports.env ??= {};
    imports.env[imp.name] = () => {
      throw new Error(`host call ${imp.name} from code under test`);
    };
  }
}
const instance = await WebAssembly.instantiate(module, imports);
// The glue's reactor entry point (`_initialize`, run by Envoy) is not part of a test binary's
// life; WASI refuses to start a module that exports both.
const { _initialize, ...exports } = instance.exports;
const code = wasi.start({ exports });
// Recorded before Node tears down: V8 has been seen to crash (SIGSEGV) while tearing down after
// a run that grew the module's memory by tens of MiB, every test having passed.
writeFileSync(statusFile, String(code));
process.exitCode = code;
