/* Records(buffer, fetch_offset, decompress, record_type): the records of one fetched partition, read from the
 * bytes of its record batches (format v2) instead of one Python object per record (`pipeline/kafka.py`
 * hands them to the worker in place of aiokafka's records). The native fold reads each value and timestamp
 * in place (`fold.c`); a record asked for by index, slice or iteration (an event the Python fold takes, the
 * last record of a range) is made then, by `record_type(offset, timestamp, value, key, headers)`.
 *
 * What aiokafka's iteration yields, it holds: control batches left out, records before the fetch offset
 * left out, a trailing batch cut by the fetch size left for the next fetch (`next_offset`), a log-append
 * time stamped on every record of its batch, a compressed batch decompressed by `decompress(codec, data)`
 * (aiokafka's own codecs). Anything else (an older message format, a record whose bytes do not add up)
 * raises ValueError, and the caller leaves the partition's records to aiokafka, which raises where it
 * always has. The CRCs are checked before (`pipeline/native/crc.c`). Memory: 8 bytes per record indexed
 * (a record takes at least 7 of the fetch's bytes; up to twice that while the index grows, trimmed once
 * built) and the decompressed batches. */
#include "records.h"

#include <string.h>

#define BATCH_HEADER 61      /* bytes before a v2 batch's records */
#define LENGTH_PREFIX 12     /* base offset and batch length: a batch is this plus its length */
#define CONTROL_BATCH 0x20
#define LOG_APPEND_TIME 0x08
#define CODEC_MASK 0x07

static inline long long read_be64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
    return (long long)v;
}

static inline int32_t read_be32(const uint8_t *p) {
    return (int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3]);
}

/* a + b wrapping at 64 bits, as the broker's longs add: any bytes give a defined result (signed overflow is not). */
static inline long long wrapping_add(long long a, long long b) { return (long long)((uint64_t)a + (uint64_t)b); }

/* A zigzag varint of at most 10 bytes before `end`: 1 and `*value`, 0 when it runs past `end`. */
static inline int read_varint(const uint8_t **p, const uint8_t *end, long long *value) {
    uint64_t raw = 0;
    for (int shift = 0; shift < 64 && *p < end; shift += 7) {
        uint8_t byte = *(*p)++;
        raw |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) {
            *value = (long long)(raw >> 1) ^ -(long long)(raw & 1);
            return 1;
        }
    }
    return 0;
}

/* `length` bytes (or none for -1) at `*p` before `end`: 1, or 0 when they do not fit. */
static inline int read_bytes(const uint8_t **p, const uint8_t *end, const uint8_t **start, Py_ssize_t *length) {
    long long n;
    if (!read_varint(p, end, &n) || n < -1 || n > end - *p) return 0;
    *start = n < 0 ? NULL : *p;
    *length = (Py_ssize_t)n;
    if (n > 0) *p += n;
    return 1;
}

/* Whether `n` bytes are UTF-8 as Python's strict decoder takes it (no overlong form, surrogate or code point
 * past U+10FFFF): a header's name is made a str. */
static int valid_utf8(const uint8_t *s, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n;) {
        uint8_t c = s[i];
        int length = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
        if (length == 0 || length > n - i) return 0;
        for (int k = 1; k < length; k++)
            if ((s[i + k] & 0xC0) != 0x80) return 0;
        if ((c == 0xE0 && s[i + 1] < 0xA0) || (c == 0xED && s[i + 1] >= 0xA0) || (c == 0xF0 && s[i + 1] < 0x90) ||
            (c == 0xF4 && s[i + 1] >= 0x90))
            return 0;
        i += length;
    }
    return 1;
}

/* The record at `p` of `segment` into `out`; returns where the next record starts, NULL when its bytes do not
 * add up (its length, its fields, its headers, a header's name not UTF-8). */
