/* Whether every record batch of a fetched partition carries the CRC-32C of its bytes, with the CPU's
 * crc32 instruction (SSE4.2).
 *
 * aiokafka checks each batch with a table-driven software CRC-32C (5-6% of the worker's event loop,
 * profiled on 7 December); `intact` checks a whole fetch response's partition at once, and aiokafka's own
 * check runs only for one that it does not vouch for (`pipeline/kafka.py`): a mismatch, a batch of an older
 * format, or a CPU without the instruction. So a corrupt batch fails exactly where it failed before.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define BATCH_HEADER 61 /* a v2 batch's header, up to its record count */
#define LENGTH_END 12   /* base offset (8) and batch length (4): the length counts the bytes after them */
#define MAGIC_AT 16
#define CRC_AT 17
#define CRC_FROM 21 /* the CRC covers the attributes onwards */

static uint32_t be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }

#if defined(__x86_64__)
#include <nmmintrin.h>

__attribute__((target("sse4.2"))) static uint32_t crc32c(const uint8_t *p, size_t n) {
    uint64_t crc = 0xFFFFFFFFu;
    for (; n >= 8; p += 8, n -= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        crc = _mm_crc32_u64(crc, word);
    }
    uint32_t c = (uint32_t)crc;
    for (; n; p++, n--) c = _mm_crc32_u8(c, *p);
    return c ^ 0xFFFFFFFFu;
}

static int has_instruction(void) { return __builtin_cpu_supports("sse4.2"); }
#else
static uint32_t crc32c(const uint8_t *p, size_t n) { return 0; }
static int has_instruction(void) { return 0; }
#endif

static int instruction;

/* intact(buffer) -> True when every complete batch in the buffer is a v2 batch whose CRC matches; a
 * message of an older format, or a batch shorter than its header, is left to aiokafka. A trailing partial
 * batch (a fetch cut at its size limit) is not read by aiokafka either. */
static PyObject *intact(PyObject *module, PyObject *buffer) {
    if (!PyBytes_Check(buffer)) Py_RETURN_FALSE; /* not what this module knows: aiokafka checks */
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(buffer);
    Py_ssize_t size = PyBytes_GET_SIZE(buffer), at = 0;
    if (!instruction) Py_RETURN_FALSE;
    while (size - at >= LENGTH_END) {
        Py_ssize_t end = at + LENGTH_END + (Py_ssize_t)be32(p + at + 8);
        if (end > size) break; /* the fetch's last batch, cut at its size limit */
        if (end < at + BATCH_HEADER || p[at + MAGIC_AT] != 2 ||
            crc32c(p + at + CRC_FROM, (size_t)(end - at - CRC_FROM)) != be32(p + at + CRC_AT))
            Py_RETURN_FALSE;
        at = end;
    }
    Py_RETURN_TRUE;
}

static PyObject *crc(PyObject *module, PyObject *data) {
    Py_buffer view;
    if (!instruction) {
        PyErr_SetString(PyExc_RuntimeError, "this CPU has no crc32 instruction");
        return NULL;
    }
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return NULL;
    uint32_t value = crc32c(view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(value);
}

static PyMethodDef module_methods[] = {
    {"intact", intact, METH_O, "Whether every complete record batch in a fetched buffer has a matching CRC-32C."},
    {"crc32c", crc, METH_O, "The CRC-32C of a bytes-like object, by the CPU's instruction."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "pipeline._crc", .m_size = -1, .m_methods = module_methods};

PyMODINIT_FUNC PyInit__crc(void) {
    instruction = has_instruction();
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "HARDWARE", instruction) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
