// The protocol's data rules, written from docs/protocol.md alone: the encoded file header,
// the manifest and its signature, the settings fingerprint, the layout and link-key digests,
// and audit log verification (format v2: field and body hashes, project tags, full entries,
// a member's partial entries and redacted stubs). Node's own crypto; no bloomlink code.

import { createHash, createHmac, createPrivateKey, createPublicKey, sign, verify } from "node:crypto";
import { readFileSync } from "node:fs";

import { canonicalBytes, canonicalText } from "./canonical.mjs";

export const sha256 = (data) => createHash("sha256").update(data).digest();
export const sha256hex = (data) => sha256(data).toString("hex");

export class ConformanceError extends Error {}

function need(condition, message) {
  if (!condition) throw new ConformanceError(message);
}

// -- Encoded file ("Encoded file") -----------------------------------------------------------

const MAGIC = Buffer.from("BLOOMCLK", "ascii");

function paddedAscii(buffer, start, lengthByte, size, what) {
  const length = buffer[lengthByte];
  need(length <= size, `${what} length ${length} exceeds its field`);
  const field = buffer.subarray(start, start + size);
  need(field.subarray(length).every((byte) => byte === 0), `${what} padding is not zero`);
  return field.subarray(0, length).toString("ascii");
}

/** Parse and check an encoded file's header at the start of `buffer`. */
export function parseClkHeader(buffer) {
  need(buffer.length >= 200, "shorter than a header");
  need(buffer.subarray(0, 8).equals(MAGIC), "bad magic");
  const version = buffer.readUInt16LE(8);
  const headerLength = buffer.readUInt16LE(10);
  need(version === 1 || version === 2, `unknown format version ${version}`);
  let groupCount = 0;
  if (version === 2) {
    groupCount = buffer.readUInt16LE(168);
    need(groupCount >= 1 && groupCount <= 16, "group count out of range");
    need(buffer.readUInt16LE(170) === 0, "reserved bytes 170..171 not zero");
  }
  // Either format may carry the 72-byte key context block just before the digest.
  const expected = version === 1 ? 200 : 204 + 192 * groupCount;
  const hasKeyContext = headerLength === expected + 72;
  need(
    headerLength === expected || hasKeyContext,
    `header length ${headerLength}, expected ${expected} or ${expected + 72}`,
  );
  need(buffer.length >= headerLength, "shorter than its header");
  const body = buffer.subarray(0, headerLength - 32);
  need(sha256(body).equals(buffer.subarray(headerLength - 32, headerLength)), "header digest");
  const header = {
    format_version: version,
    header_length: headerLength,
    clk_bits: buffer.readUInt32LE(12),
    record_count: buffer.readBigUInt64LE(16),
    schema_fingerprint: Buffer.from(buffer.subarray(24, 56)),
    kcv: Buffer.from(buffer.subarray(56, 72)),
    payload_sha256: Buffer.from(buffer.subarray(72, 104)),
    project_id: paddedAscii(buffer, 105, 104, 63, "project id"),
    groups: [],
    key_context: null,
  };
  if (hasKeyContext) {
    const at = headerLength - 104;
    need(buffer[at] >= 1, "key context length is zero");
    const context = paddedAscii(buffer, at + 1, at, 71, "key context");
    need(/^spine:[a-z][a-z0-9-]{0,62}$/.test(context), "key context is not spine: and a label");
    header.key_context = context;
  }
  need(header.clk_bits % 64 === 0 && header.clk_bits >= 64 && header.clk_bits <= 65536, "CLK bits");
  for (let g = 0; g < groupCount; g++) {
    const at = 172 + 192 * g;
    header.groups.push({
      name: paddedAscii(buffer, at + 5, at + 4, 63, "group name"),
      bits: buffer.readUInt32LE(at),
      hardening: paddedAscii(buffer, at + 69, at + 68, 123, "hardening descriptor"),
    });
  }
  if (version === 2) {
    const total = header.groups.reduce((sum, group) => sum + group.bits, 0);
    need(total === header.clk_bits, "groups do not add up to the CLK bits");
  }
  header.payload_length = header.record_count * BigInt(header.clk_bits / 8);
  return header;
}

/** Read an encoded file: its header and payload, with the payload's length and digest checked. */
export function readEncodedFile(path) {
  const file = readFileSync(path);
  const header = parseClkHeader(file);
  const payload = file.subarray(header.header_length);
  need(BigInt(payload.length) === header.payload_length, "payload length differs from the header");
  need(sha256(payload).equals(header.payload_sha256), "payload digest differs from the header");
  return { header, payload };
}

// -- Manifest ("Manifest") -------------------------------------------------------------------