static const uint8_t *parse_record(const Segment *segment, const uint8_t *p, RawRecord *out) {
    const uint8_t *end = segment->bytes + segment->length;
    long long length, timestamp_delta, offset_delta;
    if (!read_varint(&p, end, &length) || length < 1 || length > end - p) return NULL;
    const uint8_t *record_end = p + length;
    p++; /* the record's attributes: unused */
    if (!read_varint(&p, record_end, &timestamp_delta) || !read_varint(&p, record_end, &offset_delta) ||
        !read_bytes(&p, record_end, &out->key, &out->key_len) ||
        !read_bytes(&p, record_end, &out->value, &out->value_len) ||
        !read_varint(&p, record_end, &out->header_count) || out->header_count < 0)
        return NULL;
    out->headers = p;
    for (long long h = 0; h < out->header_count; h++) {
        const uint8_t *name, *value;
        Py_ssize_t name_len, value_len;
        if (!read_bytes(&p, record_end, &name, &name_len) || name == NULL || !valid_utf8(name, name_len) ||
            !read_bytes(&p, record_end, &value, &value_len))
            return NULL;
    }
    if (p != record_end) return NULL;
    out->headers_len = p - out->headers;
    out->offset = wrapping_add(segment->base_offset, offset_delta);
    out->timestamp = segment->log_append_time ? segment->max_timestamp : wrapping_add(segment->base_timestamp, timestamp_delta);
    return record_end;
}

void read_record(const Records *records, Py_ssize_t i, RawRecord *out) {
    const RecordSlot slot = records->slots[i];
    const Segment *segment = &records->segments[slot.segment];
    parse_record(segment, segment->bytes + slot.position, out);
}

static PyObject *record_object(Records *records, Py_ssize_t i) {
    RawRecord r;
    read_record(records, i, &r);
    PyObject *headers = PyList_New(0);
    const uint8_t *p = r.headers, *end = r.headers + r.headers_len;
    for (long long h = 0; headers != NULL && h < r.header_count; h++) {
        const uint8_t *name = NULL, *value = NULL;
        Py_ssize_t name_len = 0, value_len = 0;
        read_bytes(&p, end, &name, &name_len); /* checked when the batch was indexed */
        read_bytes(&p, end, &value, &value_len);
        PyObject *header = Py_BuildValue("(s#N)", (const char *)name, name_len,
                                         value == NULL ? Py_NewRef(Py_None)
                                                       : PyBytes_FromStringAndSize((const char *)value, value_len));
        if (header == NULL || PyList_Append(headers, header) < 0) Py_CLEAR(headers);
        Py_XDECREF(header);
    }
    if (headers == NULL) return NULL;
    PyObject *args[5] = {
        PyLong_FromLongLong(r.offset),
        PyLong_FromLongLong(r.timestamp),
        r.value == NULL ? Py_NewRef(Py_None) : PyBytes_FromStringAndSize((const char *)r.value, r.value_len),
        r.key == NULL ? Py_NewRef(Py_None) : PyBytes_FromStringAndSize((const char *)r.key, r.key_len),
        headers,
    };
    PyObject *record = NULL;
    if (args[0] != NULL && args[1] != NULL && args[2] != NULL && args[3] != NULL)
        record = PyObject_Vectorcall(records->record_type, args, 5, NULL);
    for (int a = 0; a < 5; a++) Py_XDECREF(args[a]);
    return record;
}

static int grow(void **array, Py_ssize_t *capacity, Py_ssize_t needed, size_t item) {
    if (needed <= *capacity) return 0;
    Py_ssize_t larger = *capacity ? *capacity * 2 : 256;
    while (larger < needed) larger *= 2;
    void *grown = PyMem_Realloc(*array, (size_t)larger * item);
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *array = grown, *capacity = larger;
    return 0;
}

static void malformed(const char *what, long long offset) {
    PyErr_Format(PyExc_ValueError, "%s (batch at offset %lld)", what, offset);
}

/* Adds the records section of the batch at `batch` (`size` bytes) as a segment, decompressed when the batch
 * is compressed (`owners` then holds the decompressed bytes); -1 on an error. */
