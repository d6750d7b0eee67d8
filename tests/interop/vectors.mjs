// Check every vector in tests/vectors/canonical_json.json and protocol_vectors.json with this
// client's own implementation of docs/protocol.md. Needs only Node.js (no packages).
//     node vectors.mjs [VECTORS_DIR]     (default: tests/vectors)
// Prints one line per check; exits 1 if any fails.

import { createPublicKey, sign } from "node:crypto";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { CanonicalError, canonicalBytes, canonicalText } from "./canonical.mjs";
import {
  ed25519FromSeed,
  layoutDigest,
  linkKeysDigest,
  parseClkHeader,
  rawPublicKey,
  settingsDocument,
  settingsFingerprint,
  sha256hex,
  signManifest,
  verifyAuditLines,
  verifySignedHead,
} from "./wire.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const directory = process.argv[2] || join(here, "..", "vectors");
const load = (name) => JSON.parse(readFileSync(join(directory, name), "utf8"));

let failures = 0;
let passes = 0;
function check(name, test) {
  try {
    const problem = test();
    if (problem) throw new Error(problem);
    passes += 1;
    console.log(`ok   ${name}`);
  } catch (error) {
    failures += 1;
    console.log(`FAIL ${name}: ${error.message}`);
  }
}
const differ = (what, got, want) => (got === want ? null : `${what}: got ${got}, want ${want}`);

// -- canonical_json.json ---------------------------------------------------------------------
const canonical = load("canonical_json.json");
for (const vector of canonical.canonical) {
  check(`canonical: ${vector.name}`, () =>
    differ("text", canonicalText(vector.input), vector.canonical) ||
    differ("sha256", sha256hex(canonicalBytes(vector.input)), vector.sha256),
  );
}
for (const vector of canonical.refused) {
  check(`refused: ${vector.name}`, () => {
    try {
      canonicalText(JSON.parse(vector.input_json));
    } catch (error) {
      return error instanceof CanonicalError ? null : `wrong error ${error}`;
    }
    return "was not refused";
  });
}
for (const sample of canonical.number_to_string.samples) {
  check(`number ${sample.ieee754_hex}`, () =>
    differ("String()", String(Buffer.from(sample.ieee754_hex, "hex").readDoubleBE(0)), sample.string),
  );
}

// -- protocol_vectors.json -------------------------------------------------------------------
const vectors = load("protocol_vectors.json");
for (const vector of vectors.settings_fingerprint) {
  check(`settings fingerprint: ${vector.name}`, () =>
    differ("document", canonicalText(settingsDocument(vector.request)), vector.document) ||
    differ("fingerprint", settingsFingerprint(vector.request), vector.fingerprint),
  );
}
for (const vector of vectors.manifest) {
  check(`manifest: ${vector.name}`, () => {
    const key = ed25519FromSeed(Buffer.from(vector.signing_seed, "hex"));
    const signed = signManifest(vector.record, key);
    return (
      differ("canonical", signed.canonical.toString("utf8"), vector.canonical) ||
      differ("manifest_sha256", signed.manifest_sha256, vector.manifest_sha256) ||
      differ("public key", signed.public_key.toString("hex"), vector.public_key) ||
      differ("signature", signed.signature.toString("hex"), vector.signature)
    );
  });
}
for (const vector of vectors.layout_sha256) {
  check(`layout digest: ${vector.name}`, () =>
    differ("canonical", canonicalText(vector.layout), vector.canonical) ||
    differ("layout_sha256", layoutDigest(vector.layout), vector.layout_sha256),
  );
}
for (const vector of vectors.link_keys_sha256) {
  check(`link-key digest: ${vector.name}`, () =>
    differ("keys_sha256", linkKeysDigest(vector.entries), vector.keys_sha256),
  );
}
check("audit: entry hashes, signatures, chain, redacted stub, signed head", () => {
  const audit = vectors.audit;
  const key = ed25519FromSeed(Buffer.from(audit.signing_seed, "hex"));
  const publicKey = createPublicKey(key);
  const problem = differ("public key", rawPublicKey(key).toString("hex"), audit.public_key);
  if (problem) return problem;
  const entries = verifyAuditLines(audit.lines, publicKey);
  const hashes = entries.map((entry) => entry.entry_hash).join(",");
  if (hashes !== audit.entry_hashes.join(",")) return "entry hashes differ";
  for (const [index, text] of audit.canonical.entries()) {
    const { entry_hash: _h, signature: _s, ...content } = entries[index];
    if (!entries[index].redacted && canonicalText(content) !== text) return `entry ${index} canonical`;
  }
  // The redacted stub's content is not shown, but its hash is the full entry's.
  const last = audit.canonical.length - 1;
  if (sha256hex(Buffer.from(audit.canonical[last], "utf8")) !== entries[last].entry_hash) {
    return "redacted stub's hash is not its entry's";
  }
  // Deterministic Ed25519: this client's signature equals the recorded one.
  const prefix = Buffer.from(audit.entry_signature_prefix_hex, "hex");
  const mine = sign(null, Buffer.concat([prefix, Buffer.from(entries[0].entry_hash, "hex")]), key);
  if (mine.toString("hex") !== entries[0].signature) return "entry signature differs";
  verifySignedHead(audit.signed_head, publicKey, entries);
  const edited = audit.lines[0].replace('"members":"moj,dfe"', '"members":"dfe,moj"');
  try {
    verifyAuditLines([edited, ...audit.lines.slice(1)], publicKey);
  } catch {
    return null;
  }
  return "an edited entry verified";
});
for (const vector of vectors.clk_file_header) {
  check(`encoded file header: ${vector.name}`, () => {
    const header = parseClkHeader(Buffer.from(vector.header, "hex"));
    const want = vector.fields;
    const got = {
      format_version: header.format_version,
      header_length: header.header_length,
      clk_bits: header.clk_bits,
      record_count: Number(header.record_count),
      schema_fingerprint: header.schema_fingerprint.toString("hex"),
      kcv: header.kcv.toString("hex"),
      payload_sha256: header.payload_sha256.toString("hex"),
      project_id: header.project_id,
      groups: header.groups,
      payload_length: Number(header.payload_length),
    };
    return differ("fields", canonicalText(got), canonicalText(want));
  });
}

console.log(`${passes} passed, ${failures} failed`);
process.exit(failures ? 1 : 0);
