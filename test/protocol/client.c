//go:build ignore

// The constraint above keeps the go tool from treating this file as cgo
// source of package protocol_test; the test compiles it with gcc itself.

/*
 * client.c drives natsmesh's example Counter entity over plain NATS, written
 * from docs/protocol.md alone: the official NATS C client for transport,
 * libxxhash for shard numbers, JSON bodies, and no natsmesh code.
 *
 * Usage: client <nats-url>
 *
 * It prints one line per check, "ok <check> <value>" or
 * "FAIL <check>: <reason>", and exits 1 if any check failed. The Go test
 * (protocol_test.go) compares the values with its table.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nats/nats.h>
#include <xxhash.h>

/* Every request and every receive waits at most this long (milliseconds),
 * so a broken runner fails a check instead of hanging the test. */
#define WAIT_MS 5000
/* DefaultConfig's shardsPerGroup, prefix and group. */
#define SHARDS 300
#define CALL "mesh.v1.call.default"
#define ROUTE "mesh.v1.entity"

static natsConnection *nc;
static int failures;

static void ok(const char *check, const char *fmt, ...) {
    va_list ap;
    printf("ok %s ", check);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
}

/* fail reports a failed check; the reason must stay on one line. */
static void fail(const char *check, const char *fmt, ...) {
    va_list ap;
    printf("FAIL %s: ", check);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    failures++;
}

/* ---- ids, shards, base64 ---- */

/* An id with its length: ids are bytes and may hold any UTF-8. */
typedef struct {
    const char *bytes;
    size_t len;
} mesh_id;

#define ID(s) ((mesh_id){(s), sizeof(s) - 1})

/* shard_of is the document's formula: XXH64(id, seed 0) mod shardsPerGroup. */
static unsigned shard_of(mesh_id id, unsigned shards) {
    return (unsigned)(XXH64(id.bytes, id.len, 0) % shards);
}

/* b64 writes the standard base64 (RFC 4648 section 4, padded) of in to out. */
static void b64(const char *in, size_t n, char *out) {
    static const char abc[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *p = (const unsigned char *)in;
    size_t i;
    for (i = 0; i + 2 < n; i += 3) {
        *out++ = abc[p[i] >> 2];
        *out++ = abc[((p[i] & 3) << 4) | (p[i + 1] >> 4)];
        *out++ = abc[((p[i + 1] & 15) << 2) | (p[i + 2] >> 6)];
        *out++ = abc[p[i + 2] & 63];
    }
    if (n - i == 1) {
        *out++ = abc[p[i] >> 2];
        *out++ = abc[(p[i] & 3) << 4];
        *out++ = '=';
        *out++ = '=';
    } else if (n - i == 2) {
        *out++ = abc[p[i] >> 2];
        *out++ = abc[((p[i] & 3) << 4) | (p[i + 1] >> 4)];
        *out++ = abc[(p[i + 1] & 15) << 2];
        *out++ = '=';
    }
    *out = '\0';
}

/* call_subject is <prefix>.v1.call.<group>.<shard>.Counter.<rpc>. */
static void call_subject(char *buf, size_t n, unsigned shard, const char *rpc) {
    snprintf(buf, n, CALL ".%u.Counter.%s", shard, rpc);
}

/* ---- messages ---- */

/* A request header; arrays of them end with {NULL, NULL}. */
typedef struct {
    const char *key, *value;
} header;

/* header_of returns msg's header key, or NULL when it is absent. */
static const char *header_of(natsMsg *msg, const char *key) {
    const char *v = NULL;
    if (natsMsgHeader_Get(msg, key, &v) != NATS_OK) {
        return NULL;
    }
    return v;
}

/* or_absent returns v, or "absent" for a missing header. */
static const char *or_absent(const char *v) { return v != NULL ? v : "absent"; }

/* new_msg builds a message with headers hs (may be NULL) and body. */
static natsStatus new_msg(natsMsg **out, const char *subj, const char *reply,
                          const header *hs, const char *body) {
    natsStatus s = natsMsg_Create(out, subj, reply, body, (int)strlen(body));
    for (; s == NATS_OK && hs != NULL && hs->key != NULL; hs++) {
        s = natsMsgHeader_Set(*out, hs->key, hs->value);
    }
    if (s != NATS_OK && *out != NULL) {
        natsMsg_Destroy(*out);
        *out = NULL;
    }
    return s;
}

/* request sends a call and waits WAIT_MS for its reply; on failure it
 * reports check and returns NULL. The caller destroys the reply. */
static natsMsg *request(const char *check, const char *subj, const header *hs,
                        const char *body) {
    natsMsg *req = NULL, *rep = NULL;
    natsStatus s = new_msg(&req, subj, NULL, hs, body);
    if (s == NATS_OK) {
        s = natsConnection_RequestMsg(&rep, nc, req, WAIT_MS);
    }
    natsMsg_Destroy(req);
    if (s != NATS_OK) {
        fail(check, "request on %s: %s", subj, natsStatus_GetText(s));
        return NULL;
    }
    return rep;
}

/* ---- tiny JSON reading: enough for integers and the error envelope ---- */

/* parse_int reads a whole JSON integer (surrounding spaces allowed). */
static bool parse_int(const char *s, long long *v) {
    char *end;
    if (s == NULL) {
        return false;
    }
    while (*s == ' ' || *s == '\n' || *s == '\r' || *s == '\t') {
        s++;
    }
    if (*s == '\0') {
        return false;
    }
    *v = strtoll(s, &end, 10);
    while (*end == ' ' || *end == '\n' || *end == '\r' || *end == '\t') {
        end++;
    }
    return end != s && *end == '\0';
}

/* json_field returns a pointer to the value of the first member "key" in
 * json (searched as text: fine for the envelopes checked here), or NULL. */
static const char *json_field(const char *json, const char *key) {
    char pat[80];
    size_t n = (size_t)snprintf(pat, sizeof pat, "\"%s\"", key);
    for (const char *p = json; p != NULL && (p = strstr(p, pat)) != NULL; p += n) {
        const char *q = p + n;
        while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r') {
            q++;
        }
        if (*q != ':') {
            continue;
        }
        q++;
        while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r') {
            q++;
        }
        return q;
    }
    return NULL;
}