static int add_segment(Records *r, Py_ssize_t *capacity, const uint8_t *batch, Py_ssize_t size, PyObject *decompress) {
    int attributes = (batch[21] << 8) | batch[22];
    Segment segment = {
        .bytes = batch + BATCH_HEADER,
        .length = size - BATCH_HEADER,
        .base_offset = read_be64(batch),
        .base_timestamp = read_be64(batch + 27),
        .max_timestamp = read_be64(batch + 35),
        .log_append_time = (attributes & LOG_APPEND_TIME) != 0,
    };
    if (attributes & CODEC_MASK) {
        PyObject *data = PyBytes_FromStringAndSize((const char *)segment.bytes, segment.length);
        PyObject *plain = data == NULL ? NULL : PyObject_CallFunction(decompress, "iO", attributes & CODEC_MASK, data);
        Py_XDECREF(data);
        if (plain == NULL) return -1;
        int kept = PyBytes_Check(plain) ? PyList_Append(r->owners, plain) : -1;
        if (kept == 0) {
            segment.bytes = (const uint8_t *)PyBytes_AS_STRING(plain);
            segment.length = PyBytes_GET_SIZE(plain);
        } else if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "decompress must return bytes");
        }
        Py_DECREF(plain);
        if (kept < 0) return -1;
    }
    if (segment.length > UINT32_MAX || r->segment_count >= UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "a batch too large to index");
        return -1;
    }
    if (grow((void **)&r->segments, capacity, r->segment_count + 1, sizeof(Segment)) < 0) return -1;
    r->segments[r->segment_count++] = segment;
    return 0;
}

static PyObject *Records_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    PyObject *buffer, *decompress, *record_type;
    long long fetch_offset;
    if (!PyArg_ParseTuple(args, "SLOO", &buffer, &fetch_offset, &decompress, &record_type)) return NULL;
    Records *r = (Records *)type->tp_alloc(type, 0);
    if (r == NULL) return NULL;
    r->owners = PyList_New(0);
    r->record_type = Py_NewRef(record_type);
    if (r->owners == NULL || PyList_Append(r->owners, buffer) < 0) goto fail;
    const uint8_t *bytes = (const uint8_t *)PyBytes_AS_STRING(buffer);
    Py_ssize_t length = PyBytes_GET_SIZE(buffer), position = 0, segments_capacity = 0, slots_capacity = 0;
    long long next = fetch_offset;
    while (length - position >= LENGTH_PREFIX) { /* as aiokafka's MemoryRecords finds its batches */
        const uint8_t *batch = bytes + position;
        Py_ssize_t size = LENGTH_PREFIX + (Py_ssize_t)read_be32(batch + 8);
        if (size > length - position) break; /* cut by the fetch size: the next fetch has it */
        long long base_offset = read_be64(batch);
        if (size < BATCH_HEADER || batch[16] != 2) { /* an older format's message can be shorter */
            malformed("not a record batch of message format v2", base_offset);
            goto fail;
        }
        position += size;
        long long batch_next = wrapping_add(base_offset, (long long)read_be32(batch + 23) + 1);
        int32_t count = read_be32(batch + 57);
        if ((((batch[21] << 8) | batch[22]) & CONTROL_BATCH) == 0) {
            if (add_segment(r, &segments_capacity, batch, size, decompress) < 0) goto fail;
            const Segment *segment = &r->segments[r->segment_count - 1];
            const uint8_t *p = segment->bytes, *end = segment->bytes + segment->length;
            for (int32_t k = 0; k < count; k++) {
                RawRecord record;
                const uint8_t *after = p < end ? parse_record(segment, p, &record) : NULL;
                if (after == NULL) {
                    malformed("a record whose bytes do not add up", base_offset);
                    goto fail;
                }
                if (record.offset >= next) {
                    if (grow((void **)&r->slots, &slots_capacity, r->count + 1, sizeof(RecordSlot)) < 0) goto fail;
                    r->slots[r->count++] = (RecordSlot){(uint32_t)(r->segment_count - 1), (uint32_t)(p - segment->bytes)};
                    next = wrapping_add(record.offset, 1);
                }
                p = after;
            }
            if (p != end) {
                malformed("bytes left after the batch's records", base_offset);
                goto fail;
            }
        }
        next = batch_next; /* as aiokafka has it after each batch, even one wholly before the fetch offset */
    }
    if (r->count && r->count < slots_capacity) { /* the index grew by doubling: keep 8 bytes per record */
        RecordSlot *trimmed = PyMem_Realloc(r->slots, (size_t)r->count * sizeof(RecordSlot));
        if (trimmed != NULL) r->slots = trimmed;
    }
    r->next_offset = next;
    return (PyObject *)r;
