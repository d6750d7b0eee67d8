// The conformance run: a second bloomlink client, written from docs/protocol.md and
// proto/protocol/pb/linkage.proto alone, against a real linkage unit over mutual TLS.
//
//     node conformance.mjs CONFIG.json
//
// CONFIG (written by tests/integration/test_node_conformance.py): the LU's address, the CA
// and one certificate per role, each member party's encoded file and manifest signing key,
// a non-member party, the project ids to create, which positions of the two parties' files
// hold the same person, a few sensitive strings for the leak scan, the LU's stream idle cut
// and audited-call burst (its limits are the operator's settings, so a client is told them),
// and an output directory (manifests, link keys, the first party's audit view and
// report.json are written there). Prints one line per check and exits 1 at the first that
// fails.

import { createPrivateKey, createPublicKey, randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

import {
  ConformanceError,
  linkKeysDigest,
  manifestMessage,
  manifestRecord,
  readEncodedFile,
  settingsFingerprint,
  sha256,
  signManifest,
  verifyAuditLines,
  verifySignedHead,
} from "./wire.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
mkdirSync(config.out, { recursive: true });

// -- the contract: the .proto, loaded as shipped ---------------------------------------------
const definition = protoLoader.loadSync(
  [join(here, "..", "..", "proto", "protocol", "pb", "linkage.proto"), join(here, "health.proto")],
  { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true },
);
const loaded = grpc.loadPackageDefinition(definition);
const LinkageUnit = loaded.bloomlink.v1.LinkageUnit;
const Health = loaded.grpc.health.v1.Health;

const CHUNK_BYTES = 1000; // small, so a test-sized payload spans many chunks
const ca = readFileSync(config.ca);
const clients = {};
function as(who, Service = LinkageUnit) {
  const key = `${who}/${Service.serviceName}`;
  if (!clients[key]) {
    const { cert, key: privateKey } = config.identities[who];
    const credentials = grpc.credentials.createSsl(ca, readFileSync(privateKey), readFileSync(cert));
    // Keepalive no more often than the LU permits (30 s): "Transport".
    clients[key] = new Service(config.target, credentials, { "grpc.keepalive_time_ms": 60000 });
  }
  return clients[key];
}

const need = (condition, message) => {
  if (!condition) throw new ConformanceError(message);
};
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const deadline = (seconds = 15) => ({ deadline: Date.now() + seconds * 1000 });

function unary(who, method, request, Service = LinkageUnit) {
  return new Promise((resolve, reject) => {
    as(who, Service)[method](request, deadline(), (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

function serverStream(who, method, request) {
  return new Promise((resolve, reject) => {
    const messages = [];
    const call = as(who)[method](request, deadline(60));
    call.on("data", (message) => messages.push(message));
    call.on("error", reject);
    call.on("end", () => resolve(messages));
  });
}

const errorClass = (error) => (error.metadata ? error.metadata.get("bloomlink-error")[0] : undefined);

const trailer = (error, key) => (error.metadata ? error.metadata.get(key)[0] : undefined);

/** A call that must be refused with `code` and `bloomlink-error` `name` ("Errors"); with
 * `compatibility`, also the bloomlink-party and bloomlink-aspect trailers. */
async function refused(promise, code, name, compatibility = null) {
  let outcome;
  try {
    outcome = await promise;
  } catch (error) {
    need(error.code === grpc.status[code], `expected ${code}, got ${grpc.status[error.code]}: ${error.details}`);
    need(errorClass(error) === name, `expected bloomlink-error ${name}, got ${errorClass(error)}`);
    if (compatibility) {
      for (const [key, want] of Object.entries(compatibility)) {
        need(trailer(error, `bloomlink-${key}`) === want, `bloomlink-${key} is ${trailer(error, `bloomlink-${key}`)}, not ${want}`);
      }
    }
    return error;
  }
  if (outcome && outcome.error) return refused(Promise.reject(outcome.error), code, name, compatibility);
  throw new ConformanceError(`expected ${code}, but the call succeeded`);
}

// -- the upload stream ("Upload") ------------------------------------------------------------

function chunk(payload, start, end) {
  const data = payload.subarray(start, end);
  return { chunk: { offset: String(start), data, chunk_sha256: sha256(data) } };
}

/** Open an Upload stream, send `messages`, then half-close (or run `interrupt(call)`).
 * Resolves with {error, response}: a refusal is data here, not an exception. */
function uploadStream(who, messages, interrupt) {
  return new Promise((resolve) => {
    const call = as(who).Upload(deadline(60), (error, response) => resolve({ error, response }));
    for (const message of messages) call.write(message);
    if (interrupt) interrupt(call);
    else call.end();
  });
}

async function offset(who, upload) {
  return unary(who, "GetUploadOffset", {
    project_id: upload.header.project_id,
    party_id: who,
    payload_sha256: upload.header.payload_sha256,
  });
}

/** "Retry and resume": GetUploadOffset, then a stream from the committed offset (less
 * `overlap` bytes, which the LU ignores), until COMPLETE; waits out "already in progress". */
async function resumeUpload(who, upload, overlap = 0) {
  for (let attempt = 0; attempt < 50; attempt++) {
    const held = await offset(who, upload);
    if (held.upload_state === "UPLOAD_STATE_COMPLETE") return held;
    const committed = held.upload_state === "UPLOAD_STATE_PARTIAL" ? Number(held.committed_bytes) : 0;
    const messages = [{ header: upload.headerMessage }];
    for (let at = Math.max(0, committed - overlap); at < upload.payload.length; at += CHUNK_BYTES) {
      messages.push(chunk(upload.payload, at, Math.min(at + CHUNK_BYTES, upload.payload.length)));
    }
    const { error, response } = await uploadStream(who, messages);
    if (!error) {
      if (response.upload_state === "UPLOAD_STATE_COMPLETE") return response;
      continue;
    }
    // "Retry and resume": an earlier stream still held (its slot, or the upload's claim)
    // clears by itself; so does a rate limit. Other refusals are final.
    const busy = error.code === grpc.status.FAILED_PRECONDITION && errorClass(error) === "PreconditionError";
    const transient = [
      grpc.status.UNAVAILABLE,
      grpc.status.DEADLINE_EXCEEDED,
      grpc.status.CANCELLED,
      grpc.status.RESOURCE_EXHAUSTED,
    ].includes(error.code);
    if (!busy && !transient) throw error;
    await sleep(100 * Math.min(2 ** attempt, 20));
  }
  throw new ConformanceError("the upload did not complete");
}

/** Everything a party needs to upload its encoded file, built from the spec. `change`:
 * header fields to alter (a refused upload's header, with a manifest signed to match it). */
function prepareUpload(party, change = {}) {
  const file = readEncodedFile(config.parties[party].encoded);
  const header = { ...file.header, ...change };
  const { payload } = file;
  // A minimal leak scan (UTF-8 only): none of the sensitive strings is in the payload.
  const strings = config.sensitive_strings;
  for (const text of strings) {
    need(!payload.includes(Buffer.from(text, "utf8")), `leak scan found a sensitive string in ${party}'s payload`);
  }
  const record = manifestRecord(header, {
    party,
    software_version: "interop-node-1",
    created_at: new Date().toISOString().replace(/\.\d{3}Z$/, ".000000Z"),
    nonce: randomBytes(16),
    leak_scan_strings: strings.length,
    leak_scan_rows: strings.length,
    // This client encodes nothing itself: no unkeyed re-encoding check, no extract counts
    // ("Manifest": false and 0 say "not recorded").
    unkeyed_check: false,
    rows_read: 0,
    rows_skipped: 0,
    field_counts: [],
  });
  const signed = signManifest(record, createPrivateKey(readFileSync(config.parties[party].signing_key)));
  if (!Object.keys(change).length) {
    writeFileSync(
      join(config.out, `${party}.manifest.json`),
      JSON.stringify(
        { manifest: record, public_key: signed.public_key.toString("hex"), signature: signed.signature.toString("hex") },
        null,
        2,
      ) + "\n",
    );
  }
  const headerMessage = {
    project_id: header.project_id,
    party_id: party,
    format_version: header.format_version,
    schema_fingerprint: header.schema_fingerprint,
    kcv: header.kcv,
    clk_bits: header.clk_bits,
    record_count: String(header.record_count),
    payload_sha256: header.payload_sha256,
    manifest: manifestMessage(record, signed),
    groups: header.groups,
  };
  return { header, payload, record, signed, headerMessage };
}

// -- the run ---------------------------------------------------------------------------------

const report = [];
async function step(name, body) {
  try {
    await body();
  } catch (error) {
    const detail = error instanceof ConformanceError ? error.message : `${error.code ?? ""} ${error.details ?? error.stack}`;
    console.log(`FAIL ${name}: ${detail}`);
    report.push({ name, ok: false, detail });
    writeFileSync(join(config.out, "report.json"), JSON.stringify(report, null, 2));
    process.exit(1);
  }
  console.log(`ok   ${name}`);
  report.push({ name, ok: true });
}

const [first, second] = Object.keys(config.parties);
const project = config.project_id;
const uploads = {};
let auditKey;

await step("health: SERVING for the server and for bloomlink.v1.LinkageUnit", async () => {
  for (const service of ["", "bloomlink.v1.LinkageUnit"]) {
    const answer = await unary("auditor", "Check", { service }, Health);
    need(answer.status === "SERVING", `health of "${service}" is ${answer.status}`);
  }
});

await step("audit public key: an Ed25519 PEM", async () => {
  const { public_key_pem } = await unary(first, "GetAuditPublicKey", {});
  auditKey = createPublicKey(public_key_pem);
  need(auditKey.asymmetricKeyType === "ed25519", `audit key is ${auditKey.asymmetricKeyType}`);
});

for (const party of [first, second]) uploads[party] = prepareUpload(party);
const groups = uploads[first].header.groups;
const schemaFingerprint = uploads[first].header.schema_fingerprint;

const settingsOf = async (who, projectId) => {
  const answer = await unary(who, "GetProjectSettings", { project_id: projectId });
  need(answer.settings && typeof answer.settings_fingerprint === "string", "GetProjectSettingsResponse{settings, settings_fingerprint}");
  return answer;
};

await step("create project: candidate cut 1.0, match probability 0.75, enums unset, auto_run false; fingerprint recomputed", async () => {
  const request = {
    project_id: project,
    member_party_ids: [first, second],
    schema_fingerprint: schemaFingerprint,
    matching: { threshold: 1.0, match_probability: 0.75 },
    auto_run: false,
    groups,
  };
  const response = await unary("operator", "CreateProject", request);
  need(response.project_id === project, "project id echoed");
  need(response.settings_fingerprint === settingsFingerprint(request), "settings fingerprint differs from the spec's");
});

await step("create project with every default; GetProjectSettings fills the defaults and its fingerprint recomputes", async () => {
  const request = {
    project_id: config.defaults_project_id,
    member_party_ids: [second, first],
    schema_fingerprint: schemaFingerprint,
  };
  const response = await unary("operator", "CreateProject", request);
  need(response.settings_fingerprint === settingsFingerprint(request), "settings fingerprint differs from the spec's");
  const { settings, settings_fingerprint } = await settingsOf(first, config.defaults_project_id);
  need(settings.auto_run === true, "auto_run unset must read back true");
  need(settings.matching.blocking === "BLOCKING_LSH", `blocking reads back ${settings.matching.blocking}`);
  need(settings.link_key_mode === "LINK_KEY_MODE_SHARED", `link_key_mode reads back ${settings.link_key_mode}`);
  need(settings_fingerprint === response.settings_fingerprint, "GetProjectSettings' fingerprint is the project's");
  need(settingsFingerprint(settings) === settings_fingerprint, "the echoed settings recompute to the fingerprint");
});

await step("create a dedupe-only project (one member, deduplicated, cap unset); link-model settings recompute", async () => {
  const request = {
    project_id: config.dedupe_project_id,
    member_party_ids: [first],
    schema_fingerprint: schemaFingerprint,
    matching: { deduplicated_party_ids: [first] },
  };
  const response = await unary("operator", "CreateProject", request);
  need(response.settings_fingerprint === settingsFingerprint(request), "settings fingerprint differs from the spec's");
  const { settings, settings_fingerprint } = await settingsOf("auditor", config.dedupe_project_id);
  need(settings.matching.deduplicated_party_ids.join() === first, "deduplicated parties read back");
  need(settings.matching.max_cluster_size === 1000, `cluster cap reads back ${settings.matching.max_cluster_size}`);
  need(settingsFingerprint(settings) === settings_fingerprint, "the echoed settings recompute to the fingerprint");
});

await step("refused per role when the call starts: party creates (even a malformed request), auditor and party start, operator fetches keys and offsets, auditor's silent upload", async () => {
  const request = { project_id: "by-a-party", member_party_ids: [first, second], schema_fingerprint: schemaFingerprint };
  await refused(unary(first, "CreateProject", request), "PERMISSION_DENIED", "PermissionDeniedError");
  await refused(unary(first, "CreateProject", { project_id: "NOT A LABEL" }), "PERMISSION_DENIED", "PermissionDeniedError");
  await refused(unary("auditor", "StartRun", { project_id: project }), "PERMISSION_DENIED", "PermissionDeniedError");
  await refused(unary(first, "StartRun", { project_id: project }), "PERMISSION_DENIED", "PermissionDeniedError");
  await refused(
    serverStream("operator", "FetchLinkKeys", { project_id: project, party_id: first }),
    "PERMISSION_DENIED",
    "PermissionDeniedError",
  );
  await refused(
    unary("operator", "GetUploadOffset", { project_id: project, party_id: first, payload_sha256: Buffer.alloc(32) }),
    "PERMISSION_DENIED",
    "PermissionDeniedError",
  );
  // The auditor opens an Upload and sends nothing: refused at once, not after the idle cut.
  const started = Date.now();
  await refused(uploadStream("auditor", [], () => {}), "PERMISSION_DENIED", "PermissionDeniedError");
  need(Date.now() - started < config.stream_idle_seconds * 1000, "the refusal waited for a first message");
  await refused(
    unary("operator", "CreateProject", { ...request, project_id: project }),
    "ALREADY_EXISTS",
    "AlreadyExistsError",
  );
});

await step("refused: a non-member sees NOT_FOUND, a party reads no whole log, no run or keys before uploads", async () => {
  await refused(unary(config.non_member, "GetProjectStatus", { project_id: project }), "NOT_FOUND", "NotFoundError");
  await refused(unary(config.non_member, "GetProjectSettings", { project_id: project }), "NOT_FOUND", "NotFoundError");
  await refused(serverStream(first, "FetchAuditLog", { project_id: "" }), "PERMISSION_DENIED", "PermissionDeniedError");
  await refused(unary("operator", "StartRun", { project_id: project }), "FAILED_PRECONDITION", "PreconditionError");
  await refused(
    serverStream(first, "FetchLinkKeys", { project_id: project, party_id: first }),
    "FAILED_PRECONDITION",
    "PreconditionError",
  );
});

await step("refused uploads: a party as another, a header that is not first, another schema (CompatibilityError at the header)", async () => {
  const upload = uploads[first];
  await refused(uploadStream(second, [{ header: upload.headerMessage }]), "PERMISSION_DENIED", "PermissionDeniedError");
  await refused(uploadStream(first, [chunk(upload.payload, 0, 10)]), "INVALID_ARGUMENT", "InvalidRequestError");
  const otherSchema = prepareUpload(first, { schema_fingerprint: sha256(Buffer.from("another schema")) });
  await refused(
    uploadStream(first, [{ header: otherSchema.headerMessage }, chunk(upload.payload, 0, CHUNK_BYTES)]),
    "FAILED_PRECONDITION",
    "CompatibilityError",
    { party: first, aspect: "schema_fingerprint" },
  );
});

await step("upload: nothing held yet", async () => {
  const held = await offset(first, uploads[first]);
  need(held.upload_state === "UPLOAD_STATE_NOT_STARTED" && held.committed_bytes === "0", "expected NOT_STARTED, 0");
});

await step("upload: a stream that half-closes early leaves the upload PARTIAL", async () => {
  const { headerMessage, payload } = uploads[first];
  const { error, response } = await uploadStream(first, [
    { header: headerMessage },
    chunk(payload, 0, CHUNK_BYTES),
    chunk(payload, CHUNK_BYTES, 3 * CHUNK_BYTES),
  ]);
  need(!error, `stream refused: ${error && error.details}`);
  need(response.upload_state === "UPLOAD_STATE_PARTIAL", `state ${response.upload_state}`);
  need(response.committed_bytes === String(3 * CHUNK_BYTES), `committed ${response.committed_bytes}`);
  need(response.payload_bytes === String(payload.length), `payload_bytes ${response.payload_bytes}`);
});

/** GetUploadOffset until the LU has released the previous stream (it may still be closing). */
async function settledOffset(who, upload) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await offset(who, upload);
    } catch (error) {
      if (attempt > 20 || error instanceof ConformanceError) throw error;
      await sleep(100);
    }
  }
}

await step("upload: refused chunks (bad SHA-256, a gap, past the end) change nothing", async () => {
  const { headerMessage, payload } = uploads[first];
  const bad = chunk(payload, 3 * CHUNK_BYTES, 4 * CHUNK_BYTES);
  bad.chunk.chunk_sha256 = sha256(Buffer.from("not these bytes"));
  await refused(uploadStream(first, [{ header: headerMessage }, bad]), "INVALID_ARGUMENT", "InvalidRequestError");
  const gap = chunk(payload, 4 * CHUNK_BYTES, 5 * CHUNK_BYTES);
  await refused(uploadStream(first, [{ header: headerMessage }, gap]), "INVALID_ARGUMENT", "InvalidRequestError");
  const past = Buffer.concat([payload, Buffer.alloc(1)]);
  const beyond = { chunk: { offset: "0", data: past, chunk_sha256: sha256(past) } };
  await refused(uploadStream(first, [{ header: headerMessage }, beyond]), "INVALID_ARGUMENT", "InvalidRequestError");
  const held = await settledOffset(first, uploads[first]);
  need(held.committed_bytes === String(3 * CHUNK_BYTES), `committed moved to ${held.committed_bytes}`);
});

/** Open a stream with the header and one chunk at `start`, then run `interrupt(call)`;
 * resolves with the stream's error and where the LU's offset ended. */
async function interruptedChunk(start, interrupt) {
  const { headerMessage, payload } = uploads[first];
  const { error } = await uploadStream(first, [{ header: headerMessage }, chunk(payload, start, start + CHUNK_BYTES)], interrupt);
  const held = await settledOffset(first, uploads[first]);
  need(held.upload_state === "UPLOAD_STATE_PARTIAL", `state ${held.upload_state}`);
  return { error, committed: Number(held.committed_bytes) };
}

await step("upload: a stream the client cancels keeps the chunks the LU appended", async () => {
  const start = 3 * CHUNK_BYTES;
  const { error, committed } = await interruptedChunk(start, (call) => {
    // Cancel once the LU reports the chunk held (a separate call), mid-stream.
    (async () => {
      for (let polls = 0; polls < 100; polls++) {
        const held = await offset(first, uploads[first]);
        if (Number(held.committed_bytes) >= start + CHUNK_BYTES) break;
        await sleep(50);
      }
      call.cancel();
    })();
  });
  need(error && error.code === grpc.status.CANCELLED, `expected CANCELLED, got ${error && error.code}`);
  need(committed === start + CHUNK_BYTES, `committed ${committed}`);
});

await step("upload: a stream that goes quiet is cut by the LU's idle watchdog (CANCELLED), its chunks kept", async () => {
  const start = 4 * CHUNK_BYTES;
  const opened = Date.now();
  // Neither more chunks nor a half-close: the LU cuts the stream after its idle period.
  const { error, committed } = await interruptedChunk(start, () => {});
  const waited = (Date.now() - opened) / 1000;
  need(error && error.code === grpc.status.CANCELLED, `expected CANCELLED, got ${error && error.code}`);
  need(waited >= config.stream_idle_seconds * 0.9, `cut after ${waited} s, before the idle period`);
  need(committed === start + CHUNK_BYTES, `committed ${committed}`);
});

await step("upload: resume from before the committed offset (overlap ignored) to COMPLETE", async () => {
  const done = await resumeUpload(first, uploads[first], 1500);
  need(done.upload_state === "UPLOAD_STATE_COMPLETE", `state ${done.upload_state}`);
  const held = await offset(first, uploads[first]);
  need(held.upload_state === "UPLOAD_STATE_COMPLETE", `offset says ${held.upload_state}`);
  need(held.committed_bytes === String(uploads[first].payload.length), `committed ${held.committed_bytes}`);
});

await step("upload: re-sending the completed upload is a no-op answered COMPLETE", async () => {
  const { error, response } = await uploadStream(first, [{ header: uploads[first].headerMessage }]);
  need(!error, `refused: ${error && error.details}`);
  need(response.upload_state === "UPLOAD_STATE_COMPLETE", `state ${response.upload_state}`);
});

await step("upload: the second party's header under another key is refused (kcv, about itself), then its file in one stream", async () => {
  const otherKey = prepareUpload(second, { kcv: Buffer.alloc(16, 0xab) });
  await refused(
    uploadStream(second, [{ header: otherKey.headerMessage }]),
    "FAILED_PRECONDITION",
    "CompatibilityError",
    { party: second, aspect: "kcv" },
  );
  const done = await resumeUpload(second, uploads[second]);
  need(done.upload_state === "UPLOAD_STATE_COMPLETE", `state ${done.upload_state}`);
});

await step("status: both complete and the run READY for the operator; a party sees its own row only", async () => {
  const operator = await unary("operator", "GetProjectStatus", { project_id: project });
  need(operator.parties.map((p) => p.party_id).join() === [first, second].join(), "parties in created order");
  for (const party of operator.parties) {
    need(party.upload_state === "UPLOAD_STATE_COMPLETE", `${party.party_id} is ${party.upload_state}`);
    need(party.record_count === String(uploads[party.party_id].header.record_count), "record count");
  }
  need(operator.run_state === "RUN_STATE_READY", `run state ${operator.run_state}`);
  const view = await unary(second, "GetProjectStatus", { project_id: project });
  need(view.parties.map((p) => p.party_id).join() === second, `a party sees rows ${view.parties.map((p) => p.party_id)}`);
  need(view.parties[0].record_count === String(uploads[second].header.record_count), "its own record count");
  need(view.run_state === "RUN_STATE_READY", `a party reads ${view.run_state}`);
});

let runId;
await step("run: StartRun, then status polled to FINISHED with its last stage complete", async () => {
  const ticket = await unary("operator", "StartRun", { project_id: project });
  need(["RUN_STATE_QUEUED", "RUN_STATE_RUNNING"].includes(ticket.run_state), `started ${ticket.run_state}`);
  need(/^[a-z0-9][a-z0-9_-]{0,63}$/.test(ticket.run_id), "run id is a token");
  const until = Date.now() + 120_000;
  let status;
  do {
    await sleep(250);
    status = await unary("operator", "GetProjectStatus", { project_id: project });
  } while (["RUN_STATE_QUEUED", "RUN_STATE_RUNNING"].includes(status.run_state) && Date.now() < until);
  need(status.run_state === "RUN_STATE_FINISHED", `run ended ${status.run_state} (${status.progress_stage})`);
  need(status.run_id === ticket.run_id, "the run started is the run finished");
  need(Number(status.progress_total) > 0 && status.progress_done === status.progress_total, `progress ${status.progress_done} of ${status.progress_total}`);
  // A grouped project is scored by the Fellegi-Sunter model: status reports the probability
  // cut the operator set (the threshold, 1.0, was the Dice cut for candidate pairs).
  need(status.threshold === 0.75 && status.threshold_method === "fellegi-sunter", `the operator's match probability was used (${status.threshold}, ${status.threshold_method})`);
  // Clusters count people (a record alone is one); linked records are those sharing a cluster.
  const records = Number(uploads[first].header.record_count) + Number(uploads[second].header.record_count);
  need(Number(status.cluster_count) === records - config.truth.length, `operator sees ${status.cluster_count} clusters`);
  need(Number(status.linked_record_count) === 2 * config.truth.length, `operator sees ${status.linked_record_count} linked`);
  await refused(unary("operator", "StartRun", { project_id: project }), "ALREADY_EXISTS", "AlreadyExistsError");
  runId = ticket.run_id;
});

await step("party view: FINISHED and the run id, nothing that depends on the other party's data", async () => {
  for (const party of [first, second]) {
    const view = await unary(party, "GetProjectStatus", { project_id: project });
    need(view.run_state === "RUN_STATE_FINISHED" && view.run_id === runId, `${party} reads ${view.run_state}`);
    need(view.parties.length === 1 && view.parties[0].party_id === party, `${party} sees other rows`);
    for (const figure of ["cluster_count", "linked_record_count", "comparisons", "progress_done", "progress_total"]) {
      need(view[figure] === "0", `${party} sees ${figure} ${view[figure]}`);
    }
    need(view.progress_stage === "" && view.threshold_method === "", `${party} sees the stage or threshold method`);
    need(view.threshold === undefined || view.threshold === null, `${party} sees threshold ${view.threshold}`);
    need(view.check_party_id === "" && view.check_aspect === "", `${party} sees a check outcome`);
    const { settings } = await settingsOf(party, project);
    need(settings.matching.threshold === 1, "the operator's settings are every member's to read");
  }
});

const keys = {};
await step("link keys: every position once, count and digest as the spec computes them", async () => {
  for (const party of [first, second]) {
    const messages = await serverStream(party, "FetchLinkKeys", { project_id: project, party_id: party });
    const entries = messages.flatMap((message) => message.entries.map((e) => [Number(e.position), e.link_key]));
    const total = Number(messages.at(-1).total_count);
    const claimed = messages.at(-1).keys_sha256;
    need(messages.slice(0, -1).every((message) => message.keys_sha256 === ""), "digest only on the last message");
    need(entries.length === total && total === Number(uploads[party].header.record_count), "entry count");
    need(new Set(entries.map(([position]) => position)).size === total, "a position repeated");
    need(entries.every(([, key]) => /^[a-z2-7]{26}$/.test(key)), "link key form");
    need(linkKeysDigest(entries) === claimed, "keys_sha256 differs from the spec's digest");
    keys[party] = new Map(entries);
    writeFileSync(join(config.out, `${party}.keys.csv`), entries.map(([p, k]) => `${p},${k}\n`).join(""));
    uploads[party].keysSha256 = claimed;
  }
});

await step("link keys: the planted pairs share keys and nothing else links; another's keys are NOT_FOUND", async () => {
  const shared = new Set([...keys[first].values()].filter((key) => new Set(keys[second].values()).has(key)));
  for (const [a, b] of config.truth) {
    need(keys[first].get(a) === keys[second].get(b), `positions ${a} and ${b} do not share a key`);
  }
  need(shared.size === config.truth.length, `${shared.size} shared keys for ${config.truth.length} planted pairs`);
  await refused(
    serverStream(second, "FetchLinkKeys", { project_id: project, party_id: first }),
    "NOT_FOUND",
    "NotFoundError",
  );
});

let probesAnswered = 0;
await step("rate limit: a non-member's refused probes are audited until its burst is spent, then RESOURCE_EXHAUSTED", async () => {
  let limited;
  for (let probe = 0; probe < config.audited_call_burst + 20 && !limited; probe++) {
    try {
      await unary(config.non_member, "GetProjectStatus", { project_id: project });
      throw new ConformanceError("a non-member read a project's status");
    } catch (error) {
      if (error instanceof ConformanceError) throw error;
      if (error.code === grpc.status.NOT_FOUND) probesAnswered += 1;
      else limited = error;
    }
  }
  need(limited, "no limit within the burst");
  need(limited.code === grpc.status.RESOURCE_EXHAUSTED && errorClass(limited) === "ResourceLimitError", `limited with ${limited.code}`);
  need(probesAnswered >= config.audited_call_burst - 4, `limited after ${probesAnswered} probes`);
  // Another identity's calls are not limited by it.
  await unary(first, "GetProjectStatus", { project_id: project });
});

await step("audit: the whole log verifies (v2 hashes, signatures, chain, tags, head) and records this client", async () => {
  const messages = await serverStream("auditor", "FetchAuditLog", { project_id: "" });
  const lines = messages.flatMap((m) => m.lines.map((line) => line.toString("utf8")));
  need(lines.every((line) => line.endsWith("\n")), "every line ends in a newline");
  const entries = verifyAuditLines(lines.map((line) => line.slice(0, -1)), auditKey);
  verifySignedHead(messages.at(-1).signed_head.toString("utf8"), auditKey, entries);
  const ofProject = (event, party) =>
    entries.filter((e) => e.event === event && e.project_id === project && (party === undefined || e.details.party === party));
  for (const party of [first, second]) {
    const committed = ofProject("upload_committed", party);
    need(committed.length === 1, `${party}: ${committed.length} upload_committed entries`);
    need(committed[0].details.manifest_sha256 === uploads[party].signed.manifest_sha256, `${party}: manifest_sha256`);
    const released = ofProject("keys_released", party);
    need(released.length === 1 && released[0].details.keys_sha256 === uploads[party].keysSha256, `${party}: keys_released digest`);
  }
  const reasons = ofProject("upload_refused").map((e) => `${e.details.party}:${e.details.reason}`);
  need(reasons.includes(`${first}:schema_fingerprint`) && reasons.includes(`${second}:kcv`), `refusals audited: ${reasons}`);
  const created = ofProject("project_created")[0];
  const { settings_fingerprint } = await settingsOf("auditor", project);
  need(created.details.settings_fingerprint === settings_fingerprint, "project_created fingerprint");
  const finished = ofProject("run_finished")[0];
  need(finished.details.run_id === runId && finished.details.linked_record_count === 2 * config.truth.length, "run_finished figures");
  const probes = entries.filter((e) => e.event === "access_refused" && e.details.party === config.non_member);
  need(probes.length === probesAnswered + 2, `${probes.length} access_refused for ${probesAnswered + 2} refused probes`);
});

await step("audit: a member's project view verifies; the other party's and the run's figures withheld, other projects stubbed", async () => {
  const messages = await serverStream(first, "FetchAuditLog", { project_id: project });
  const lines = messages.flatMap((m) => m.lines.map((line) => line.toString("utf8").slice(0, -1)));
  const head = messages.at(-1).signed_head.toString("utf8");
  const entries = verifyAuditLines(lines, auditKey, { project_id: project });
  verifySignedHead(head, auditKey, entries);
  need(entries.some((e) => e.form === "stub" && e.project_tag !== null), "other projects' entries are stubs");
  const shown = (event, party) => entries.find((e) => e.event === event && e.details.party === party);
  need(Object.keys(shown("upload_committed", second).details).join() === "party", "the other party's upload figures are shown");
  need("kcv" in shown("upload_committed", second).withheld, "the other party's KCV is neither shown nor withheld");
  need(shown("upload_committed", first).details.kcv === uploads[first].header.kcv.toString("hex"), "its own upload in full");
  const finished = entries.find((e) => e.event === "run_finished");
  need(Object.keys(finished.details).join() === "run_id" && "cluster_count" in finished.withheld, "run figures shown to a party");
  need(shown("keys_released", second) && !("key_count" in shown("keys_released", second).details), "the other party's key count");
  writeFileSync(join(config.out, `${first}.view.jsonl`), lines.map((line) => `${line}\n`).join(""));
  writeFileSync(join(config.out, `${first}.view.jsonl.head`), head);
});

writeFileSync(join(config.out, "report.json"), JSON.stringify(report, null, 2));
console.log(`${report.length} checks passed`);
for (const client of Object.values(clients)) client.close();
