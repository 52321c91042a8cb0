/* The fold's fast path: count the events whose projection is already known without making a Python object
 * per event (`pipeline.projector.EventProjector.fold` calls it; see there for the protocol). It reads each
 * event from a list of records or, without an object per record, from a `Records` read in place (records.c).
 *
 * An event takes this path only when it is plainly what an SDK sends: at most max_event_bytes, ASCII without
 * control characters or backslashes, one JSON object whose known fields each appear once with the type the
 * contract gives them, a kind other than a client report, no timestamp or a number within the lateness and
 * future tolerances (as `EventProjector._window_start` judges it), an installation of at most
 * MAX_INSTALLATION_CHARS, every `"has_` in the bytes a known flag of `data`. Its signature (kind, sdk_version
 * and the bytes of every typed `data` field) is looked up in a table that the Python fold fills: the first
 * events of a signature go through Python, which says when their projection is one the table may reuse (no
 * rare value, so the same for every event of the admission epoch). Anything else stops the fast path at that
 * event, and Python folds it (told by `checked` when that event passed every check but the table's, and
 * hashing its session and installation with `session` and `installation`): the fast path never decides a
 * rejection, a rare value or a note other than the projection's own reasons. A counted event adds the
 * keyed BLAKE2b hashes of its session and of its installation (each with its day's key, as
 * `pipeline.admission.Keys` has them; an installation's hash is cached, since a pseudonym comes again and
 * again). Cost is bounded by size: one pass over the bytes, at most MAX_DEPTH levels of nesting, at most
 * MAX_PROBES probes per lookup, a table bounded in entries and bytes, a cache of INSTALLATION_SLOTS.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "records.h"

#define MAX_DEPTH 32
#define MAX_SLOTS 64
#define MAX_SIGNATURE 4096
#define TABLE_SLOTS 131072     /* a power of two, over twice the entries allowed; 4 bytes each */
#define MAX_ENTRIES 50000      /* as the Python projection cache (`_CACHE_LIMIT`) */
#define MAX_TABLE_BYTES (16u << 20)
#define MAX_PROBES 32
#define KEY_DAYS 16
#define INSTALLATION_SLOTS 4096 /* the cache of installations' hashes: 4,096 × 88 bytes, their ints owned */
#define MAX_CACHED_INSTALLATION 64
#define MAX_KINDS 8

/* ---- BLAKE2b (RFC 7693), keyed, for the sessions' keyed hashes (`pipeline.admission.Keys.session`) ---- */

static const uint64_t B2B_IV[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL};

static const uint8_t B2B_SIGMA[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},  {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},  {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},  {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},  {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},  {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},  {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3}};

typedef struct {
    uint64_t h[8];
    uint64_t t;
} Blake2b;

/* A key's states: the key block is the first block of every digest, so it is compressed once, as a block
 * more input follows (`absorbed`: every non-empty text's digest starts there and costs one compression per
 * 128 bytes of text); an empty text's digest compresses the key block as the last (`initial`, `key_block`). */
typedef struct {
    Blake2b initial, absorbed;
    uint8_t key_block[128];
} KeyedBlake2b;

static inline uint64_t rotr64(uint64_t x, int n) { return (x >> n) | (x << (64 - n)); }

static inline uint64_t load64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

#define B2B_G(a, b, c, d, x, y)        \
    do {                               \
        a = a + b + (x);               \
        d = rotr64(d ^ a, 32);         \
        c = c + d;                     \
        b = rotr64(b ^ c, 24);         \
        a = a + b + (y);               \
        d = rotr64(d ^ a, 16);         \
        c = c + d;                     \
        b = rotr64(b ^ c, 63);         \
    } while (0)

static void blake2b_compress(Blake2b *s, const uint8_t *block, int last) {
    uint64_t m[16], v[16];
    for (int i = 0; i < 16; i++) m[i] = load64(block + 8 * i);
    for (int i = 0; i < 8; i++) {
        v[i] = s->h[i];
        v[i + 8] = B2B_IV[i];
    }
    v[12] ^= s->t; /* the counter's high word stays 0: an event is far below 2**64 bytes */
    if (last) v[14] = ~v[14];
    for (int r = 0; r < 12; r++) {
        const uint8_t *z = B2B_SIGMA[r];
        B2B_G(v[0], v[4], v[8], v[12], m[z[0]], m[z[1]]);
        B2B_G(v[1], v[5], v[9], v[13], m[z[2]], m[z[3]]);
        B2B_G(v[2], v[6], v[10], v[14], m[z[4]], m[z[5]]);
        B2B_G(v[3], v[7], v[11], v[15], m[z[6]], m[z[7]]);
        B2B_G(v[0], v[5], v[10], v[15], m[z[8]], m[z[9]]);
        B2B_G(v[1], v[6], v[11], v[12], m[z[10]], m[z[11]]);
        B2B_G(v[2], v[7], v[8], v[13], m[z[12]], m[z[13]]);
        B2B_G(v[3], v[4], v[9], v[14], m[z[14]], m[z[15]]);
    }
    for (int i = 0; i < 8; i++) s->h[i] ^= v[i] ^ v[i + 8];
}

/* The states of `key` with an 8-byte digest: what `hashlib.blake2b(key=key, digest_size=8)` holds. */
static void blake2b_keyed(KeyedBlake2b *k, const uint8_t *key, size_t keylen) {
    memcpy(k->initial.h, B2B_IV, sizeof k->initial.h);
    k->initial.h[0] ^= 0x01010000ULL ^ ((uint64_t)keylen << 8) ^ 8;
    k->initial.t = 0;
    memset(k->key_block, 0, sizeof k->key_block);
    memcpy(k->key_block, key, keylen);
    k->absorbed = k->initial;
    k->absorbed.t = 128;
    blake2b_compress(&k->absorbed, k->key_block, 0);
}

/* The digest of `text` under a key (its states are reused for every session of its day), as the
 * little-endian 64-bit integer `_digest` unpacks. */
