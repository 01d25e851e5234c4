/*
 * Records which code objects run while a memoized step's body runs.
 *
 * A C-level profile function (PyEval_SetProfile) costs a few nanoseconds per
 * call; a Python one (sys.setprofile) makes a call-heavy body about 7x slower.
 * Code objects are kept in an open-addressing table keyed by address, holding
 * a reference so an address is never reused while it is recorded.
 *
 * Python 3.12+ uses sys.monitoring instead (see observe.py): this module is
 * only built and used on 3.9-3.11.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <frameobject.h>

static PyObject **slots = NULL;
static Py_ssize_t capacity = 0;
static Py_ssize_t used = 0;
static PyObject *last_code = NULL;
static int active = 0;
/* handed to PyEval_SetProfile: sys.getprofile() returns it, so stop() can tell
 * whether someone (cProfile, a debugger) replaced us during the body */
static PyObject *marker = NULL;

static int table_init(Py_ssize_t cap) {
    slots = (PyObject **)PyMem_Calloc((size_t)cap, sizeof(PyObject *));
    if (slots == NULL) {
        return -1;
    }
    capacity = cap;
    used = 0;
    return 0;
}

static void table_clear(void) {
    if (slots != NULL) {
        for (Py_ssize_t i = 0; i < capacity; i++) {
            Py_XDECREF(slots[i]);
        }
        PyMem_Free(slots);
    }
    slots = NULL;
    capacity = 0;
    used = 0;
    last_code = NULL;
}

static size_t slot_of(PyObject *code, Py_ssize_t cap) {
    size_t h = ((size_t)code >> 4) * (size_t)11400714819323198485ull;
    return h & (size_t)(cap - 1);
}

static int table_grow(void) {
    PyObject **old = slots;
    Py_ssize_t old_cap = capacity;
    Py_ssize_t cap = capacity * 2;
    PyObject **fresh = (PyObject **)PyMem_Calloc((size_t)cap, sizeof(PyObject *));
    if (fresh == NULL) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < old_cap; i++) {
        if (old[i] != NULL) {
            size_t j = slot_of(old[i], cap);
            while (fresh[j] != NULL) {
                j = (j + 1) & (size_t)(cap - 1);
            }
            fresh[j] = old[i];
        }
    }
    PyMem_Free(old);
    slots = fresh;
    capacity = cap;
    return 0;
}

static void record(PyObject *code) {
    if (code == last_code || slots == NULL) {
        return;
    }
    size_t i = slot_of(code, capacity);
    while (slots[i] != NULL) {
        if (slots[i] == code) {
            last_code = code;
            return;
        }
        i = (i + 1) & (size_t)(capacity - 1);
    }
    Py_INCREF(code);
    slots[i] = code;
    used++;
    last_code = code;
    if (used * 2 > capacity) {
        table_grow();
    }
}

static int profile(PyObject *obj, PyFrameObject *frame, int what, PyObject *arg) {
    if (what == PyTrace_CALL && active) {
        PyCodeObject *code = PyFrame_GetCode(frame);
        record((PyObject *)code);
        Py_DECREF(code);
    }
    return 0;
}

static PyObject *tracer_start(PyObject *self, PyObject *noargs) {
    table_clear();
    if (table_init(1024) < 0) {
        return PyErr_NoMemory();
    }
    active = 1;
    PyEval_SetProfile(profile, marker);
    Py_RETURN_NONE;
}

/* for threads the body starts: threading.setprofile calls a Python hook in the
 * new thread, which calls this to switch the thread to the C profile function */
static PyObject *tracer_install_thread(PyObject *self, PyObject *noargs) {
    if (active) {
        PyEval_SetProfile(profile, marker);
    }
    Py_RETURN_NONE;
}

static PyObject *tracer_record(PyObject *self, PyObject *code) {
    if (active) {
        record(code);
    }
    Py_RETURN_NONE;
}

/* Stops recording in this thread and returns the recorded code objects.
 * intact is False when another profiler replaced ours during the body. */
static PyObject *tracer_stop(PyObject *self, PyObject *noargs) {
    PyObject *getprofile = NULL, *current = NULL;
    int intact = 0;
    PyObject *sys = PyImport_ImportModule("sys");
    if (sys != NULL) {
        getprofile = PyObject_GetAttrString(sys, "getprofile");
        Py_DECREF(sys);
    }
    if (getprofile != NULL) {
        current = PyObject_CallNoArgs(getprofile);
        Py_DECREF(getprofile);
    }
    if (current == NULL) {
        PyErr_Clear();
    } else {
        intact = current == marker;
        Py_DECREF(current);
    }
    active = 0;
    PyEval_SetProfile(NULL, NULL);
    PyObject *codes = PyList_New(0);
    if (codes == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < capacity; i++) {
        if (slots[i] != NULL && PyList_Append(codes, slots[i]) < 0) {
            Py_DECREF(codes);
            return NULL;
        }
    }
    table_clear();
    return Py_BuildValue("(NO)", codes, intact ? Py_True : Py_False);
}

static PyMethodDef methods[] = {
    {"start", tracer_start, METH_NOARGS, "Start recording code objects in this thread."},
    {"stop", tracer_stop, METH_NOARGS, "Stop; return (codes, intact)."},
    {"install_thread", tracer_install_thread, METH_NOARGS, "Record in the calling thread too."},
    {"record", tracer_record, METH_O, "Record one code object."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_tracer", "Records code objects run by a step body.", -1, methods,
};

PyMODINIT_FUNC PyInit__tracer(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    marker = PyUnicode_FromString("metaflow-memoize observer");
    Py_XINCREF(marker);
    if (marker == NULL || PyModule_AddObject(m, "MARKER", marker) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
