// Canonical JSON as docs/protocol.md ("Canonical JSON") defines it: RFC 8785 with every
// number's magnitude at most 2^53 - 1. Written from the document, not from the Python code.
// ECMAScript's own JSON.stringify is RFC 8785's reference for numbers and strings; what it
// does not do (refuse lone surrogates and large numbers, sort keys) is added here.

const LONE_SURROGATE = /\p{Surrogate}/u;

export class CanonicalError extends Error {}

function checkString(text, where) {
  // A well-formed JS string has surrogates only in pairs; with the u flag, \p{Surrogate}
  // matches only a surrogate that is not part of a pair.
  if (LONE_SURROGATE.test(text)) throw new CanonicalError(`lone surrogate at ${where}`);
}

function write(value, where) {
  if (value === null) return "null";
  if (value === true) return "true";
  if (value === false) return "false";
  if (typeof value === "number") {
    if (!Number.isFinite(value) || Math.abs(value) > Number.MAX_SAFE_INTEGER) {
      throw new CanonicalError(`number out of range at ${where}`);
    }
    return JSON.stringify(value); // ECMAScript Number::toString; -0 is "0"
  }
  if (typeof value === "string") {
    checkString(value, where);
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) {
    return "[" + value.map((item, index) => write(item, `${where}[${index}]`)).join(",") + "]";
  }
  if (typeof value === "object") {
    const keys = Object.keys(value);
    keys.forEach((key) => checkString(key, where));
    // Array.prototype.sort compares strings by UTF-16 code units: what RFC 8785 asks.
    keys.sort();
    return (
      "{" +
      keys.map((key) => JSON.stringify(key) + ":" + write(value[key], `${where}.${key}`)).join(",") +
      "}"
    );
  }
  throw new CanonicalError(`cannot canonicalise a ${typeof value} at ${where}`);
}

/** The canonical JSON text of a value. */
export function canonicalText(value) {
  return write(value, "$");
}

/** The canonical JSON bytes (UTF-8) of a value. */
export function canonicalBytes(value) {
  return Buffer.from(canonicalText(value), "utf8");
}