static uint64_t blake2b_digest(const KeyedBlake2b *k, const uint8_t *text, size_t len) {
    Blake2b s;
    if (len == 0) {
        s = k->initial;
        s.t = 128;
        blake2b_compress(&s, k->key_block, 1);
        return s.h[0];
    }
    s = k->absorbed;
    for (; len > 128; text += 128, len -= 128) {
        s.t += 128;
        blake2b_compress(&s, text, 0);
    }
    uint8_t last[128] = {0};
    memcpy(last, text, len);
    s.t += len;
    blake2b_compress(&s, last, 1);
    return s.h[0];
}

/* ---- the events' bytes ---- */

/* Whether every byte is printable ASCII but the backslash: no escape, no control character (not even JSON's
 * whitespace but the space), nothing the Python fold would have to decode or check as UTF-8. Eight bytes at a
 * time. */
static int plain_bytes(const uint8_t *p, size_t n) {
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x;
        memcpy(&x, p + i, 8);
        uint64_t below = (x - 0x2020202020202020ULL) & ~x;            /* a byte < 0x20 (or >= 0x80: ~x) */
        uint64_t y = x ^ 0x5c5c5c5c5c5c5c5cULL;                        /* a backslash becomes 0 */
        uint64_t slash = (y - ones) & ~y;
        if ((x | below | slash) & highs) return 0;
    }
    for (; i < n; i++)
        if (p[i] < 0x20 || p[i] >= 0x80 || p[i] == '\\') return 0;
    return 1;
}

enum { T_STRING, T_INT, T_BOOL, T_MODEL, T_STRINGS }; /* a typed field's JSON type, each also null */

typedef struct {
    const char *name;
    Py_ssize_t len;
    int type;
} Slot;

typedef struct {
    const uint8_t *p, *end;
    int has_prefixed; /* strings beginning with `has_`: each is one `"has_` in the bytes */
} Scanner;

static inline int peek(Scanner *s) { return s->p < s->end ? *s->p : -1; }

/* Spaces between tokens (the only whitespace plain bytes have); then the next byte, as `peek`. */
static inline int next(Scanner *s) {
    while (s->p < s->end && *s->p == ' ') s->p++;
    return peek(s);
}

/* A string's contents (the bytes are plain: no escape can hide its end). */
static int scan_string(Scanner *s, const uint8_t **start, Py_ssize_t *len) {
    if (next(s) != '"') return 0;
    const uint8_t *open = ++s->p;
    const uint8_t *close = memchr(open, '"', (size_t)(s->end - open));
    if (close == NULL) return 0;
    *start = open;
    *len = close - open;
    if (*len >= 4 && memcmp(open, "has_", 4) == 0) s->has_prefixed++;
    s->p = close + 1;
    return 1;
}

static int scan_literal(Scanner *s, const char *word, size_t n) {
    next(s);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0) return 0;
    s->p += n;
    return 1;
}

static inline int is_digit(int c) { return c >= '0' && c <= '9'; }

/* A JSON number (RFC 8259); `integer` is set when it has no fraction and no exponent. At most 40 bytes:
 * longer ones go to the Python fold. */
static int scan_number(Scanner *s, int *integer) {
    next(s);
    const uint8_t *start = s->p;
    if (peek(s) == '-') s->p++;
    if (peek(s) == '0')
        s->p++;
    else if (is_digit(peek(s)))
        while (is_digit(peek(s))) s->p++;
    else
        return 0;
    *integer = 1;
    if (peek(s) == '.') {
        *integer = 0;
        s->p++;
        if (!is_digit(peek(s))) return 0;
        while (is_digit(peek(s))) s->p++;
    }
    if (peek(s) == 'e' || peek(s) == 'E') {
        *integer = 0;
        s->p++;
        if (peek(s) == '+' || peek(s) == '-') s->p++;
        if (!is_digit(peek(s))) return 0;
        while (is_digit(peek(s))) s->p++;
    }
    return s->p - start <= 40;
}

/* The start of an object or an array (`open`): 1 with members to read, 0 when empty (read), -1 otherwise. */
static int opened(Scanner *s, int open) {
    if (next(s) != open) return -1;
    s->p++;
    if (next(s) != (open == '{' ? '}' : ']')) return 1;
    s->p++;
    return 0;
}

/* After a member: 1 when a comma leads to the next, 0 when `close` ends the container (read), -1 otherwise. */
static int after_member(Scanner *s, int close) {
    int c = next(s);
    if (c != ',' && c != close) return -1;
    s->p++;
    return c == ',';
}

/* An object's next key and its colon. */
static int scan_key(Scanner *s, const uint8_t **name, Py_ssize_t *len) {
    if (!scan_string(s, name, len) || next(s) != ':') return 0;
    s->p++;
    return 1;
}

/* Any JSON value, checked and passed over. */
static int skip_value(Scanner *s, int depth) {
    const uint8_t *text;
    Py_ssize_t len;
    int integer;
    switch (next(s)) {
    case '"':
        return scan_string(s, &text, &len);
    case 't':
        return scan_literal(s, "true", 4);
    case 'f':
        return scan_literal(s, "false", 5);
    case 'n':
        return scan_literal(s, "null", 4);
    case '{':
    case '[': {
        int open = next(s), close = open == '{' ? '}' : ']';
        if (depth >= MAX_DEPTH) return 0;
        int more = opened(s, open);
        while (more > 0) {
            if ((close == '}' && !scan_key(s, &text, &len)) || !skip_value(s, depth + 1)) return 0;
            more = after_member(s, close);
        }
        return more == 0;
    }
    default:
        return scan_number(s, &integer);
    }
}

/* ---- the fold ---- */

