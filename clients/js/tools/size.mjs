// The SDK's size as an app ships it: bundled and minified by esbuild, then gzipped (level 9).
// Three bundles: everything `src/index.js` exports, the core an app using `EdgeRelay` alone
// ships (tree-shaken: no `SharedRelay`), and that core with the sessions entry point. `npm run size` prints both; docs/performance.md
// records them. The budget is 15 KB gzipped, for each.
import { build, version } from "esbuild";
import { gzipSync } from "node:zlib";

const index = new URL("../src/index.js", import.meta.url).pathname;
const sessions = new URL("../src/sessions.js", import.meta.url).pathname;
const bundles = {
  "everything (src/index.js)": { entryPoints: [index] },
  "core (EdgeRelay alone)": { stdin: { contents: `export { EdgeRelay } from ${JSON.stringify(index)};`, resolveDir: "." } },
  "core with sessions (EdgeRelay and @edgerelay/client/sessions)": {
    stdin: { contents: `export { EdgeRelay } from ${JSON.stringify(index)}; export * from ${JSON.stringify(sessions)};`, resolveDir: "." },
  },
};
let over = false;
for (const [name, entry] of Object.entries(bundles)) {
  const result = await build({ ...entry, bundle: true, minify: true, format: "esm", target: "es2022", write: false });
  const bytes = result.outputFiles[0].contents;
  const gzipped = gzipSync(bytes, { level: 9 }).length;
  console.log(`@edgerelay/client ${name}: ${bytes.length} bytes minified, ${gzipped} bytes minified + gzip (esbuild ${version})`);
  if (gzipped > 15 * 1024) {
    console.error(`  over the 15 KB budget by ${gzipped - 15 * 1024} bytes`);
    over = true;
  }
}
if (over) process.exit(1);