/* json_string copies the string member "key" (no escapes expected) to out. */
static bool json_string(const char *json, const char *key, char *out, size_t n) {
    const char *v = json_field(json, key);
    const char *end;
    if (v == NULL || *v != '"' || (end = strchr(v + 1, '"')) == NULL ||
        (size_t)(end - v - 1) >= n) {
        return false;
    }
    memcpy(out, v + 1, (size_t)(end - v - 1));
    out[end - v - 1] = '\0';
    return true;
}

/* json_int reads the integer member "key". */
static bool json_int(const char *json, const char *key, long long *out) {
    const char *v = json_field(json, key);
    char *end;
    if (v == NULL) {
        return false;
    }
    *out = strtoll(v, &end, 10);
    return end != v;
}

/* ---- checks ---- */

/* call_value makes a call that must succeed with an integer; it returns
 * false (after reporting) otherwise. */
static bool call_value(const char *check, const char *subj, const header *hs,
                       const char *body, long long *got) {
    natsMsg *rep = request(check, subj, hs, body);
    bool good = false;
    if (rep == NULL) {
        return false;
    }
    const char *code = header_of(rep, "Mesh-Error");
    if (code != NULL) {
        fail(check, "%s: Mesh-Error %s, body %s", subj, code, natsMsg_GetData(rep));
    } else if (!parse_int(natsMsg_GetData(rep), got)) {
        fail(check, "%s: body %s is not an integer", subj, natsMsg_GetData(rep));
    } else {
        good = true;
    }
    natsMsg_Destroy(rep);
    return good;
}

/* expect_value checks that a call succeeds with want and prints it. */
static bool expect_value(const char *check, const char *subj, const header *hs,
                         const char *body, long long want) {
    long long got;
    if (!call_value(check, subj, hs, body, &got)) {
        return false;
    }
    if (got != want) {
        fail(check, "%s %s = %lld, want %lld", subj, body, got, want);
        return false;
    }
    ok(check, "%lld", got);
    return true;
}

/* expect_error checks that a call fails with Mesh-Error code and a JSON
 * envelope carrying the same code and a message. On success it keeps the
 * reply in *keep if keep is not NULL (the caller destroys it). */