static inline long long floor_div(long long a, long long b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

/* The keyed states of the last days met, for the hashes of one kind of identifier (`Keys.day_key`). */
typedef struct {
    const char *what;
    long long days[KEY_DAYS];
    KeyedBlake2b states[KEY_DAYS];
    int count;
} DayKeys;

typedef struct {
    uint64_t hash;
    uint8_t *signature;
    Py_ssize_t length;
    PyObject *dims;    /* the projection's dimensions; dims[0] is the kind */
    PyObject *reasons; /* the reasons (pipeline.rejections.Reason) of the values it replaced: a note each */
    PyObject *key;     /* (window_start, dims) of the last window met, reused while it lasts */
    Py_hash_t key_hash;
    long long window;
} Entry;

/* An installation's hash on a day, as the int the rollup's sets hold (pseudonyms repeat: one BLAKE2b each). */
typedef struct {
    long long day;
    Py_ssize_t len;
    PyObject *hash; /* NULL: a free slot */
    uint8_t text[MAX_CACHED_INSTALLATION];
} CachedInstallation;

typedef struct {
    PyObject_HEAD
    long long window_seconds, allowed_lateness, future_tolerance;
    Py_ssize_t max_event_bytes;
    Py_ssize_t max_installation;
    PyObject *day_key; /* (what, day) -> the key of that day's hashes of `what` (`Keys.day_key`) */
    DayKeys sessions, installations;
    CachedInstallation *installation_cache; /* direct-mapped by (pseudonym, day) */
    Slot slots[MAX_SLOTS];
    int slot_count;
    int first_flag, flag_count; /* the contract's flags are slots [first_flag, first_flag + flag_count) */
    Slot kinds[MAX_KINDS];      /* the kinds counted here; `type` 1 for a run kind (a session required) */
    int kind_count;
    PyObject *names;            /* owns the names the slots and kinds point into */
    uint32_t *table;  /* signature hash -> 1 + the entry's index in `learned`; 0: free */
    Entry *learned;   /* dense, grown as signatures are learned */
    Py_ssize_t entries, capacity, table_bytes;
    PyTypeObject *hashes_type; /* the type of the sessions' hash arrays, and its `append`, called directly */
    PyObject *append;
    /* the signature of the event where the last fold stopped, when only the table missed it */
    uint8_t pending[MAX_SIGNATURE];
    Py_ssize_t pending_length;
    uint64_t pending_hash;
    uint64_t counted, learned_total;
} Fold;

static PyObject *str_value, *str_timestamp, *str_append;
static unsigned long long counted_in_process; /* by every Fold: `kern_events_folded_natively_total` */

static uint64_t signature_hash(const uint8_t *p, Py_ssize_t n) {
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ (uint64_t)n;
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x;
        memcpy(&x, p + i, 8);
        h = (h ^ x) * 0xff51afd7ed558ccdULL;
        h ^= h >> 32;
    }
    uint64_t tail = 0;
    memcpy(&tail, p + i, (size_t)(n - i));
    h = (h ^ tail) * 0xc4ceb9fe1a85ec53ULL;
    return h ^ (h >> 29);
}

static void clear_table(Fold *f) {
    for (Py_ssize_t i = 0; i < f->entries; i++) {
        Entry *e = &f->learned[i];
        PyMem_Free(e->signature);
        Py_CLEAR(e->dims);
        Py_CLEAR(e->reasons);
        Py_CLEAR(e->key);
    }
    memset(f->table, 0, TABLE_SLOTS * sizeof *f->table);
    f->entries = f->table_bytes = 0;
}

/* The entry of a signature; NULL when absent. `*free_slot` gets where its index would go (NULL: every probe
 * taken, so it is not learned). */
static Entry *lookup(Fold *f, const uint8_t *sig, Py_ssize_t n, uint64_t hash, uint32_t **free_slot) {
    *free_slot = NULL;
    for (int probe = 0; probe < MAX_PROBES; probe++) {
        uint32_t *slot = &f->table[(hash + (uint64_t)probe) & (TABLE_SLOTS - 1)];
        if (*slot == 0) {
            *free_slot = slot;
            return NULL;
        }
        Entry *e = &f->learned[*slot - 1];
        if (e->hash == hash && e->length == n && memcmp(e->signature, sig, (size_t)n) == 0) return e;
    }
    return NULL;
}

static int find_slot(Fold *f, const uint8_t *name, Py_ssize_t len, int hint) {
    if (hint < f->slot_count && f->slots[hint].len == len && memcmp(f->slots[hint].name, name, (size_t)len) == 0)
        return hint;
    for (int i = 0; i < f->slot_count; i++)
        if (f->slots[i].len == len && memcmp(f->slots[i].name, name, (size_t)len) == 0) return i;
    return -1;
}

/* The keyed state of `day` for `keys` (asked of `Keys.day_key` once per day met). */
static const KeyedBlake2b *day_state(Fold *f, DayKeys *keys, long long day) {
    for (int i = 0; i < keys->count; i++)
        if (keys->days[i] == day) return &keys->states[i];
    PyObject *key = PyObject_CallFunction(f->day_key, "yL", keys->what, day);
    if (key == NULL) return NULL;
    if (!PyBytes_Check(key) || PyBytes_GET_SIZE(key) == 0 || PyBytes_GET_SIZE(key) > 64) {
        Py_DECREF(key);
        PyErr_SetString(PyExc_ValueError, "day_key must return 1 to 64 bytes");
        return NULL;
    }
    int i = keys->count < KEY_DAYS ? keys->count++ : (int)((day % KEY_DAYS + KEY_DAYS) % KEY_DAYS);
    keys->days[i] = day;
    blake2b_keyed(&keys->states[i], (const uint8_t *)PyBytes_AS_STRING(key), (size_t)PyBytes_GET_SIZE(key));
    Py_DECREF(key);
    return &keys->states[i];
}

/* The keyed hash of an identifier on its window's day, as `Keys.session` and `Keys.installation` give it. */
static int hash_of_day(Fold *f, DayKeys *keys, long long window, const uint8_t *text, Py_ssize_t len, uint64_t *hash) {
    const KeyedBlake2b *keyed = day_state(f, keys, floor_div(window, 86400));
    if (keyed == NULL) return -1;
    *hash = blake2b_digest(keyed, text, (size_t)len);
    return 0;
}

/* The int of an installation's keyed hash on its window's day (a new reference), from the cache when met. */
static PyObject *installation_hash(Fold *f, long long window, const uint8_t *text, Py_ssize_t len) {
    long long day = floor_div(window, 86400);
    CachedInstallation *cached = NULL;
    if (len <= MAX_CACHED_INSTALLATION) {
        cached = &f->installation_cache[(signature_hash(text, len) ^ (uint64_t)day) & (INSTALLATION_SLOTS - 1)];
        if (cached->hash != NULL && cached->day == day && cached->len == len && memcmp(cached->text, text, (size_t)len) == 0)
            return Py_NewRef(cached->hash);
    }
    uint64_t hash;
    if (hash_of_day(f, &f->installations, window, text, len, &hash) < 0) return NULL;
    PyObject *value = PyLong_FromUnsignedLongLong(hash);
    if (value != NULL && cached != NULL) {
        Py_XSETREF(cached->hash, Py_NewRef(value));
        cached->day = day;
        cached->len = len;
        memcpy(cached->text, text, (size_t)len);
    }
    return value;
}

