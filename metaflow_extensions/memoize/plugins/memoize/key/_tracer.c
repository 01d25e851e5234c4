/*
 * Records which code objects run while a memoized step's body runs.
 *
 * Two recorders share one table (observe.py picks one):
 *
 * - A frame-evaluation hook (PEP 523, _PyInterpreterState_SetEvalFrameFunc):
 *   every frame the interpreter evaluates (a call, a generator or coroutine
 *   resumed, a module run), in every thread, passes through it; it records the
 *   frame's code object and hands the frame to the default evaluator. Nothing
 *   else changes, so the cost is one table lookup per frame (on 3.11 also the
 *   loss of inlined Python-to-Python calls, which CPython turns off while a hook
 *   is set). Python 3.9, 3.10 and 3.11.4+ (before 3.11.4, BINARY_SUBSCR_GETITEM
 *   called a Python __getitem__ without the hook: CPython gh-104405).
 * - A C-level profile function (PyEval_SetProfile): the fallback. On 3.11 any
 *   profile function switches the whole eval loop to its tracing path (every
 *   instruction, not just calls), which is what made a call-heavy body 3.2x.
 *
 * Code objects are kept in an open-addressing table keyed by address, holding a
 * reference so an address is never reused while it is recorded.
 *
 * Python 3.12+ uses sys.monitoring instead (see observe.py): this module is
 * only built and used on 3.9-3.11.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <frameobject.h>

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
/* the layout of _PyInterpreterFrame (f_code), fixed within 3.11 */
#define Py_BUILD_CORE
#include <internal/pycore_frame.h>
#undef Py_BUILD_CORE
typedef struct _PyInterpreterFrame eval_frame_t;
#define HAVE_EVAL_HOOK 1
#elif PY_VERSION_HEX >= 0x03090000 && PY_VERSION_HEX < 0x030B0000
typedef PyFrameObject eval_frame_t;
#define HAVE_EVAL_HOOK 1
#endif

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

static PyObject *table_codes(void) {
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
    return codes;
}

#ifdef HAVE_EVAL_HOOK
static int hook_active = 0;

static PyObject *eval_hook(PyThreadState *tstate, eval_frame_t *frame, int throwflag) {
    record((PyObject *)frame->f_code);
    return _PyEval_EvalFrameDefault(tstate, frame, throwflag);
}

/* for tests: another frame-evaluation hook, as a JIT or a debugger would set */
static PyObject *other_hook(PyThreadState *tstate, eval_frame_t *frame, int throwflag) {
    return _PyEval_EvalFrameDefault(tstate, frame, throwflag);
}

static PyObject *tracer_hook_free(PyObject *self, PyObject *noargs) {
    PyInterpreterState *interp = PyThreadState_Get()->interp;
    return PyBool_FromLong(_PyInterpreterState_GetEvalFrameFunc(interp) == _PyEval_EvalFrameDefault);
}

/* Starts recording with the frame-evaluation hook; False when another hook is
 * installed (a JIT, a debugger's frame evaluator): the caller uses the profiler. */
static PyObject *tracer_hook_start(PyObject *self, PyObject *noargs) {
    PyInterpreterState *interp = PyThreadState_Get()->interp;
    if (_PyInterpreterState_GetEvalFrameFunc(interp) != _PyEval_EvalFrameDefault) {
        Py_RETURN_FALSE;
    }
    table_clear();
    if (table_init(1024) < 0) {
        return PyErr_NoMemory();
    }
    hook_active = 1;
    _PyInterpreterState_SetEvalFrameFunc(interp, eval_hook);
    Py_RETURN_TRUE;
}

/* Stops; returns (codes, intact). intact is False when another hook replaced
 * ours during the body (then that hook stays: it is not ours to remove). */
static PyObject *tracer_hook_stop(PyObject *self, PyObject *noargs) {
    PyInterpreterState *interp = PyThreadState_Get()->interp;
    int intact = hook_active && _PyInterpreterState_GetEvalFrameFunc(interp) == eval_hook;
    if (intact) {
        _PyInterpreterState_SetEvalFrameFunc(interp, _PyEval_EvalFrameDefault);
    }
    hook_active = 0;
    PyObject *codes = table_codes();
    if (codes == NULL) {
        return NULL;
    }
    table_clear();
    return Py_BuildValue("(NO)", codes, intact ? Py_True : Py_False);
}

static PyObject *tracer_replace_hook_for_tests(PyObject *self, PyObject *noargs) {
    _PyInterpreterState_SetEvalFrameFunc(PyThreadState_Get()->interp, other_hook);
    Py_RETURN_NONE;
}

static PyObject *tracer_reset_hook_for_tests(PyObject *self, PyObject *noargs) {
    _PyInterpreterState_SetEvalFrameFunc(PyThreadState_Get()->interp, _PyEval_EvalFrameDefault);
    Py_RETURN_NONE;
}
#endif

static PyMethodDef methods[] = {
#ifdef HAVE_EVAL_HOOK
    {"hook_free", tracer_hook_free, METH_NOARGS, "Whether no frame-evaluation hook is set."},
    {"hook_start", tracer_hook_start, METH_NOARGS, "Start recording with a frame-evaluation hook."},
    {"hook_stop", tracer_hook_stop, METH_NOARGS, "Stop the hook; return (codes, intact)."},
    {"_replace_hook_for_tests", tracer_replace_hook_for_tests, METH_NOARGS, "Tests only."},
    {"_reset_hook_for_tests", tracer_reset_hook_for_tests, METH_NOARGS, "Tests only."},
#endif
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