/** The manifest record (the JSON the party signs) for an encoded file's header. `fields`:
 * party, software_version, created_at, nonce (Buffer), leak_scan_strings, leak_scan_rows,
 * and the encode's own findings (unkeyed_check, rows_read, rows_skipped, field_counts as
 * [{field, missing, blanked}]); a client that did not record them says so: false and 0s.
 * A file encoded for a spine (its header's key_context) has its context signed too; the
 * key is absent, never null, for one that has none. */
export function manifestRecord(header, fields) {
  const record = {
    format: "bloomlink-manifest-v2",
    project_id: header.project_id,
    party: fields.party,
    record_count: Number(header.record_count),
    clk_bits: header.clk_bits,
    payload_sha256: header.payload_sha256.toString("hex"),
    schema_fingerprint: header.schema_fingerprint.toString("hex"),
    kcv: header.kcv.toString("hex"),
    software_version: fields.software_version,
    created_at: fields.created_at,
    nonce: fields.nonce.toString("hex"),
    leak_scan_strings: fields.leak_scan_strings,
    leak_scan_rows: fields.leak_scan_rows,
    unkeyed_check: fields.unkeyed_check ?? false,
    rows_read: fields.rows_read ?? 0,
    rows_skipped: fields.rows_skipped ?? 0,
    field_counts: (fields.field_counts ?? []).map(({ field, missing, blanked }) => ({ blanked, field, missing })),
    // A file format 1 (one record-level CLK) manifest has "layout": null.
    layout: header.groups.length
      ? header.groups.map(({ name, bits, hardening }) => ({ bits, hardening, name }))
      : null,
  };
  if (header.key_context) record.key_context = header.key_context;
  return record;
}

/** The raw 32-byte Ed25519 public key of a KeyObject (private or public). */
export function rawPublicKey(key) {
  const jwk = createPublicKey(key).export({ format: "jwk" });
  return Buffer.from(jwk.x, "base64url");
}

/** An Ed25519 private key from its 32-byte seed (PKCS#8 DER around the seed). */
export function ed25519FromSeed(seed) {
  const prefix = Buffer.from("302e020100300506032b657004220420", "hex");
  return createPrivateKey({ key: Buffer.concat([prefix, seed]), format: "der", type: "pkcs8" });
}

/** Sign a manifest record: pure Ed25519 over its canonical JSON bytes. */
export function signManifest(record, privateKey) {
  const canonical = canonicalBytes(record);
  return {
    canonical,
    manifest_sha256: sha256hex(canonical),
    signature: sign(null, canonical, privateKey),
    public_key: rawPublicKey(privateKey),
  };
}

/** The UploadManifest message for a signed record. */
export function manifestMessage(record, signed) {
  return {
    project_id: record.project_id,
    party_id: record.party,
    record_count: String(record.record_count),
    clk_bits: record.clk_bits,
    payload_sha256: Buffer.from(record.payload_sha256, "hex"),
    schema_fingerprint: Buffer.from(record.schema_fingerprint, "hex"),
    kcv: Buffer.from(record.kcv, "hex"),
    software_version: record.software_version,
    created_at: record.created_at,
    nonce: Buffer.from(record.nonce, "hex"),
    leak_scan_strings: String(record.leak_scan_strings),
    leak_scan_rows: String(record.leak_scan_rows),
    signature: signed.signature,
    public_key: signed.public_key,
    groups: (record.layout || []).map(({ name, bits, hardening }) => ({ name, bits, hardening })),
    unkeyed_check: record.unkeyed_check,
    rows_read: String(record.rows_read),
    rows_skipped: String(record.rows_skipped),
    field_counts: record.field_counts.map(({ field, missing, blanked }) => ({
      field_name: field,
      missing: String(missing),
      blanked: String(blanked),
    })),
    key_context: record.key_context ?? "",
  };
}

// -- Settings fingerprint ("Settings fingerprint") -------------------------------------------

const BLOCKING = {
  BLOCKING_UNSPECIFIED: "lsh",
  BLOCKING_LSH: "lsh",
  BLOCKING_NONE: "none",
  BLOCKING_AUTO: "auto",
};
const LINK_KEY_MODE = {
  LINK_KEY_MODE_UNSPECIFIED: "shared",
  LINK_KEY_MODE_SHARED: "shared",
  LINK_KEY_MODE_PER_PARTY: "per_party",
};

/** The settings document of a CreateProjectRequest (plain object: enums by name, bytes as a
 * Buffer or hex, a field left out is not set). */