typedef struct {
    const uint8_t *kind, *session, *os_id, *installation, *timestamp;
    Py_ssize_t kind_len, session_len, os_id_len, installation_len, timestamp_len;
} Envelope;

typedef struct {
    uint8_t *p;
    uint8_t *end;
} Writer;

static inline int put(Writer *w, const void *bytes, Py_ssize_t n) {
    if (w->end - w->p < n) return 0;
    memcpy(w->p, bytes, (size_t)n);
    w->p += n;
    return 1;
}

/* A typed value (`type`, or null) into the signature: a tag and its bytes. */
static int typed_value(Scanner *s, int type, Writer *w) {
    next(s);
    const uint8_t *start = s->p;
    const uint8_t *text;
    Py_ssize_t len;
    int integer;
    if (scan_literal(s, "null", 4)) return put(w, "n", 1);
    switch (type) {
    case T_STRING:
        if (!scan_string(s, &text, &len)) return 0;
        break;
    case T_INT:
        if (!scan_number(s, &integer) || !integer || s->p - start > 18) return 0; /* an int64, surely */
        break;
    case T_BOOL:
        if (!scan_literal(s, "true", 4) && !scan_literal(s, "false", 5)) return 0;
        break;
    case T_STRINGS:
        for (int more = opened(s, '['); more != 0; more = after_member(s, ']'))
            if (more < 0 || !scan_string(s, &text, &len)) return 0;
        break;
    case T_MODEL: /* an object whose keys are string or null: the model references' keys are all strings */
        for (int more = opened(s, '{'); more != 0; more = after_member(s, '}'))
            if (more < 0 || !scan_key(s, &text, &len) || (!scan_literal(s, "null", 4) && !scan_string(s, &text, &len)))
                return 0;
        break;
    default:
        return 0;
    }
    Py_ssize_t n = s->p - start;
    uint16_t n16 = (uint16_t)n;
    return n < 65536 && put(w, "v", 1) && put(w, &n16, 2) && put(w, start, n);
}

/* `data`: each typed field's value into the signature in slot order; `*flags_seen` the known flags present. */
static int scan_data(Fold *f, Scanner *s, Writer *w, int *flags_seen) {
    const uint8_t *values[MAX_SLOTS];
    Py_ssize_t lengths[MAX_SLOTS];
    uint64_t seen = 0;
    uint8_t buffer[MAX_SIGNATURE];
    Writer local = {buffer, buffer + sizeof buffer};
    const uint8_t *name;
    Py_ssize_t len;
    int hint = 0;
    *flags_seen = 0;
    for (int more = opened(s, '{'); more != 0; more = after_member(s, '}')) {
        if (more < 0 || !scan_key(s, &name, &len)) return 0;
        int slot = find_slot(f, name, len, hint);
        if (slot < 0) {
            if (len >= 4 && memcmp(name, "has_", 4) == 0) return 0; /* a flag the contract does not name */
            if (!skip_value(s, 2)) return 0;
            continue;
        }
        if (seen & (1ULL << slot)) return 0; /* a field twice */
        seen |= 1ULL << slot;
        values[slot] = local.p;
        if (!typed_value(s, f->slots[slot].type, &local)) return 0;
        lengths[slot] = local.p - values[slot];
        if (slot >= f->first_flag && slot < f->first_flag + f->flag_count) (*flags_seen)++;
        hint = slot + 1;
    }
    for (int slot = 0; slot < f->slot_count; slot++) {
        if (seen & (1ULL << slot)) {
            if (!put(w, values[slot], lengths[slot])) return 0;
        } else if (!put(w, "-", 1)) {
            return 0;
        }
    }
    return 1;
}

/* The envelope of a plain event, its signature into `w`: 1, or 0 when the Python fold must judge it. */
static int scan_event(Fold *f, const uint8_t *raw, Py_ssize_t n, Envelope *env, Writer *w) {
    Scanner s = {raw, raw + n, 0};
    const uint8_t *name, *text;
    Py_ssize_t len;
    int flags_seen = 0, seen_data = 0, seen_type = 0, seen_version = 0, seen_timestamp = 0;
    const uint8_t *version = NULL;
    Py_ssize_t version_len = -1;
    uint8_t data_signature[MAX_SIGNATURE];
    Writer data = {data_signature, data_signature + sizeof data_signature};
    memset(env, 0, sizeof *env);
    env->session_len = env->os_id_len = env->installation_len = -1;
    int more = opened(&s, '{'); /* an object with members: anything else is the Python fold's to judge */
    for (; more > 0; more = after_member(&s, '}')) {
        if (!scan_key(&s, &name, &len)) return 0;
        const uint8_t **into = NULL;
        Py_ssize_t *into_len = NULL;
        if (len == 4 && memcmp(name, "type", 4) == 0) {
            if (seen_type++ || !scan_string(&s, &env->kind, &env->kind_len)) return 0;
        } else if (len == 4 && memcmp(name, "data", 4) == 0) {
            if (seen_data++) return 0;
            if (scan_literal(&s, "null", 4)) {
                if (!put(&data, "N", 1)) return 0;
            } else if (!put(&data, "D", 1) || !scan_data(f, &s, &data, &flags_seen)) {
                return 0;
            }
        } else if (len == 9 && memcmp(name, "timestamp", 9) == 0) {
            int integer;
            if (seen_timestamp++) return 0;
            if (!scan_literal(&s, "null", 4)) {
                next(&s);
                env->timestamp = s.p;
                if (!scan_number(&s, &integer) || (integer && s.p - env->timestamp > 18)) return 0;
                env->timestamp_len = s.p - env->timestamp;
            }
        } else if (len == 11 && memcmp(name, "sdk_version", 11) == 0) {
            if (seen_version++) return 0;
            if (!scan_literal(&s, "null", 4) && !scan_string(&s, &version, &version_len)) return 0;
        } else {
            if (len == 10 && memcmp(name, "session_id", 10) == 0) {
                into = &env->session, into_len = &env->session_len;
            } else if (len == 5 && memcmp(name, "os_id", 5) == 0) {
                into = &env->os_id, into_len = &env->os_id_len;
            } else if (len == 12 && memcmp(name, "installation", 12) == 0) {
                into = &env->installation, into_len = &env->installation_len;
            }
            if (into == NULL) {
                if (!skip_value(&s, 1)) return 0;
            } else {
                if (*into != NULL || *into_len == -2) return 0; /* twice */
                if (scan_literal(&s, "null", 4)) {
                    *into_len = -2;
                } else if (!scan_string(&s, &text, &len)) {
                    return 0;
                } else {
                    *into = text;
                    *into_len = len;
                }
            }
        }
    }
    if (more != 0 || next(&s) != -1 || env->kind == NULL) return 0; /* trailing bytes; no kind (older launches) */
    if (s.has_prefixed != flags_seen) return 0;                       /* a `"has_` that is no known flag of `data` */
    if (env->installation != NULL && env->installation_len > f->max_installation) return 0;
    if (!seen_data && !put(&data, "N", 1)) return 0;
    uint16_t kind_len = (uint16_t)env->kind_len;
    uint16_t version_tag = version_len < 0 ? 0xffff : (uint16_t)version_len;
    return env->kind_len < 256 && put(w, &kind_len, 2) && put(w, env->kind, env->kind_len) &&
           put(w, &version_tag, 2) && (version == NULL || put(w, version, version_len)) &&
           put(w, data_signature, data.p - data_signature);
}