static bool expect_error(const char *check, const char *subj, const header *hs,
                         const char *body, const char *want, natsMsg **keep) {
    natsMsg *rep = request(check, subj, hs, body);
    char code[64], msg[512];
    bool good = false;
    if (rep == NULL) {
        return false;
    }
    const char *hdr = header_of(rep, "Mesh-Error");
    const char *data = natsMsg_GetData(rep);
    if (data == NULL) {
        data = "";
    }
    if (hdr == NULL) {
        fail(check, "%s: no Mesh-Error header, body %s, want %s", subj, data, want);
    } else if (strcmp(hdr, want) != 0) {
        fail(check, "%s: Mesh-Error %s, want %s (body %s)", subj, hdr, want, data);
    } else if (!json_string(data, "code", code, sizeof code) || strcmp(code, want) != 0) {
        fail(check, "%s: body %s has no \"code\":\"%s\"", subj, data, want);
    } else if (!json_string(data, "message", msg, sizeof msg) || msg[0] == '\0') {
        fail(check, "%s: body %s has no message", subj, data);
    } else {
        good = true;
    }
    if (good && keep != NULL) {
        *keep = rep;
    } else {
        natsMsg_Destroy(rep);
    }
    if (good && keep == NULL) {
        ok(check, "%s", want);
    }
    return good;
}

/* check_vectors checks the document's XXH64 test vectors. */
static void check_vectors(void) {
    static const struct {
        const char *check;
        mesh_id id;
        const char *hex;
        unsigned mod300, mod16;
    } vs[] = {
        {"hash-user-123", ID("user-123"), "dc9ac79afcf5aac9", 125, 9},
        {"hash-a.b.c", ID("a.b.c"), "022a7cd9aee21f27", 75, 7},
        /* "日本語" */
        {"hash-cjk", ID("\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e"), "7179a19f3719f5e1", 69, 1},
        /* "emoji 🎉" */
        {"hash-emoji", ID("emoji \xf0\x9f\x8e\x89"), "a158cad32d6edc71", 145, 1},
        {"hash-counter-1", ID("counter-1"), "42b48bc820d80dd9", 253, 9},
        {"hash-leading-space", ID(" leading"), "40b98bb8d60d4d22", 130, 2},
        {"hash-empty", ID(""), "ef46db3751d8e999", 21, 9},
    };
    for (size_t i = 0; i < sizeof vs / sizeof vs[0]; i++) {
        uint64_t h = XXH64(vs[i].id.bytes, vs[i].id.len, 0);
        char hex[17];
        snprintf(hex, sizeof hex, "%016" PRIx64, h);
        unsigned m300 = shard_of(vs[i].id, 300), m16 = shard_of(vs[i].id, 16);
        if (strcmp(hex, vs[i].hex) != 0 || m300 != vs[i].mod300 || m16 != vs[i].mod16) {
            fail(vs[i].check, "got %s %u %u, want %s %u %u", hex, m300, m16, vs[i].hex,
                 vs[i].mod300, vs[i].mod16);
            continue;
        }
        ok(vs[i].check, "%s %u %u", hex, m300, m16);
    }
}

/* check_ids sends Increment then GetValue on the hashed subject for ids that
 * are not subject tokens; each id is a fresh entity. */
static void check_ids(void) {
    static const struct {
        const char *check;
        mesh_id id;
        bool b64; /* the id cannot travel in Mesh-Id */
        int amount;
    } ids[] = {
        {"id-dots", ID("a.b.c"), false, 11},
        {"id-space", ID("with space"), false, 12},
        {"id-star", ID("*"), false, 13},
        {"id-gt", ID(">"), false, 14},
        {"id-cjk", ID("\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e"), false, 15},
        {"id-emoji", ID("emoji \xf0\x9f\x8e\x89"), false, 16},
        {"id-leading-space", ID(" leading"), true, 17},
        {"id-newline", ID("line1\nline2"), true, 18},
    };
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        char subj[256], enc[64], body[64];
        header hs[] = {{ids[i].b64 ? "Mesh-Id-B64" : "Mesh-Id", ids[i].id.bytes},
                       {NULL, NULL}};
        long long got;
        unsigned shard = shard_of(ids[i].id, SHARDS);
        if (ids[i].b64) {
            b64(ids[i].id.bytes, ids[i].id.len, enc);
            hs[0].value = enc;
        }
        snprintf(body, sizeof body, "{\"amount\":%d}", ids[i].amount);
        call_subject(subj, sizeof subj, shard, "Increment");
        if (!call_value(ids[i].check, subj, hs, body, &got)) {
            continue;
        }
        if (got != ids[i].amount) {
            fail(ids[i].check, "Increment = %lld, want %d", got, ids[i].amount);
            continue;
        }
        call_subject(subj, sizeof subj, shard, "GetValue");
        expect_value(ids[i].check, subj, hs, "", ids[i].amount);
    }
}

/* check_compact calls on the compact subject: the codec and id are its last
 * tokens and the request carries no header; the entity is the one the
 * header form reaches for the same id. */