export function settingsDocument(request) {
  const matching = request.matching || {};
  const fingerprint = Buffer.isBuffer(request.schema_fingerprint)
    ? request.schema_fingerprint.toString("hex")
    : request.schema_fingerprint;
  const document = {
    format: "bloomlink-settings-v2",
    project_id: request.project_id,
    members: [...request.member_party_ids].sort(),
    schema_fingerprint: fingerprint,
    threshold: matching.threshold ?? null,
    blocking: BLOCKING[matching.blocking ?? "BLOCKING_UNSPECIFIED"],
    link_key_mode: LINK_KEY_MODE[request.link_key_mode ?? "LINK_KEY_MODE_UNSPECIFIED"],
    retention_days: request.retention_days ?? 0,
    auto_run: request.auto_run ?? true,
  };
  need(document.blocking && document.link_key_mode, "unknown blocking or link-key mode");
  if (request.groups && request.groups.length) {
    document.layout = request.groups.map(({ name, bits, hardening }) => ({ bits, hardening, name }));
  }
  // The link model's keys only in a project that deduplicates.
  const deduplicated = matching.deduplicated_party_ids ?? [];
  if (deduplicated.length) {
    document.deduplicated = [...deduplicated].sort();
    document.max_cluster_size = matching.max_cluster_size ?? 1000;
  }
  // The model's cut only when the operator set it.
  if (matching.match_probability !== undefined && matching.match_probability !== null) {
    document.match_probability = matching.match_probability;
  }
  return document;
}

export const settingsFingerprint = (request) => sha256hex(canonicalBytes(settingsDocument(request)));

// -- Layout and link-key digests -------------------------------------------------------------

export const layoutDigest = (groups) =>
  sha256hex(canonicalBytes(groups.map(({ name, bits, hardening }) => ({ bits, hardening, name }))));

/** The link-key digest of [position, key] pairs in release order. */
export function linkKeysDigest(entries) {
  const hash = createHash("sha256");
  for (const [position, key] of entries) hash.update(`${BigInt(position)},${key}\n`, "ascii");
  return hash.digest("hex");
}

// -- Audit log ("Audit log") -----------------------------------------------------------------

const FORMAT = "bloomlink-audit-v2";
const prefix = (name) => Buffer.from(`bloomlink-audit-${name}-v2\0`, "ascii");
export const AUDIT_PREFIXES = {
  entry_signature: prefix("entry"),
  head_signature: prefix("head"),
  field_hash: prefix("field"),
  body_hash: prefix("body"),
  project_tag: prefix("project"),
};
const hmac = (key, data) => createHmac("sha256", key).update(data).digest();
const hex = (text, bytes, what) => {
  need(typeof text === "string" && new RegExp(`^[0-9a-f]{${2 * bytes}}$`).test(text), `${what} is not ${bytes} bytes of hex`);
  return Buffer.from(text, "hex");
};

/** A detail's field salt: HMAC-SHA256(entry salt, "field\0" + key), first 16 bytes. */
export const fieldSalt = (salt, key) => hmac(salt, Buffer.from(`field\0${key}`, "ascii")).subarray(0, 16);
/** The body salt: HMAC-SHA256(entry salt, "body\0"), first 16 bytes. */
export const bodySalt = (salt) => hmac(salt, Buffer.from("body\0", "ascii")).subarray(0, 16);
/** SHA-256(field prefix + field salt + canonical JSON [key, value]). */
export const fieldHash = (key, value, salt) =>
  sha256(Buffer.concat([AUDIT_PREFIXES.field_hash, salt, canonicalBytes([key, value])]));
/** HMAC-SHA256(view key, project prefix + project id): the tag of a project's entries. */
export const projectTag = (viewKey, projectId) =>
  hmac(viewKey, Buffer.concat([AUDIT_PREFIXES.project_tag, Buffer.from(projectId, "ascii")]));

export function bodyHash({ event, timestamp, project_id, fields, salt }) {
  const body = { event, timestamp, project_id, fields: {}, salt: salt.toString("hex") };
  for (const [key, digest] of Object.entries(fields)) body.fields[key] = digest.toString("hex");
  return sha256(Buffer.concat([AUDIT_PREFIXES.body_hash, canonicalBytes(body)]));
}

export function entryHash({ log_id, sequence, previous_hash, project_tag, body }) {
  return sha256(
    canonicalBytes({
      format: FORMAT,
      log_id,
      sequence,
      previous_hash,
      project: project_tag,
      body: body.toString("hex"),
    }),
  );
}

const COMMON = ["entry_hash", "format", "log_id", "previous_hash", "project_tag", "sequence", "signature"];
const KEYS = {
  full: [...COMMON, "details", "event", "project_id", "salt", "timestamp"].sort(),
  view: [...COMMON, "body_salt", "details", "event", "field_salts", "project_id", "timestamp", "view", "withheld"].sort(),
  stub: [...COMMON, "body_hash", "redacted"].sort(),
};

/** Which of the three forms a parsed line is, with its keys checked exactly. */
function lineForm(entry, index) {
  const form = entry.redacted === true ? "stub" : entry.view === true ? "view" : "full";
  need(Object.keys(entry).sort().join() === KEYS[form].join(), `line ${index}: not exactly the keys of a ${form} line`);
  return form;
}