/* The mapping's value for `key`, made by the defaultdict's factory when absent (borrowed). */
static PyObject *item_of(PyObject *mapping, PyObject *key, Py_hash_t hash) {
    PyObject *found = _PyDict_GetItem_KnownHash(mapping, key, hash);
    if (found != NULL || PyErr_Occurred()) return found;
    found = PyObject_GetItem(mapping, key); /* __missing__ */
    if (found != NULL) Py_DECREF(found);    /* the mapping holds it now */
    return found;
}

static int count_note(PyObject *quality, PyObject *note) {
    PyObject *count = PyDict_GetItemWithError(quality, note);
    if (count == NULL && PyErr_Occurred()) return -1;
    long long n = count == NULL ? 0 : PyLong_AsLongLong(count);
    if (n == -1 && PyErr_Occurred()) return -1;
    PyObject *next = PyLong_FromLongLong(n + 1);
    if (next == NULL) return -1;
    int result = PyDict_SetItem(quality, note, next);
    Py_DECREF(next);
    return result;
}

/* Count one event under its entry: its session's hash, its installation, its notes. */
static int count_event(Fold *f, Entry *e, long long window, const Envelope *env, PyObject *sessions,
                       PyObject *installations, PyObject *quality) {
    uint64_t session_hash = 0; /* `NO_SESSION` */
    const uint8_t *session = env->session;
    Py_ssize_t session_len = env->session_len;
    if (session == NULL && env->os_id != NULL) session = env->os_id, session_len = env->os_id_len;
    if (session != NULL && hash_of_day(f, &f->sessions, window, session, session_len, &session_hash) < 0) return -1;
    if (e->key == NULL || e->window != window) {
        PyObject *key = Py_BuildValue("(LO)", window, e->dims);
        if (key == NULL) return -1;
        Py_hash_t key_hash = PyObject_Hash(key);
        if (key_hash == -1) {
            Py_DECREF(key);
            return -1;
        }
        Py_XSETREF(e->key, key);
        e->key_hash = key_hash;
        e->window = window;
    }
    PyObject *hashes = item_of(sessions, e->key, e->key_hash);
    if (hashes == NULL) return -1;
    if (f->append == NULL) {
        f->append = PyObject_GetAttr((PyObject *)Py_TYPE(hashes), str_append);
        if (f->append == NULL) return -1;
        f->hashes_type = (PyTypeObject *)Py_NewRef(Py_TYPE(hashes));
    }
    PyObject *hash = PyLong_FromUnsignedLongLong(session_hash);
    if (hash == NULL) return -1;
    PyObject *call[2] = {hashes, hash};
    PyObject *done = Py_TYPE(hashes) == f->hashes_type ? PyObject_Vectorcall(f->append, call, 2, NULL)
                                                        : PyObject_CallMethodOneArg(hashes, str_append, hash);
    Py_DECREF(hash);
    if (done == NULL) return -1;
    Py_DECREF(done);
    if (env->installation != NULL) {
        PyObject *seen = item_of(installations, e->key, e->key_hash);
        if (seen == NULL) return -1;
        PyObject *installation = installation_hash(f, window, env->installation, env->installation_len);
        if (installation == NULL) return -1;
        int added = PySet_Add(seen, installation);
        Py_DECREF(installation);
        if (added < 0) return -1;
    }
    Py_ssize_t notes = PyTuple_GET_SIZE(e->reasons);
    for (Py_ssize_t i = 0; i < notes; i++) {
        PyObject *note = Py_BuildValue("(LOO)", window, PyTuple_GET_ITEM(e->dims, 0), PyTuple_GET_ITEM(e->reasons, i));
        if (note == NULL) return -1;
        int counted = count_note(quality, note);
        Py_DECREF(note);
        if (counted < 0) return -1;
    }
    return 0;
}

/* Whether the fast path counts this kind (1 for a run kind, 0 for a launch), -1 when it does not. */
static int kind_of(const Fold *f, const Envelope *env) {
    for (int i = 0; i < f->kind_count; i++)
        if (f->kinds[i].len == env->kind_len && memcmp(f->kinds[i].name, env->kind, (size_t)env->kind_len) == 0)
            return f->kinds[i].type;
    return -1;
}

#define MIN_EPOCH_S 946684800.0  /* `_MIN_EPOCH_S` */
#define MAX_EPOCH_S 4102444800.0 /* `_MAX_EPOCH_S` */


/* The event's window, as `EventProjector._window_start` has it, in `*window`: 1; 0 when Python must judge
 * the event (a time it notes or rejects: out of range, in the future, late); -1 on an error. */