fail:
    Py_DECREF(r);
    return NULL;
}

static void Records_dealloc(Records *r) {
    PyMem_Free(r->segments);
    PyMem_Free(r->slots);
    Py_XDECREF(r->owners);
    Py_XDECREF(r->record_type);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static Py_ssize_t Records_length(Records *r) { return r->count; }

static PyObject *Records_item(Records *r, Py_ssize_t i) {
    if (i < 0 || i >= r->count) {
        PyErr_SetString(PyExc_IndexError, "record index out of range");
        return NULL;
    }
    return record_object(r, i);
}

/* The records from `start` to `stop`: the same bytes, the slots copied. */
static PyObject *Records_range(Records *r, Py_ssize_t start, Py_ssize_t stop) {
    Records *part = (Records *)RecordsType.tp_alloc(&RecordsType, 0);
    if (part == NULL) return NULL;
    part->owners = Py_NewRef(r->owners);
    part->record_type = Py_NewRef(r->record_type);
    part->next_offset = r->next_offset;
    part->segments = PyMem_Malloc((size_t)(r->segment_count ? r->segment_count : 1) * sizeof(Segment));
    part->slots = PyMem_Malloc((size_t)(stop > start ? stop - start : 1) * sizeof(RecordSlot));
    if (part->segments == NULL || part->slots == NULL) {
        Py_DECREF(part);
        return PyErr_NoMemory();
    }
    memcpy(part->segments, r->segments, (size_t)r->segment_count * sizeof(Segment));
    part->segment_count = r->segment_count;
    if (stop > start) memcpy(part->slots, r->slots + start, (size_t)(stop - start) * sizeof(RecordSlot));
    part->count = stop > start ? stop - start : 0;
    return (PyObject *)part;
}

static PyObject *Records_subscript(Records *r, PyObject *key) {
    if (PyIndex_Check(key)) {
        Py_ssize_t i = PyNumber_AsSsize_t(key, PyExc_IndexError);
        if (i == -1 && PyErr_Occurred()) return NULL;
        return Records_item(r, i < 0 ? i + r->count : i);
    }
    if (PySlice_Check(key)) {
        Py_ssize_t start, stop, step;
        if (PySlice_Unpack(key, &start, &stop, &step) < 0) return NULL;
        PySlice_AdjustIndices(r->count, &start, &stop, step);
        if (step != 1) {
            PyErr_SetString(PyExc_TypeError, "records are sliced with a step of 1");
            return NULL;
        }
        return Records_range(r, start, stop);
    }
    PyErr_SetString(PyExc_TypeError, "records are indexed by an int or a slice");
    return NULL;
}

static PyObject *Records_next_offset(Records *r, void *unused) { return PyLong_FromLongLong(r->next_offset); }

static PySequenceMethods Records_as_sequence = {
    .sq_length = (lenfunc)Records_length,
    .sq_item = (ssizeargfunc)Records_item,
};

static PyMappingMethods Records_as_mapping = {
    .mp_length = (lenfunc)Records_length,
    .mp_subscript = (binaryfunc)Records_subscript,
};

static PyGetSetDef Records_getset[] = {
    {"next_offset", (getter)Records_next_offset, NULL, "where the next fetch starts: past the last complete batch"},
    {NULL}};

PyTypeObject RecordsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pipeline._fold.Records",
    .tp_basicsize = sizeof(Records),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_SEQUENCE,
    .tp_doc = "The records of one fetched partition, read from its record batches' bytes (see records.c).",
    .tp_new = Records_new,
    .tp_dealloc = (destructor)Records_dealloc,
    .tp_as_sequence = &Records_as_sequence,
    .tp_as_mapping = &Records_as_mapping,
    .tp_getset = Records_getset,
};
