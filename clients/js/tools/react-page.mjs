// Builds the React hooks' test page (tools/react/app.jsx with React and the SDK, one classic
// script) into the directory given: `node tools/react-page.mjs OUT`. tests/browser.rs opens
// OUT/index.html in Chromium. Needs `npm ci` in clients/js (esbuild, react, react-dom).
import { build } from "esbuild";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const out = process.argv[2];
if (!out) throw new Error("usage: node tools/react-page.mjs OUT_DIR");
mkdirSync(out, { recursive: true });
await build({
  entryPoints: [new URL("./react/app.jsx", import.meta.url).pathname],
  bundle: true,
  format: "iife",
  jsx: "automatic",
  define: { "process.env.NODE_ENV": '"development"' },
  outfile: join(out, "app.js"),
  logLevel: "warning",
});
writeFileSync(join(out, "index.html"), '<!doctype html><meta charset="utf-8"><title>hooks</title><div id="root"></div><script src="app.js"></script>\n');
console.log(join(out, "index.html"));
