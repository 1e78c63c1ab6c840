// Topic filters (docs/events.md "Filters") evaluated in the browser. Why: a `SharedRelay` leader
// holds one subscription per pattern for all tabs (the relay takes a pattern once per
// connection), so it subscribes without a filter and each tab applies its own here. Grammar and
// meaning are the relay's (src/events/filter.rs); a filter the relay would refuse throws
// `bad_filter` (186) with the byte where it goes wrong. Small on purpose (size budget).

import { RelayError } from "./errors.js";

// One token: an operator or punctuation, a quoted string, a word, or a character that starts none.
const LEX = /\s*(?:(!=|<=|>=|==?|[<>(),])|(['"])((?:\\.|(?!\2)[^\\])*)\2|([\w.+-]+)|(\S))/y;
const KEYWORDS = ["and", "or", "not", "in", "has"];
const num = (s) => (/^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(s) ? Number(s) : NaN);
const bytes = (s) => new TextEncoder().encode(s).length;
const COMPARE = { "<": (a, b) => a < b, "<=": (a, b) => a <= b, ">": (a, b) => a > b, ">=": (a, b) => a >= b };

/** Compiles `text` (null: everything passes) into `tags => boolean`; throws `RelayError` 186 for
 * a filter the relay would refuse. */
export function compileFilter(text) {
  if (text == null) return () => true;
  const toks = [];
  let pos = 0;
  let depth = 0;
  let terms = 0;
  const fail = (what, at = toks[pos]?.at ?? bytes(text)) => {
    throw new RelayError(186, `bad_filter: bad filter at byte ${at}: ${what}`);
  };
  if (bytes(text) > 1024) fail("longer than 1024 bytes", 1024);
  LEX.lastIndex = 0;
  for (let m; (m = LEX.exec(text)); ) {
    const at = bytes(text.slice(0, m.index + m[0].search(/\S/)));
    if (m[5]) fail(m[5] === "!" ? 'expected "!="' : `unexpected ${m[5]}`, at);
    toks.push({ at, p: m[1]?.replace("==", "="), t: m[3]?.replace(/\\(.)/g, "$1"), w: m[4] });
  }
  const peek = () => toks[pos] ?? {};
  const take = (kw) => (peek().w?.toLowerCase() === kw || peek().p === kw) && ++pos;
  // `operand (kw operand)*`, true when `all` ("some", "every") of them are.
  const list = (kw, operand, all) => {
    const parts = [operand()];
    while (take(kw)) parts.push(operand());
    return (tags) => parts[all]((part) => part(tags));
  };
  const or = () => list("or", and, "some");
  const and = () => list("and", unary, "every");
  const unary = () => {
    if (++depth > 16) fail("nested deeper than 16");
    let expr;
    if (take("not")) {
      const inner = unary();
      expr = (tags) => !inner(tags);
    } else if (take("(")) {
      expr = or();
      if (!take(")")) fail('expected ")"');
    } else expr = comparison();
    depth--;
    return expr;
  };
  const key = () => {
    const { w } = peek();
    if (!w || KEYWORDS.includes(w.toLowerCase())) fail("expected a tag name");
    pos++;
    return w;
  };
  // A quoted value is text; a word is also a number when it reads as one.
  const value = () => {
    const { t, w } = peek();
    if (t == null && !w) fail("expected a value");
    pos++;
    return t ?? { s: w, n: num(w) };
  };
  const comparison = () => {
    if (++terms > 64) fail("more than 64 comparisons");
    if (take("has")) {
      const k = key();
      return (tags) => Object.hasOwn(tags, k);
    }
    const k = key();
    let op = "=";
    const values = [];
    if (take("in")) {
      if (!take("(")) fail('expected "(" after in');
      do values.push(value());
      while (take(","));
      if (!take(")")) fail('expected "," or ")"');
    } else {
      op = peek().p;
      if (!COMPARE[op] && op !== "=" && op !== "!=") fail("expected an operator (= != < <= > >= in)");
      pos++;
      values.push(value());
      if (COMPARE[op] && !Number.isFinite(values[0].n)) fail(`${op} needs a number`, toks[pos - 1].at);
    }
    // `=` and `in` compare text, or numbers for a number literal (`qty = 5` matches `5.0`).
    return (tags) => {
      const tag = Object.hasOwn(tags, k) ? String(tags[k]) : null;
      if (COMPARE[op]) return tag != null && COMPARE[op](num(tag.trim()), values[0].n);
      const equal = tag != null && values.some((v) => tag === (v.s ?? v) || num(tag.trim()) === v.n);
      return equal === (op !== "!=");
    };
  };
  const filter = or();
  if (pos < toks.length) fail("unexpected token");
  return (tags) => filter(tags ?? {});
}
