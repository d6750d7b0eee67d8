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
  AUDIT_PREFIXES,
  ConformanceError,
  bodyHash,
  bodySalt,
  ed25519FromSeed,
  entryHash,
  fieldHash,
  fieldSalt,
  layoutDigest,
  linkKeysDigest,
  parseClkHeader,
  projectTag,
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
const audit = vectors.audit;
const auditKey = ed25519FromSeed(Buffer.from(audit.signing_seed, "hex"));
const auditPublic = createPublicKey(auditKey);
check("audit: the LU key and the five domain prefixes", () =>
  differ("public key", rawPublicKey(auditKey).toString("hex"), audit.public_key) ||
  Object.entries(audit.prefixes_hex)
    .map(([name, want]) => differ(`${name} prefix`, AUDIT_PREFIXES[name].toString("hex"), want))
    .find(Boolean),
);
check("audit: project tags from view keys", () =>
  audit.project_tags
    .map((tag) =>
      differ(tag.project_id, projectTag(Buffer.from(tag.view_key, "hex"), tag.project_id).toString("hex"), tag.project_tag),
    )
    .find(Boolean),
);
audit.lines.forEach((line, index) => {
  check(`audit entry ${index}: field salts and hashes, body, entry hash`, () => {
    const entry = JSON.parse(line);
    const steps = audit.intermediates[index];
    const salt = Buffer.from(entry.salt, "hex");
    const fields = {};
    for (const [key, value] of Object.entries(entry.details)) {
      const mine = fieldSalt(salt, key);
      const problem =
        differ(`${key} salt`, mine.toString("hex"), steps.fields[key].field_salt) ||
        differ(`${key} hash`, fieldHash(key, value, mine).toString("hex"), steps.fields[key].field_hash);
      if (problem) return problem;
      fields[key] = fieldHash(key, value, mine);
    }
    const body = bodyHash({ event: entry.event, timestamp: entry.timestamp, project_id: entry.project_id, fields, salt: bodySalt(salt) });
    return (
      differ("body salt", bodySalt(salt).toString("hex"), steps.body_salt) ||
      differ("body hash", body.toString("hex"), steps.body_hash) ||
      differ("entry hash", entryHash({ ...entry, body }).toString("hex"), steps.entry_hash) ||
      differ("entry hash (canonical text)", sha256hex(Buffer.from(steps.entry_canonical, "utf8")), steps.entry_hash)
    );
  });
});
check("audit: the whole log (hashes, signatures, chain, tags, signed head)", () => {
  const entries = verifyAuditLines(audit.lines, auditPublic);
  const problem = differ("entry hashes", entries.map((entry) => entry.entry_hash).join(), audit.entry_hashes.join());
  if (problem) return problem;
  // Deterministic Ed25519: this client's signature equals the recorded one.
  const signed = Buffer.concat([AUDIT_PREFIXES.entry_signature, Buffer.from(entries[0].entry_hash, "hex")]);
  if (sign(null, signed, auditKey).toString("hex") !== entries[0].signature) return "entry signature differs";
  verifySignedHead(audit.signed_head, auditPublic, entries);
  return null;
});
check("audit: an edited detail, a stub in a whole log, or a hidden own entry fail", () => {
  const edited = audit.lines[0].replace('"members":"moj,dfe"', '"members":"dfe,moj"');
  const refusals = [
    () => verifyAuditLines([edited, ...audit.lines.slice(1)], auditPublic),
    () => verifyAuditLines(audit.view.lines, auditPublic),
    () => {
      // moj's view with one of p1's own entries swapped for its stub.
      const full = JSON.parse(audit.lines[2]);
      const steps = audit.intermediates[2];
      const stub = {
        body_hash: steps.body_hash,
        entry_hash: full.entry_hash,
        format: full.format,
        log_id: full.log_id,
        previous_hash: full.previous_hash,
        project_tag: full.project_tag,
        redacted: true,
        sequence: full.sequence,
        signature: full.signature,
      };
      const lines = [...audit.view.lines];
      lines[2] = canonicalText(stub);
      verifyAuditLines(lines, auditPublic, { project_id: audit.view.project_id });
    },
  ];
  for (const [index, attempt] of refusals.entries()) {
    try {
      attempt();
    } catch (error) {
      if (error instanceof ConformanceError) continue;
      throw error;
    }
    return `case ${index} verified`;
  }
  return null;
});
check("audit: a member's view (partial entries, stubs) verifies with the same hashes", () => {
  const entries = verifyAuditLines(audit.view.lines, auditPublic, { project_id: audit.view.project_id });
  const problem = differ("entry hashes", entries.map((entry) => entry.entry_hash).join(), audit.entry_hashes.join());
  if (problem) return problem;
  verifySignedHead(audit.signed_head, auditPublic, entries);
  const withheld = entries.filter((entry) => entry.form === "view" && Object.keys(entry.withheld).length);
  const other = entries.find((entry) => entry.event === "upload_committed" && entry.details.party !== audit.view.party);
  const finished = entries.find((entry) => entry.event === "run_finished");
  if (!withheld.length) return "nothing withheld in a member's view";
  if (Object.keys(other.details).join() !== "party") return "another party's upload figures shown";
  if ("cluster_count" in finished.details) return "run figures shown to a party";
  return null;
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
      key_context: header.key_context,
    };
    return differ("fields", canonicalText(got), canonicalText(want));
  });
}

console.log(`${passes} passed, ${failures} failed`);
process.exit(failures ? 1 : 0);
