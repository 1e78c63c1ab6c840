// The SDK's size as an app ships it: bundled and minified by esbuild, then gzipped (level 9).
// Three bundles: everything `src/index.js` exports, the core an app using `EdgeRelay` alone
// ships (tree-shaken: no `SharedRelay`), and that core with the sessions entry point. `npm run size` prints them; docs/performance.md
// records them. The budget is 15 KB gzipped for the core (16.5 KB with sessions); everything,
// `SharedRelay` with its sessions, topics, calls and per-tab topic filters included, has 19 KB.
import { build, version } from "esbuild";
import { gzipSync } from "node:zlib";

const index = new URL("../src/index.js", import.meta.url).pathname;
const sessions = new URL("../src/sessions.js", import.meta.url).pathname;
const notifications = new URL("../src/notifications.js", import.meta.url).pathname;
const KB = 1024;
const bundles = {
  "everything (src/index.js)": { entryPoints: [index], budget: 19 * KB }, // 17 KB until per-tab topic filters, 18.5 KB until the catch-up after a network change (docs/decisions.md)
  "core (EdgeRelay alone)": { stdin: { contents: `export { EdgeRelay } from ${JSON.stringify(index)};`, resolveDir: "." }, budget: 15 * KB },
  "core with sessions (EdgeRelay and @edgerelay/client/sessions)": {
    stdin: { contents: `export { EdgeRelay } from ${JSON.stringify(index)}; export * from ${JSON.stringify(sessions)};`, resolveDir: "." },
    budget: 16.5 * KB, // 15 KB until the receipts methods joined the core, 16 KB until the catch-up (docs/decisions.md)
  },
  "core with notifications (EdgeRelay and @edgerelay/client/notifications)": {
    stdin: { contents: `export { EdgeRelay } from ${JSON.stringify(index)}; export * from ${JSON.stringify(notifications)};`, resolveDir: "." },
    budget: 15 * KB,
  },
};
let over = false;
for (const [name, { budget, ...entry }] of Object.entries(bundles)) {
  const result = await build({ ...entry, bundle: true, minify: true, format: "esm", target: "es2022", write: false });
  const bytes = result.outputFiles[0].contents;
  const gzipped = gzipSync(bytes, { level: 9 }).length;
  console.log(`@edgerelay/client ${name}: ${bytes.length} bytes minified, ${gzipped} bytes minified + gzip (esbuild ${version})`);
  if (gzipped > budget) {
    console.error(`  over its ${budget / KB} KB budget by ${gzipped - budget} bytes`);
    over = true;
  }
}
if (over) process.exit(1);