static int window_of(const Fold *f, const Envelope *env, long long record_ms, long long *window) {
    long long record_s = floor_div(record_ms, 1000);
    long long event_s = record_s;
    if (env->timestamp != NULL) {
        char text[48];
        memcpy(text, env->timestamp, (size_t)env->timestamp_len);
        text[env->timestamp_len] = 0;
        double seconds = PyOS_string_to_double(text, NULL, NULL); /* locale-free and correctly rounded */
        if (seconds == -1.0 && PyErr_Occurred()) return -1;
        if (seconds > 1e11) seconds /= 1000; /* milliseconds */
        if (!(seconds >= MIN_EPOCH_S && seconds < MAX_EPOCH_S)) return 0;
        event_s = (long long)seconds;
        if (event_s > record_s + f->future_tolerance || event_s < record_s - f->allowed_lateness) return 0;
    }
    *window = floor_div(event_s, f->window_seconds) * f->window_seconds;
    return 1;
}

/* Counts one event from its value's bytes: 1; 0 when the fast path stops at it; -1 on an error. Its record's
 * timestamp is `message.timestamp` for a Python record, else `record_ms` (read only once the signature is
 * known). */
static int fold_event(Fold *f, const uint8_t *raw, Py_ssize_t size, PyObject *message, long long record_ms,
                      PyObject *sessions, PyObject *installations, PyObject *quality) {
    uint8_t signature[MAX_SIGNATURE];
    Envelope env;
    Writer w = {signature, signature + sizeof signature};
    if (!plain_bytes(raw, (size_t)size) || !scan_event(f, raw, size, &env, &w)) return 0;
    int run_kind = kind_of(f, &env);
    if (run_kind < 0 || (run_kind && env.session == NULL)) return 0; /* a client report, an unknown kind; no session */
    Py_ssize_t length = w.p - signature;
    uint64_t hash = signature_hash(signature, length);
    uint32_t *free_slot;
    Entry *e = lookup(f, signature, length, hash, &free_slot);
    if (e == NULL) {
        memcpy(f->pending, signature, (size_t)length);
        f->pending_length = length;
        f->pending_hash = hash;
        return 0;
    }
    if (message != NULL) {
        PyObject *timestamp = PyObject_GetAttr(message, str_timestamp);
        if (timestamp == NULL) return -1;
        int exact = PyLong_CheckExact(timestamp);
        record_ms = exact ? PyLong_AsLongLong(timestamp) : -1;
        Py_DECREF(timestamp);
        if (PyErr_Occurred()) return -1;
        if (!exact) return 0;
    }
    long long window = 0;
    int timed = window_of(f, &env, record_ms, &window);
    if (timed <= 0) return timed;
    if (count_event(f, e, window, &env, sessions, installations, quality) < 0) return -1;
    f->counted++;
    counted_in_process++;
    return 1;
}

static PyObject *Fold_fold(Fold *f, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "fold(messages, start, sessions, installations, quality)");
        return NULL;
    }
    PyObject *messages = args[0], *sessions = args[2], *installations = args[3], *quality = args[4];
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred()) return NULL;
    int in_place = Py_TYPE(messages) == &RecordsType;
    if ((!in_place && !PyList_Check(messages)) || !PyDict_Check(sessions) || !PyDict_Check(installations) ||
        !PyDict_Check(quality)) {
        PyErr_SetString(PyExc_TypeError, "fold needs a list of records or Records, and the tally's three dicts");
        return NULL;
    }
    f->pending_length = 0;
    Py_ssize_t i = start;
    int folded = 1;
    if (in_place) { /* each value and timestamp read where the fetch holds it */
        const Records *records = (const Records *)messages;
        for (; i < records->count; i++) {
            RawRecord r;
            read_record(records, i, &r);
            folded = r.value != NULL && r.value_len <= f->max_event_bytes
                         ? fold_event(f, r.value, r.value_len, NULL, r.timestamp, sessions, installations, quality)
                         : 0;
            if (folded <= 0) break;
        }
    } else {
        for (; i < PyList_GET_SIZE(messages); i++) {
            PyObject *message = PyList_GET_ITEM(messages, i);
            PyObject *value = PyObject_GetAttr(message, str_value);
            if (value == NULL) return NULL;
            folded = PyBytes_Check(value) && PyBytes_GET_SIZE(value) <= f->max_event_bytes
                         ? fold_event(f, (const uint8_t *)PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value), message,
                                      0, sessions, installations, quality)
                         : 0;
            Py_DECREF(value);
            if (folded <= 0) break;
        }
    }
    return folded < 0 ? NULL : PyLong_FromSsize_t(i);
}

static PyObject *Fold_learn(Fold *f, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyTuple_Check(args[0]) || PyTuple_GET_SIZE(args[0]) == 0 ||
        !PyUnicode_Check(PyTuple_GET_ITEM(args[0], 0)) || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "learn(dims: tuple beginning with the kind, reasons: tuple)");
        return NULL;
    }
    if (f->pending_length == 0) Py_RETURN_FALSE;
    Py_ssize_t length = f->pending_length;
    f->pending_length = 0;
    if (f->entries >= MAX_ENTRIES || f->table_bytes + length > (Py_ssize_t)MAX_TABLE_BYTES) clear_table(f);
    uint32_t *free_slot;
    if (lookup(f, f->pending, length, f->pending_hash, &free_slot) != NULL || free_slot == NULL) Py_RETURN_FALSE;
    if (f->entries == f->capacity) {
        Py_ssize_t capacity = f->capacity ? f->capacity * 2 : 1024;
        Entry *grown = PyMem_Realloc(f->learned, (size_t)capacity * sizeof(Entry));
        if (grown == NULL) return PyErr_NoMemory();
        f->learned = grown, f->capacity = capacity;
    }
    uint8_t *copy = PyMem_Malloc((size_t)length);
    if (copy == NULL) return PyErr_NoMemory();
    memcpy(copy, f->pending, (size_t)length);
    f->learned[f->entries] = (Entry){
        .hash = f->pending_hash, .signature = copy, .length = length, .dims = Py_NewRef(args[0]),
        .reasons = Py_NewRef(args[1])};
    *free_slot = (uint32_t)++f->entries;
    f->table_bytes += length;
    f->learned_total++;
    Py_RETURN_TRUE;
}

