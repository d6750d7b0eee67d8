// The protocol's data rules, written from docs/protocol.md alone: the encoded file header,
// the manifest and its signature, the settings fingerprint, the layout and link-key digests,
// and audit entry verification. Node's own crypto; no bloomlink code.

import { createHash, createPrivateKey, createPublicKey, sign, verify } from "node:crypto";
import { readFileSync } from "node:fs";

import { canonicalBytes } from "./canonical.mjs";

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
  const expected = version === 1 ? 200 : 204 + 192 * groupCount;
  need(headerLength === expected, `header length ${headerLength}, expected ${expected}`);
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
  };
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

/** The manifest record (the JSON the party signs) for an encoded file's header. */
export function manifestRecord(header, fields) {
  const record = {
    format: header.groups.length ? "bloomlink-manifest-v2" : "bloomlink-manifest-v1",
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
  };
  if (header.groups.length) {
    record.layout = header.groups.map(({ name, bits, hardening }) => ({ bits, hardening, name }));
  }
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
  };
}

// -- Settings fingerprint ("Settings fingerprint") -------------------------------------------

const BLOCKING = { BLOCKING_UNSPECIFIED: "lsh", BLOCKING_LSH: "lsh", BLOCKING_NONE: "none" };
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

// -- Audit entries ("Audit entries") ---------------------------------------------------------

const ENTRY_PREFIX = Buffer.from("bloomlink-audit-entry-v1\0", "ascii");
const HEAD_PREFIX = Buffer.from("bloomlink-audit-head-v1\0", "ascii");

/** Verify audit log lines (strings without their newlines) against the LU's public key:
 * every hash, signature, link and sequence; return the parsed entries. */
export function verifyAuditLines(lines, publicKey) {
  const entries = [];
  let previous = "0".repeat(64);
  lines.forEach((line, index) => {
    const entry = JSON.parse(line);
    need(entry.sequence === index, `line ${index}: sequence ${entry.sequence}`);
    need(entry.previous_hash === previous, `line ${index}: previous_hash does not link`);
    if (entry.redacted !== true) {
      const { entry_hash: _hash, signature: _signature, ...content } = entry;
      need(sha256hex(canonicalBytes(content)) === entry.entry_hash, `line ${index}: entry hash`);
    }
    const signed = Buffer.concat([ENTRY_PREFIX, Buffer.from(entry.entry_hash, "hex")]);
    need(verify(null, signed, publicKey, Buffer.from(entry.signature, "hex")), `line ${index}: signature`);
    need(line === canonicalBytes(entry).toString("utf8"), `line ${index}: not in canonical form`);
    previous = entry.entry_hash;
    entries.push(entry);
  });
  return entries;
}

/** Verify a signed head against the LU's key and the entries it vouches for. */
export function verifySignedHead(text, publicKey, entries) {
  const head = JSON.parse(text);
  const { signature, ...body } = head;
  const signed = Buffer.concat([HEAD_PREFIX, canonicalBytes(body)]);
  need(verify(null, signed, publicKey, Buffer.from(signature, "hex")), "signed head signature");
  need(head.sequence < entries.length, "signed head is past the end of the log");
  need(entries[head.sequence].entry_hash === head.entry_hash, "signed head disagrees with its entry");
  return head;
}