static void check_compact(void) {
    const header none[] = {{NULL, NULL}};
    const header hs[] = {{"Mesh-Id", "compact-c"}, {NULL, NULL}};
    char subj[256], hsubj[256];
    long long got;
    unsigned shard = shard_of(ID("compact-c"), SHARDS);
    snprintf(subj, sizeof subj, CALL ".%u.Counter.Increment.json.compact-c", shard);
    if (!call_value("compact-increment", subj, none, "{\"amount\":21}", &got)) {
        return;
    }
    if (got != 21) {
        fail("compact-increment", "Increment = %lld, want 21", got);
        return;
    }
    ok("compact-increment", "%lld", got);
    call_subject(hsubj, sizeof hsubj, shard, "GetValue");
    expect_value("compact-same-entity", hsubj, hs, "", 21);
    snprintf(subj, sizeof subj, CALL ".%u.Counter.GetValue.json.compact-c", shard);
    expect_value("compact-getvalue", subj, none, "", 21);
}

/* check_errors checks the error replies of the document's table. */
static void check_errors(unsigned shard) {
    char subj[256], wrong[256], unknown[256], nobody[256], longid[1026], enc[64];
    call_subject(subj, sizeof subj, shard, "GetValue");
    call_subject(wrong, sizeof wrong, (shard + 1) % SHARDS, "GetValue");
    call_subject(unknown, sizeof unknown, shard, "Nope");
    snprintf(nobody, sizeof nobody, CALL ".%u.Nobody.GetValue", shard);
    memset(longid, 'x', 1025);
    longid[1025] = '\0';
    b64("\xff\xfe", 2, enc); /* not UTF-8 */

    const struct {
        const char *check, *subj;
        header hs[3];
        const char *body, *code;
    } cases[] = {
        {"err-unknown-rpc", unknown, {{"Mesh-Id", "user-123"}}, "", "UnknownRpc"},
        {"err-unknown-rpc-route", ROUTE ".Counter.Nope", {{"Mesh-Id", "user-123"}}, "",
         "UnknownRpc"},
        {"err-unknown-entity", nobody, {{"Mesh-Id", "user-123"}}, "", "UnknownEntity"},
        {"err-malformed", ROUTE ".Counter.Increment", {{"Mesh-Id", "user-123"}}, "{oops",
         "Malformed"},
        {"err-malformed-hashed", subj, {{"Mesh-Id", "user-123"}}, "{oops", "Malformed"},
        {"err-malformed-type", ROUTE ".Counter.Increment", {{"Mesh-Id", "user-123"}},
         "{\"amount\":\"five\"}", "Malformed"},
        {"err-missing-id", subj, {{NULL, NULL}}, "", "BadRequest"},
        {"err-missing-id-route", ROUTE ".Counter.GetValue", {{NULL, NULL}}, "",
         "BadRequest"},
        {"err-wrong-shard", wrong, {{"Mesh-Id", "user-123"}}, "", "BadRequest"},
        {"err-unknown-codec", subj, {{"Mesh-Id", "user-123"}, {"Mesh-Codec", "xml"}}, "",
         "BadRequest"},
        {"err-bad-b64", ROUTE ".Counter.GetValue", {{"Mesh-Id-B64", "!!not base64!!"}}, "",
         "BadRequest"},
        {"err-bad-timeout", subj, {{"Mesh-Id", "user-123"}, {"Mesh-Timeout", "soon"}}, "",
         "BadRequest"},
        {"err-zero-timeout", subj, {{"Mesh-Id", "user-123"}, {"Mesh-Timeout", "0"}}, "",
         "BadRequest"},
        {"err-id-not-utf8", ROUTE ".Counter.GetValue", {{"Mesh-Id-B64", enc}}, "",
         "InvalidId"},
        {"err-id-too-long", ROUTE ".Counter.GetValue", {{"Mesh-Id", longid}}, "",
         "InvalidId"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        expect_error(cases[i].check, cases[i].subj, cases[i].hs, cases[i].body,
                     cases[i].code, NULL);
    }
}

/* check_failure checks a declared failure: Withdraw more than the value. */
static void check_failure(void) {
    const mesh_id id = ID("wallet");
    const header hs[] = {{"Mesh-Id", "wallet"}, {NULL, NULL}};
    char inc[256], wd[256], failure[64];
    const char *check = "withdraw-overdrawn";
    natsMsg *rep = NULL;
    long long value, wanted;
    call_subject(inc, sizeof inc, shard_of(id, SHARDS), "Increment");
    call_subject(wd, sizeof wd, shard_of(id, SHARDS), "Withdraw");
    if (!expect_value("withdraw-setup", inc, hs, "{\"amount\":10}", 10)) {
        return;
    }
    if (expect_error(check, wd, hs, "{\"amount\":50}", "Failure", &rep)) {
        const char *data = natsMsg_GetData(rep);
        const char *detail = json_field(data, "detail");
        if (!json_string(data, "failure", failure, sizeof failure) ||
            strcmp(failure, "Overdrawn") != 0) {
            fail(check, "body %s: want \"failure\":\"Overdrawn\"", data);
        } else if (detail == NULL || *detail != '{' || !json_int(detail, "value", &value) ||
                   !json_int(detail, "wanted", &wanted)) {
            fail(check, "body %s: want detail {value, wanted}", data);
        } else if (value != 10 || wanted != 50) {
            fail(check, "detail value=%lld wanted=%lld, want 10 and 50", value, wanted);
        } else {
            ok(check, "Overdrawn value=%lld wanted=%lld", value, wanted);
        }
        natsMsg_Destroy(rep);
    }
    /* The failure was an answer: the entity is unchanged and still serves. */
    expect_value("withdraw-ok", wd, hs, "{\"amount\":4}", 6);
}

/* check_fire_and_forget publishes Increment without a reply subject, then
 * polls GetValue until it shows. The document promises that one
 * connection's messages to one entity run in publish order, so the first
 * read must already see it; the poll bounds the wait if it does not. */
static void check_fire_and_forget(void) {
    const mesh_id id = ID("fire-and-forget");
    const header hs[] = {{"Mesh-Id", "fire-and-forget"}, {NULL, NULL}};
    const char *check = "fire-and-forget";
    char inc[256], get[256];
    natsMsg *m = NULL;
    call_subject(inc, sizeof inc, shard_of(id, SHARDS), "Increment");
    call_subject(get, sizeof get, shard_of(id, SHARDS), "GetValue");
    natsStatus s = new_msg(&m, inc, NULL, hs, "{\"amount\":7}");
    if (s == NATS_OK) {
        s = natsConnection_PublishMsg(nc, m);
    }
    natsMsg_Destroy(m);
    if (s == NATS_OK) {
        s = natsConnection_FlushTimeout(nc, WAIT_MS);
    }
    if (s != NATS_OK) {
        fail(check, "publish: %s", natsStatus_GetText(s));
        return;
    }
    int64_t deadline = nats_Now() + WAIT_MS;
    long long got = 0;
    int reads = 0;
    while (nats_Now() < deadline) {
        reads++;
        if (!call_value(check, get, hs, "", &got)) {
            return;
        }
        if (got == 7) {
            break;
        }
    }
    if (got != 7) {
        fail(check, "GetValue = %lld after %d reads, want 7", got, reads);
        return;
    }
    ok(check, "%lld", got);
    if (reads != 1) {
        fail("fire-and-forget-order", "first GetValue did not see the Increment published "
                                      "before it (%d reads)", reads);
        return;
    }
    ok("fire-and-forget-order", "%d", reads);
}

/* ---- streams ---- */

/* A stream: the inbox subscription and the runner's control subject. */
typedef struct {
    natsInbox *inbox;
    natsSubscription *sub;
    char control[256];
} stream;

/* stream_open subscribes to a fresh inbox and publishes the request with
 * reply subject = inbox and Mesh-Stream-Window: window. */
static bool stream_open(const char *check, stream *st, const char *subj, const char *id,
                        const char *body, int window) {
    char w[16];
    natsMsg *req = NULL;
    snprintf(w, sizeof w, "%d", window);
    const header hs[] = {{"Mesh-Id", id}, {"Mesh-Stream-Window", w}, {NULL, NULL}};
    memset(st, 0, sizeof *st);
    natsStatus s = natsInbox_Create(&st->inbox);
    if (s == NATS_OK) {
        s = natsConnection_SubscribeSync(&st->sub, nc, st->inbox);
    }
    if (s == NATS_OK) {
        s = new_msg(&req, subj, st->inbox, hs, body);
    }
    if (s == NATS_OK) {
        s = natsConnection_PublishMsg(nc, req);
    }
    natsMsg_Destroy(req);
    if (s != NATS_OK) {
        fail(check, "open stream on %s: %s", subj, natsStatus_GetText(s));
        return false;
    }
    return true;
}

/* stream_close unsubscribes from the inbox; later chunks, if any, are
 * dropped by the server. */
static void stream_close(const char *check, stream *st) {
    if (st->sub != NULL) {
        natsStatus s = natsSubscription_Unsubscribe(st->sub);
        if (s != NATS_OK) {
            fail(check, "unsubscribe %s: %s", st->inbox, natsStatus_GetText(s));
        }
        natsSubscription_Destroy(st->sub);
    }
    natsInbox_Destroy(st->inbox);
}

/* stream_control publishes an empty message with one header to the stream's
 * control subject (Mesh-Ack: n or Mesh-Cancel: true). */
static bool stream_control(const char *check, stream *st, const char *key,
                           const char *value) {
    natsMsg *m = NULL;
    natsStatus s = new_msg(&m, st->control, NULL, (const header[]){{key, value}, {NULL, NULL}},
                           "");
    if (s == NATS_OK) {
        s = natsConnection_PublishMsg(nc, m);
    }
    natsMsg_Destroy(m);
    if (s != NATS_OK) {
        fail(check, "publish %s: %s to %s: %s", key, value, st->control,
             natsStatus_GetText(s));
        return false;
    }
    return true;
}

/* stream_next waits for the next message and checks its Mesh-Seq is seq.
 * The caller destroys it. */
static natsMsg *stream_next(const char *check, stream *st, long long seq) {
    natsMsg *m = NULL;
    long long got;
    natsStatus s = natsSubscription_NextMsg(&m, st->sub, WAIT_MS);
    if (s != NATS_OK) {
        fail(check, "waiting for Mesh-Seq %lld: %s", seq, natsStatus_GetText(s));
        return NULL;
    }
    if (!parse_int(header_of(m, "Mesh-Seq"), &got) || got != seq) {
        fail(check, "Mesh-Seq %s, want %lld (got Mesh-End %s, Mesh-Error %s, body %s)",
             or_absent(header_of(m, "Mesh-Seq")), seq, or_absent(header_of(m, "Mesh-End")),
             or_absent(header_of(m, "Mesh-Error")), or_absent(natsMsg_GetData(m)));
        natsMsg_Destroy(m);
        return NULL;
    }
    return m;
}

/* stream_chunk checks that a non-final message carries the chunk want and a
 * control subject (the same for the whole stream), recording it in st. */
static bool stream_chunk(const char *check, stream *st, natsMsg *m, long long seq,
                         long long want) {
    const char *ctl = header_of(m, "Mesh-Control");
    long long got;
    if (header_of(m, "Mesh-Error") != NULL || header_of(m, "Mesh-End") != NULL) {
        fail(check, "chunk %lld: early end (Mesh-Error %s, body %s)", seq,
             or_absent(header_of(m, "Mesh-Error")),
             natsMsg_GetData(m));
        return false;
    }
    if (ctl == NULL || ctl[0] == '\0' || strlen(ctl) >= sizeof st->control) {
        fail(check, "chunk %lld has no usable Mesh-Control", seq);
        return false;
    }
    if (st->control[0] == '\0') {
        strcpy(st->control, ctl);
    } else if (strcmp(st->control, ctl) != 0) {
        fail(check, "chunk %lld: Mesh-Control %s, earlier %s", seq, ctl, st->control);
        return false;
    }
    if (!parse_int(natsMsg_GetData(m), &got) || got != want) {
        fail(check, "chunk %lld = %s, want %lld", seq, natsMsg_GetData(m), want);
        return false;
    }
    return true;
}

/* check_stream streams Countdown(n) to the end with window W, acknowledging
 * every ack chunks: chunks n..1 with Mesh-Seq 1..n, then Mesh-End with
 * Mesh-Seq n+1. */
static void check_stream(const char *subj, const char *id, int n, int window, int ack) {
    const char *check = "stream-countdown";
    char body[32], num[32];
    stream st;
    int acks = 0;
    snprintf(body, sizeof body, "%d", n);
    if (!stream_open(check, &st, subj, id, body, window)) {
        stream_close(check, &st);
        return;
    }
    for (long long seq = 1;; seq++) {
        natsMsg *m = stream_next(check, &st, seq);
        if (m == NULL) {
            break;
        }
        if (seq == n + 1) {
            const char *end = header_of(m, "Mesh-End");
            const char *err = header_of(m, "Mesh-Error");
            if (end == NULL || strcmp(end, "true") != 0 || err != NULL) {
                fail(check, "message %lld: Mesh-End %s, Mesh-Error %s, want a clean end",
                     seq, or_absent(end), or_absent(err));
            } else {
                ok(check, "%d chunks, %d acks", n, acks);
            }
            natsMsg_Destroy(m);
            break;
        }
        bool good = stream_chunk(check, &st, m, seq, n - seq + 1);
        natsMsg_Destroy(m);
        if (!good) {
            break;
        }
        if (seq % ack == 0) {
            snprintf(num, sizeof num, "%lld", seq);
            if (!stream_control(check, &st, "Mesh-Ack", num)) {
                break;
            }
            acks++;
        }
    }
    stream_close(check, &st);
}

/* check_stream_window streams Countdown(n) with window W and acknowledges
 * nothing at first: the runner must stop after W chunks. Silence is checked
 * for quiet_ms, the only way to observe "no more"; a correct runner passes
 * regardless of timing. Then it acknowledges W and reads the rest. */
static void check_stream_window(const char *subj, const char *id, int n, int window,
                                int quiet_ms) {
    const char *check = "stream-window";
    char body[32], num[32];
    stream st;
    natsMsg *m = NULL;
    natsStatus s;
    long long seq = 1;
    snprintf(body, sizeof body, "%d", n);
    if (!stream_open(check, &st, subj, id, body, window)) {
        goto done;
    }
    for (; seq <= window; seq++) {
        if ((m = stream_next(check, &st, seq)) == NULL) {
            goto done;
        }
        bool good = stream_chunk(check, &st, m, seq, n - seq + 1);
        natsMsg_Destroy(m);
        if (!good) {
            goto done;
        }
    }
    s = natsSubscription_NextMsg(&m, st.sub, quiet_ms);
    if (s == NATS_OK) {
        fail(check, "got Mesh-Seq %s with window %d and no ack",
             or_absent(header_of(m, "Mesh-Seq")), window);
        natsMsg_Destroy(m);
        goto done;
    } else if (s != NATS_TIMEOUT) {
        fail(check, "waiting for silence: %s", natsStatus_GetText(s));
        goto done;
    }
    snprintf(num, sizeof num, "%d", window);
    if (!stream_control(check, &st, "Mesh-Ack", num)) {
        goto done;
    }
    /* Acknowledge every chunk from here to drain the stream. */
    for (;; seq++) {
        if ((m = stream_next(check, &st, seq)) == NULL) {
            goto done;
        }
        if (seq == n + 1) {
            const char *end = header_of(m, "Mesh-End");
            if (end == NULL || strcmp(end, "true") != 0 || header_of(m, "Mesh-Error")) {
                fail(check, "message %lld is not a clean end", seq);
            } else {
                ok(check, "%d", window);
            }
            natsMsg_Destroy(m);
            goto done;
        }
        bool good = stream_chunk(check, &st, m, seq, n - seq + 1);
        natsMsg_Destroy(m);
        snprintf(num, sizeof num, "%lld", seq);
        if (!good || !stream_control(check, &st, "Mesh-Ack", num)) {
            goto done;
        }
    }
done:
    stream_close(check, &st);
}

/* check_stream_cancel starts Countdown(n), cancels after `after` chunks,
 * then checks the entity answers a normal call again (its handler stopped). */
static void check_stream_cancel(const char *subj, const char *get, const char *id, int n,
                                int window, int after) {
    const char *check = "stream-cancel";
    const header hs[] = {{"Mesh-Id", id}, {NULL, NULL}};
    char body[32];
    stream st;
    snprintf(body, sizeof body, "%d", n);
    if (!stream_open(check, &st, subj, id, body, window)) {
        stream_close(check, &st);
        return;
    }
    for (long long seq = 1; seq <= after; seq++) {
        natsMsg *m = stream_next(check, &st, seq);
        if (m == NULL) {
            stream_close(check, &st);
            return;
        }
        bool good = stream_chunk(check, &st, m, seq, n - seq + 1);
        natsMsg_Destroy(m);
        if (!good) {
            stream_close(check, &st);
            return;
        }
    }
    bool sent = stream_control(check, &st, "Mesh-Cancel", "true");
    stream_close(check, &st);
    if (!sent) {
        return;
    }
    ok(check, "%d", after);
    /* The counter was never incremented: GetValue is 0 once the handler let go. */
    expect_value("stream-cancel-free", get, hs, "", 0);
}

/* check_stream_refused checks that a stream request refused before streaming
 * gets one error message with Mesh-Seq: 1 and Mesh-End: true. */
static void check_stream_refused(const char *check, const char *subj, const char *id,
                                 const char *body, int window, const char *code) {
    stream st;
    if (!stream_open(check, &st, subj, id, body, window)) {
        stream_close(check, &st);
        return;
    }
    natsMsg *m = stream_next(check, &st, 1);
    if (m != NULL) {
        const char *end = header_of(m, "Mesh-End");
        const char *err = header_of(m, "Mesh-Error");
        char got[64];
        if (end == NULL || strcmp(end, "true") != 0) {
            fail(check, "Mesh-End %s, want true", or_absent(end));
        } else if (err == NULL || strcmp(err, code) != 0) {
            fail(check, "Mesh-Error %s, want %s", or_absent(err), code);
        } else if (!json_string(natsMsg_GetData(m), "code", got, sizeof got) ||
                   strcmp(got, code) != 0) {
            fail(check, "body %s: want \"code\":\"%s\"", natsMsg_GetData(m), code);
        } else {
            ok(check, "%s", code);
        }
        natsMsg_Destroy(m);
    }
    stream_close(check, &st);
}

static void check_streams(void) {
    char subj[256], get[256];
    const mesh_id a = ID("stream-a"), b = ID("stream-b"), c = ID("stream-c");
    call_subject(subj, sizeof subj, shard_of(a, SHARDS), "Countdown");
    check_stream(subj, "stream-a", 200, 16, 8);

    call_subject(subj, sizeof subj, shard_of(b, SHARDS), "Countdown");
    check_stream_window(subj, "stream-b", 20, 4, 300);

    call_subject(subj, sizeof subj, shard_of(c, SHARDS), "Countdown");
    call_subject(get, sizeof get, shard_of(c, SHARDS), "GetValue");
    check_stream_cancel(subj, get, "stream-c", 1000000, 16, 5);

    call_subject(subj, sizeof subj, shard_of(a, SHARDS), "Countdown");
    check_stream_refused("stream-refused-malformed", subj, "stream-a", "\"many\"", 16,
                         "Malformed");
    /* The document requires W >= 1; a bad header is a BadRequest. */
    check_stream_refused("stream-refused-window-0", subj, "stream-a", "3", 0, "BadRequest");
    call_subject(subj, sizeof subj, shard_of(a, SHARDS), "CountUp");
    check_stream_refused("stream-refused-unknown-rpc", subj, "stream-a", "3", 16,
                         "UnknownRpc");
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s <nats-url>\n", argv[0]);
        return 2;
    }
    natsStatus s = natsConnection_ConnectTo(&nc, argv[1]);
    if (s != NATS_OK) {
        fprintf(stderr, "connect %s: %s\n", argv[1], natsStatus_GetText(s));
        return 2;
    }

    const mesh_id user = ID("user-123");
    const header uh[] = {{"Mesh-Id", "user-123"}, {NULL, NULL}};
    char subj[256];

    /* The route subject: no hashing on this side. */
    expect_value("route-increment", ROUTE ".Counter.Increment", uh, "{\"amount\":5}", 5);

    /* The hashed subject: the shard must match the document's vector. */
    check_vectors();
    unsigned shard = shard_of(user, SHARDS);
    call_subject(subj, sizeof subj, shard, "GetValue");
    expect_value("hashed-getvalue", subj, uh, "", 5);
    expect_value("hashed-getvalue-empty-object", subj, uh, "{}", 5);

    /* Optional headers. */
    expect_value("timeout-header", subj,
                 (const header[]){{"Mesh-Id", "user-123"}, {"Mesh-Timeout", "5000"}, {NULL, NULL}},
                 "", 5);
    expect_value("codec-json", subj,
                 (const header[]){{"Mesh-Id", "user-123"}, {"Mesh-Codec", "json"}, {NULL, NULL}},
                 "", 5);
    expect_value("unknown-header-ignored", subj,
                 (const header[]){{"Mesh-Id", "user-123"}, {"Mesh-Future", "x"}, {NULL, NULL}},
                 "", 5);

    /* Mesh-Id-B64 on the route subject, and its precedence over Mesh-Id. */
    char enc[64];
    b64("user-123", 8, enc);
    expect_value("route-b64", ROUTE ".Counter.GetValue",
                 (const header[]){{"Mesh-Id-B64", enc}, {NULL, NULL}}, "", 5);
    expect_value("b64-precedence", ROUTE ".Counter.GetValue",
                 (const header[]){{"Mesh-Id", "someone-else"}, {"Mesh-Id-B64", enc}, {NULL, NULL}},
                 "", 5);

    check_ids();
    check_compact();
    check_errors(shard);
    check_failure();
    check_fire_and_forget();
    check_streams();

    natsConnection_Destroy(nc);
    nats_Close();
    return failures == 0 ? 0 : 1;
}
