// RFC 6902 JSON Patch (add, remove, replace, move, copy, test on RFC 6901 JSON pointers), small
// and dependency-free, for a session's local copy of its document (sessions.js). The relay
// applies the same patches to its copy; the two agree because patches apply in version order.

export class PatchError extends Error {}

/** The reference tokens of a JSON pointer (`""` is the whole document). */
export function parsePointer(pointer) {
  if (pointer === "") return [];
  if (typeof pointer !== "string" || pointer[0] !== "/") throw new PatchError(`bad pointer ${JSON.stringify(pointer)}`);
  return pointer
    .slice(1)
    .split("/")
    .map((t) => t.replace(/~1/g, "/").replace(/~0/g, "~"));
}

const isObject = (v) => v !== null && typeof v === "object";

/** Whether two JSON values are equal (object keys in any order). */
export function jsonEqual(a, b) {
  if (a === b) return true;
  if (!isObject(a) || !isObject(b) || Array.isArray(a) !== Array.isArray(b)) return false;
  const keys = Object.keys(a);
  if (keys.length !== Object.keys(b).length) return false;
  return keys.every((k) => Object.hasOwn(b, k) && jsonEqual(a[k], b[k]));
}

/** An array index token: digits without a leading zero (or `-` when `end` is allowed). */
function index(array, token, end) {
  if (end && token === "-") return array.length;
  if (!/^(0|[1-9][0-9]*)$/.test(token)) throw new PatchError(`bad array index ${JSON.stringify(token)}`);
  const i = Number(token);
  if (i > array.length - (end ? 0 : 1)) throw new PatchError(`array index ${i} out of range`);
  return i;
}

/** The container holding `tokens`' last one, and that token. */
function parent(doc, tokens) {
  let at = doc;
  for (const token of tokens.slice(0, -1)) {
    if (Array.isArray(at)) at = at[index(at, token, false)];
    else if (isObject(at) && Object.hasOwn(at, token)) at = at[token];
    else throw new PatchError(`no ${JSON.stringify(token)} on the path`);
  }
  if (!isObject(at)) throw new PatchError("the path's parent is not a container");
  return [at, tokens[tokens.length - 1]];
}

function get(doc, tokens) {
  if (tokens.length === 0) return doc;
  const [at, last] = parent(doc, tokens);
  if (Array.isArray(at)) return at[index(at, last, false)];
  if (!Object.hasOwn(at, last)) throw new PatchError(`no ${JSON.stringify(last)} at the path`);
  return at[last];
}

// Each returns the new document (the root may be replaced).
function add(doc, tokens, value) {
  if (tokens.length === 0) return value;
  const [at, last] = parent(doc, tokens);
  if (Array.isArray(at)) at.splice(index(at, last, true), 0, value);
  else at[last] = value;
  return doc;
}

function remove(doc, tokens) {
  if (tokens.length === 0) throw new PatchError("cannot remove the whole document");
  const [at, last] = parent(doc, tokens);
  if (Array.isArray(at)) at.splice(index(at, last, false), 1);
  else if (Object.hasOwn(at, last)) delete at[last];
  else throw new PatchError(`no ${JSON.stringify(last)} to remove`);
  return doc;
}

/** `doc` with `patch` (an array of operations) applied; `doc` itself is left as it was. Throws
 * `PatchError` when an operation does not apply (the patch applies whole or not at all). */
export function applyPatch(doc, patch) {
  if (!Array.isArray(patch)) throw new PatchError("a patch is an array of operations");
  let out = structuredClone(doc);
  for (const op of patch) {
    const path = parsePointer(op?.path);
    switch (op.op) {
      case "add":
        out = add(out, path, structuredClone(op.value));
        break;
      case "remove":
        out = remove(out, path);
        break;
      case "replace": {
        get(out, path); // Must exist.
        const value = structuredClone(op.value);
        if (path.length === 0) {
          out = value;
          break;
        }
        const [at, last] = parent(out, path);
        at[Array.isArray(at) ? index(at, last, false) : last] = value;
        break;
      }
      case "move": {
        const from = parsePointer(op.from);
        if (path.length > from.length && from.every((t, i) => t === path[i])) throw new PatchError("cannot move a value into itself");
        const value = get(out, from);
        out = add(remove(out, from), path, value);
        break;
      }
      case "copy":
        out = add(out, path, structuredClone(get(out, parsePointer(op.from))));
        break;
      case "test":
        if (!jsonEqual(get(out, path), op.value)) throw new PatchError(`test failed at ${op.path}`);
        break;
      default:
        throw new PatchError(`unknown op ${JSON.stringify(op?.op)}`);
    }
  }
  return out;
}
