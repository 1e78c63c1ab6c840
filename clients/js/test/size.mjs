// The SDK's size as an app ships it: src/index.js bundled and minified by esbuild, then
// gzipped (level 9). `npm run size` prints it; docs/performance.md records it. The aim is under
// 15 KB gzipped for the whole SDK (rooms, presence, typing, outbox, calls, media framing).
import { build } from "esbuild";
import { gzipSync } from "node:zlib";

const result = await build({
  entryPoints: [new URL("../src/index.js", import.meta.url).pathname],
  bundle: true,
  minify: true,
  format: "esm",
  target: "es2022",
  write: false,
});
const bytes = result.outputFiles[0].contents;
const gzipped = gzipSync(bytes, { level: 9 }).length;
console.log(`@edgerelay/client: ${bytes.length} bytes minified, ${gzipped} bytes minified + gzip (esbuild ${(await import("esbuild")).version})`);
if (gzipped > 15 * 1024) {
  console.error(`over the 15 KB budget by ${gzipped - 15 * 1024} bytes`);
  process.exit(1);
}