/* Each name of `fields` as a slot (or a kind) of `type`, its bytes owned by `f->names`. */
static int add_names(Fold *f, PyObject *fields, int type, Slot *into, int *count, int limit) {
    PyObject *iterator = PyObject_GetIter(fields);
    if (iterator == NULL) return -1;
    PyObject *name;
    while ((name = PyIter_Next(iterator)) != NULL) {
        Py_ssize_t len;
        const char *utf8 = PyUnicode_Check(name) ? PyUnicode_AsUTF8AndSize(name, &len) : NULL;
        if (utf8 == NULL || *count >= limit || PyList_Append(f->names, name) < 0) {
            Py_DECREF(name);
            Py_DECREF(iterator);
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "too many names, or one not a str");
            return -1;
        }
        into[(*count)++] = (Slot){utf8, len, type};
        Py_DECREF(name);
    }
    Py_DECREF(iterator);
    return PyErr_Occurred() ? -1 : 0;
}

static void Fold_dealloc(Fold *f) {
    if (f->table != NULL) {
        clear_table(f);
        PyMem_Free(f->table);
    }
    PyMem_Free(f->learned);
    if (f->installation_cache != NULL) {
        for (int i = 0; i < INSTALLATION_SLOTS; i++) Py_XDECREF(f->installation_cache[i].hash);
        PyMem_Free(f->installation_cache);
    }
    Py_XDECREF(f->day_key);
    Py_XDECREF(f->names);
    Py_XDECREF(f->append);
    Py_XDECREF(f->hashes_type);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

static PyObject *Fold_stats(Fold *f, PyObject *unused) {
    return Py_BuildValue("{sKsKsnsn}", "counted", (unsigned long long)f->counted, "learned", (unsigned long long)f->learned_total,
                         "entries", f->entries, "bytes", f->table_bytes);
}

/* The UTF-8 bytes of `text` as `_digest` encodes them (surrogates passed): an ASCII str's own, else `*encoded`'s. */
static const uint8_t *utf8_of(PyObject *text, Py_ssize_t *len, PyObject **encoded) {
    *encoded = NULL;
    if (PyUnicode_IS_ASCII(text)) {
        *len = PyUnicode_GET_LENGTH(text);
        return (const uint8_t *)PyUnicode_DATA(text);
    }
    *encoded = PyUnicode_AsEncodedString(text, "utf-8", "surrogatepass");
    if (*encoded == NULL) return NULL;
    *len = PyBytes_GET_SIZE(*encoded);
    return (const uint8_t *)PyBytes_AS_STRING(*encoded);
}

/* `Keys.session` and `Keys.installation` for the Python fold's events, with the day states (and the
 * installations' cache) the fast path keeps: no hasher object per event. */
static PyObject *hash_method(Fold *f, PyObject *const *args, Py_ssize_t nargs, int installation) {
    if (nargs != 2 || !PyLong_CheckExact(args[0]) || !PyUnicode_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "(window_start: int, text: str)");
        return NULL;
    }
    long long window = PyLong_AsLongLong(args[0]);
    if (window == -1 && PyErr_Occurred()) return NULL;
    PyObject *encoded;
    Py_ssize_t len;
    const uint8_t *text = utf8_of(args[1], &len, &encoded);
    if (text == NULL) return NULL;
    PyObject *hash = NULL;
    uint64_t digest;
    if (installation)
        hash = installation_hash(f, window, text, len);
    else if (hash_of_day(f, &f->sessions, window, text, len, &digest) == 0)
        hash = PyLong_FromUnsignedLongLong(digest);
    Py_XDECREF(encoded);
    return hash;
}

static PyObject *Fold_session(Fold *f, PyObject *const *args, Py_ssize_t nargs) { return hash_method(f, args, nargs, 0); }

static PyObject *Fold_installation(Fold *f, PyObject *const *args, Py_ssize_t nargs) {
    return hash_method(f, args, nargs, 1);
}

/* Whether the last fold stopped at an event it checked in full (plain bytes, one JSON object, every known
 * field once with its type, every `"has_` a known flag of `data`) whose signature only it has not learned. */
static PyObject *Fold_checked(Fold *f, PyObject *unused) { return PyBool_FromLong(f->pending_length > 0); }

static PyMethodDef Fold_methods[] = {
    {"fold", (PyCFunction)(void (*)(void))Fold_fold, METH_FASTCALL,
     "fold(messages, start, sessions, installations, quality) -> the index of the first event not counted"},
    {"learn", (PyCFunction)(void (*)(void))Fold_learn, METH_FASTCALL,
     "learn(dims, reasons): the projection of the event where the last fold stopped, for its signature"},
    {"session", (PyCFunction)(void (*)(void))Fold_session, METH_FASTCALL,
     "session(window_start, session) -> its keyed hash on that day, as Keys.session"},
    {"installation", (PyCFunction)(void (*)(void))Fold_installation, METH_FASTCALL,
     "installation(window_start, pseudonym) -> its keyed hash on that day, as Keys.installation"},
    {"checked", (PyCFunction)Fold_checked, METH_NOARGS,
     "checked() -> whether the event where the last fold stopped was checked in full, its signature unknown"},
    {"stats", (PyCFunction)Fold_stats, METH_NOARGS, "events counted, signatures learned, entries and their bytes"},
    {NULL}};

static PyTypeObject FoldType;

#define FIELD_LISTS 5

/* Fold(window_seconds, allowed_lateness, future_tolerance, max_event_bytes, max_installation, day_key,
 * run_kinds, other_kinds, strings, ints, flags, models, string_lists): the kinds the fast path counts (a run
 * kind requires a session); the field lists name `data`'s typed fields by their JSON type. */