/** The body hash a line shows or lets the reader recompute. */
function lineBodyHash(entry, form, index) {
  if (form === "stub") return hex(entry.body_hash, 32, `line ${index} body_hash`);
  const fields = {};
  let salt;
  if (form === "full") {
    const entrySalt = hex(entry.salt, 16, `line ${index} salt`);
    for (const [key, value] of Object.entries(entry.details)) fields[key] = fieldHash(key, value, fieldSalt(entrySalt, key));
    salt = bodySalt(entrySalt);
  } else {
    need(
      Object.keys(entry.details).sort().join() === Object.keys(entry.field_salts).sort().join(),
      `line ${index}: a shown detail without its field salt`,
    );
    for (const [key, value] of Object.entries(entry.details)) {
      fields[key] = fieldHash(key, value, hex(entry.field_salts[key], 16, `line ${index} field salt`));
    }
    for (const [key, digest] of Object.entries(entry.withheld)) {
      need(!(key in fields), `line ${index}: ${key} both shown and withheld`);
      fields[key] = hex(digest, 32, `line ${index} withheld ${key}`);
    }
    salt = hex(entry.body_salt, 16, `line ${index} body_salt`);
  }
  return bodyHash({ event: entry.event, timestamp: entry.timestamp, project_id: entry.project_id, fields, salt });
}

/** Verify audit log lines (strings without their newlines) against the LU's public key:
 * each line's form and canonical spelling, its recomputed entry hash, its signature, the
 * chain and the sequence, and every project tag against the project's view key (from its
 * project_created entry). `view`: {project_id} when the lines are a project's view (then no
 * stub may carry that project's tag and every shown entry must be that project's). Returns
 * the parsed lines with a `form` ("full", "view" or "stub") added. */
export function verifyAuditLines(lines, publicKey, view = null) {
  const entries = [];
  const viewKeys = {};
  let previous = "0".repeat(64);
  lines.forEach((line, index) => {
    const entry = JSON.parse(line);
    need(entry.format === FORMAT, `line ${index}: format ${entry.format}`);
    need(line === canonicalText(entry), `line ${index}: not in canonical form`);
    const form = lineForm(entry, index);
    need(entry.sequence === index, `line ${index}: sequence ${entry.sequence}`);
    need(entry.previous_hash === previous, `line ${index}: previous_hash does not link`);
    const body = lineBodyHash(entry, form, index);
    const computed = entryHash({ ...entry, body }).toString("hex");
    need(computed === entry.entry_hash, `line ${index}: entry hash does not recompute`);
    const signed = Buffer.concat([AUDIT_PREFIXES.entry_signature, hex(entry.entry_hash, 32, "entry hash")]);
    need(verify(null, signed, publicKey, hex(entry.signature, 64, "signature")), `line ${index}: signature`);
    if (form !== "stub" && entry.project_id !== null) {
      if (entry.event === "project_created") viewKeys[entry.project_id] ??= hex(entry.details.view_key, 16, "view key");
      const key = viewKeys[entry.project_id];
      need(key, `line ${index}: an entry of ${entry.project_id} before its project_created`);
      need(projectTag(key, entry.project_id).toString("hex") === entry.project_tag, `line ${index}: project tag`);
    } else if (form !== "stub") {
      need(entry.project_tag === null, `line ${index}: an entry without a project carries a tag`);
    }
    if (view) {
      need(form === "stub" || entry.project_id === view.project_id, `line ${index}: another project shown in a view`);
    } else {
      need(form === "full", `line ${index}: a ${form} line in a whole log`);
    }
    previous = entry.entry_hash;
    entries.push({ ...entry, form });
  });
  if (view) {
    const key = viewKeys[view.project_id];
    need(key, "the view has no project_created of its project");
    const own = projectTag(key, view.project_id).toString("hex");
    entries.forEach((entry, index) => need(entry.form !== "stub" || entry.project_tag !== own, `line ${index}: a stub hides the project's own entry`));
  }
  return entries;
}

/** Verify a signed head against the LU's key and the entries it vouches for. */
export function verifySignedHead(text, publicKey, entries) {
  const head = JSON.parse(text);
  need(text === canonicalText(head), "signed head is not in canonical form");
  need(head.format === FORMAT, `signed head format ${head.format}`);
  const { signature, ...body } = head;
  const signed = Buffer.concat([AUDIT_PREFIXES.head_signature, canonicalBytes(body)]);
  need(verify(null, signed, publicKey, hex(signature, 64, "head signature")), "signed head signature");
  need(head.sequence < entries.length, "signed head is past the end of the log");
  need(entries[head.sequence].entry_hash === head.entry_hash, "signed head disagrees with its entry");
  return head;
}
