/* The records of one fetched partition, read from the bytes of its record batches (`records.c`); the native
 * fold reads their values and timestamps in place (`fold.c`). */
#ifndef KERN_RECORDS_H
#define KERN_RECORDS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* One record batch's records section (decompressed when the batch was compressed). */
typedef struct {
    const uint8_t *bytes;
    Py_ssize_t length;
    long long base_offset, base_timestamp, max_timestamp;
    int log_append_time; /* every record's timestamp is the batch's max_timestamp */
} Segment;

/* Where a record starts: its batch and its position in the batch's records section. */
typedef struct {
    uint32_t segment, position;
} RecordSlot;

typedef struct {
    PyObject_HEAD
    PyObject *owners;      /* the bytes the segments point into: the fetch's, each decompressed batch's */
    PyObject *record_type; /* called (offset, timestamp, value, key, headers) for a record asked for by index */
    Segment *segments;
    Py_ssize_t segment_count;
    RecordSlot *slots;
    Py_ssize_t count;
    long long next_offset; /* where the next fetch starts: past the last complete batch */
} Records;

/* A record as read in place; `value` is NULL for a null value. */
typedef struct {
    long long offset, timestamp;
    const uint8_t *key, *value, *headers;
    Py_ssize_t key_len, value_len, headers_len;
    long long header_count;
} RawRecord;

extern PyTypeObject RecordsType;

/* The `i`th record (0 <= i < count), read in place: its bytes were checked when the batches were indexed. */
void read_record(const Records *records, Py_ssize_t i, RawRecord *out);

#endif