static PyObject *Fold_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    long long window_seconds, allowed_lateness, future_tolerance;
    Py_ssize_t max_event_bytes, max_installation;
    PyObject *day_key, *run_kinds, *other_kinds, *lists[FIELD_LISTS];
    if (!PyArg_ParseTuple(args, "LLLnnOOOOOOOO", &window_seconds, &allowed_lateness, &future_tolerance,
                          &max_event_bytes, &max_installation, &day_key, &run_kinds, &other_kinds, &lists[0],
                          &lists[1], &lists[2], &lists[3], &lists[4]))
        return NULL;
    if (window_seconds <= 0 || !PyCallable_Check(day_key)) {
        PyErr_SetString(PyExc_ValueError, "a positive window and a callable day_key");
        return NULL;
    }
    Fold *f = (Fold *)type->tp_alloc(type, 0);
    if (f == NULL) return NULL;
    f->window_seconds = window_seconds;
    f->allowed_lateness = allowed_lateness;
    f->future_tolerance = future_tolerance;
    f->max_event_bytes = max_event_bytes;
    f->max_installation = max_installation;
    f->day_key = Py_NewRef(day_key);
    f->sessions.what = "sessions";
    f->installations.what = "installations";
    f->table = PyMem_Calloc(TABLE_SLOTS, sizeof *f->table);
    f->installation_cache = PyMem_Calloc(INSTALLATION_SLOTS, sizeof *f->installation_cache);
    f->names = PyList_New(0);
    if (f->table == NULL || f->installation_cache == NULL || f->names == NULL) {
        Py_DECREF(f);
        return PyErr_NoMemory();
    }
    if (add_names(f, run_kinds, 1, f->kinds, &f->kind_count, MAX_KINDS) < 0 ||
        add_names(f, other_kinds, 0, f->kinds, &f->kind_count, MAX_KINDS) < 0) {
        Py_DECREF(f);
        return NULL;
    }
    static const int types[FIELD_LISTS] = {T_STRING, T_INT, T_BOOL, T_MODEL, T_STRINGS};
    for (int i = 0; i < FIELD_LISTS; i++) {
        if (types[i] == T_BOOL) f->first_flag = f->slot_count;
        if (add_names(f, lists[i], types[i], f->slots, &f->slot_count, MAX_SLOTS) < 0) {
            Py_DECREF(f);
            return NULL;
        }
        if (types[i] == T_BOOL) f->flag_count = f->slot_count - f->first_flag;
    }
    return (PyObject *)f;
}

static PyTypeObject FoldType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pipeline._fold.Fold",
    .tp_basicsize = sizeof(Fold),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The fold's fast path for the events whose projection it has learned (see fold.c).",
    .tp_new = Fold_new,
    .tp_dealloc = (destructor)Fold_dealloc,
    .tp_methods = Fold_methods,
};

static PyObject *counted(PyObject *module, PyObject *unused) { return PyLong_FromUnsignedLongLong(counted_in_process); }

#define RELEASE_GIL_FROM 65536 /* hashes: ~5 ms of work */

/* Writes `v` in decimal at `out`; returns the end. */
static char *write_decimal(char *out, uint64_t v) {
    char digits[20];
    int n = 0;
    do digits[n++] = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    while (n) *out++ = digits[--n];
    return out;
}

/* distinct_json(hashes) -> bytes: the distinct values of a buffer of unsigned 64-bit session hashes, in order
 * of first sight and without 0 (`NO_SESSION`), as a JSON array: the bytes `msgspec.json.encode` gives the list
 * of `dict.fromkeys(hashes)` without 0, in half the time. A long array is done without the GIL, so that the
 * ClickHouse thread's encoding of a flush's sessions (one hash per event in the worst case) does not hold up
 * the fold; a short one keeps it (taking the GIL back waits up to the interpreter's switch interval, 5 ms).
 * Memory: 16 bytes per hash for the set, at most 21 per hash for the bytes. */
static PyObject *distinct_json(PyObject *module, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if (view.itemsize != 8 || view.format == NULL || strcmp(view.format, "Q") != 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_TypeError, "distinct_json needs unsigned 64-bit values (an array of typecode 'Q')");
        return NULL;
    }
    Py_ssize_t n = view.len / 8;
    size_t capacity = 16;
    while (capacity < (size_t)n * 2) capacity <<= 1;
    uint64_t *set = PyMem_RawCalloc(capacity, sizeof *set); /* 0 marks a free slot: 0 is never kept */
    PyObject *out = PyBytes_FromStringAndSize(NULL, 2 + 21 * n);
    if (set == NULL || out == NULL) {
        PyMem_RawFree(set);
        Py_XDECREF(out);
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    const uint8_t *values = view.buf;
    char *start = PyBytes_AS_STRING(out), *p = start;
    PyThreadState *released = n >= RELEASE_GIL_FROM ? PyEval_SaveThread() : NULL;
    *p++ = '[';
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t v;
        memcpy(&v, values + 8 * i, 8);
        if (v == 0) continue;
        size_t slot = (size_t)((v * 0x9e3779b97f4a7c15ULL) >> 32) & (capacity - 1);
        while (set[slot] != 0 && set[slot] != v) slot = (slot + 1) & (capacity - 1);
        if (set[slot] == v) continue;
        set[slot] = v;
        if (p - start > 1) *p++ = ',';
        p = write_decimal(p, v);
    }
    *p++ = ']';
    if (released != NULL) PyEval_RestoreThread(released);
    PyMem_RawFree(set);
    PyBuffer_Release(&view);
    if (_PyBytes_Resize(&out, p - start) < 0) return NULL;
    return out;
}

static PyMethodDef module_methods[] = {
    {"counted", counted, METH_NOARGS, "counted() -> the events every Fold of this process has counted"},
    {"distinct_json", distinct_json, METH_O,
     "distinct_json(hashes) -> the distinct non-zero hashes in order of first sight, as a JSON array"},
    {NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "pipeline._fold", .m_size = -1, .m_methods = module_methods};

PyMODINIT_FUNC PyInit__fold(void) {
    str_value = PyUnicode_InternFromString("value");
    str_timestamp = PyUnicode_InternFromString("timestamp");
    str_append = PyUnicode_InternFromString("append");
    if (str_value == NULL || str_timestamp == NULL || str_append == NULL || PyType_Ready(&FoldType) < 0 ||
        PyType_Ready(&RecordsType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Fold", (PyObject *)&FoldType) < 0 ||
        PyModule_AddObjectRef(m, "Records", (PyObject *)&RecordsType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
