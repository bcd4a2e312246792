/*
 * filemap._filemap: libfilemap for Python. A Mapping is an open object and
 * its mapping, and its buffer is that mapping: memoryview(m) and
 * numpy.frombuffer(m) are the object's pages, read in as they are touched,
 * with no copy. Python 3.11 gives only an extension type the buffer
 * protocol, hence C.
 *
 * libfilemap is compiled into this module (the build exports nothing but
 * PyInit__filemap), so the wheel needs no libfilemap.so. The private
 * handler is the `filemap` executable found as libfilemap finds it:
 * $FILEMAP_EXECUTABLE, else next to this module, else on PATH.
 *
 * The GIL is released around every libfilemap call, which may wait for a
 * remote store or a handler's start. So a Mapping counts the calls running
 * without the GIL (busy), and a close that comes meanwhile from another
 * thread is left to the last of them; and it counts the buffers it has
 * exported, while which it refuses to close, as mmap.mmap does: a
 * memoryview of an unmapped range would read whatever is mapped there next.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <string.h>

#include "filemap.h"

typedef struct {
	PyTypeObject *mapping_type;
	PyObject *fault_error;
} module_state;

typedef struct {
	PyObject_HEAD
	filemap_t *m;       /* NULL once closed */
	int copy_on_write;  /* the buffer is writable, as a MAP_PRIVATE mapping */
	Py_ssize_t exports; /* buffers exported */
	int busy;           /* calls running without the GIL */
	int closing;        /* close() came while busy: the last call closes */
} Mapping;

static const char *const advice_names[] = {"normal", "random", "sequential", "willneed", "dontneed"};

static module_state *mapping_state(Mapping *self)
{
	return PyType_GetModuleState(Py_TYPE(self));
}

/*
 * raise_error raises this thread's last libfilemap error as an OSError of
 * the class its errno names (FileNotFoundError for ENOENT, as OSError
 * itself chooses), or FaultError for a page that could not be read. The
 * message is libfilemap's, which names the object with its credentials
 * redacted, and the offset; the offset is also the attribute offset (None
 * where the error names none). Call it on the thread of the failed call,
 * before any other libfilemap call.
 */
static PyObject *raise_error(module_state *st)
{
	int err = filemap_errno();
	int64_t off = filemap_error_offset();
	if (err == 0)
		err = errno ? errno : EIO;
	PyObject *msg = PyUnicode_DecodeFSDefault(filemap_errmsg()[0] ? filemap_errmsg() : strerror(err));
	if (msg == NULL)
		return NULL;
	/* At the interpreter's exit the module may have let go of FaultError. */
	PyObject *type = err == EIO && off >= 0 && st != NULL && st->fault_error != NULL ? st->fault_error
										   : PyExc_OSError;
	PyObject *exc = PyObject_CallFunction(type, "iO", err, msg);
	Py_DECREF(msg);
	if (exc == NULL)
		return NULL;
	PyObject *offset = off >= 0 ? PyLong_FromLongLong(off) : Py_NewRef(Py_None);
	if (offset == NULL || PyObject_SetAttrString(exc, "offset", offset) < 0) {
		Py_XDECREF(offset);
		Py_DECREF(exc);
		return NULL;
	}
	Py_DECREF(offset);
	PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
	Py_DECREF(exc);
	return NULL;
}

/* parse_advice takes an advice as its constant (filemap.RANDOM) or its name ("random"). */
static int parse_advice(PyObject *o, int *advice)
{
	if (PyUnicode_Check(o)) {
		for (int i = 0; i < (int)(sizeof advice_names / sizeof advice_names[0]); i++)
			if (PyUnicode_CompareWithASCIIString(o, advice_names[i]) == 0) {
				*advice = i;
				return 0;
			}
	} else if (PyLong_Check(o)) {
		long v = PyLong_AsLong(o);
		if (v == -1 && PyErr_Occurred())
			return -1;
		if (v >= FILEMAP_NORMAL && v <= FILEMAP_DONTNEED) {
			*advice = (int)v;
			return 0;
		}
	} else {
		PyErr_Format(PyExc_TypeError, "advice must be a filemap constant or its name, not %.100s",
			     Py_TYPE(o)->tp_name);
		return -1;
	}
	PyErr_Format(PyExc_ValueError,
		     "unknown advice %R: want NORMAL, RANDOM, SEQUENTIAL, WILLNEED or DONTNEED (or their names)", o);
	return -1;
}

/* fs_path_or_none is PyUnicode_FSConverter that also takes None. */
static int fs_path_or_none(PyObject *o, void *out)
{
	if (o == Py_None) {
		*(PyObject **)out = NULL;
		return 1;
	}
	return PyUnicode_FSConverter(o, out);
}

static int check_offset(long long off, const char *what)
{
	if (off < 0) {
		PyErr_Format(PyExc_ValueError, "%s %lld is negative", what, off);
		return -1;
	}
	return 0;
}

/* is_closed says whether close() has come: a close left to the last call
 * running without the GIL (closing) counts. */
static int is_closed(Mapping *self)
{
	return self->m == NULL || self->closing;
}

/* check_open returns 0, or -1 with ValueError if the mapping is closed. */
static int check_open(Mapping *self)
{
	if (is_closed(self)) {
		PyErr_SetString(PyExc_ValueError, "I/O operation on a closed filemap mapping");
		return -1;
	}
	return 0;
}

/* enter starts a call that will run without the GIL: it returns the
 * object, which stays open until leave, or NULL with ValueError if the
 * mapping is closed. */
static filemap_t *enter(Mapping *self)
{
	if (check_open(self) < 0)
		return NULL;
	self->busy++;
	return self->m;
}

static int close_now(Mapping *self)
{
	filemap_t *m = self->m;
	int rc;
	self->m = NULL;
	Py_BEGIN_ALLOW_THREADS
	rc = filemap_close(m);
	Py_END_ALLOW_THREADS
	return rc;
}

/* close_unraisable closes the mapping where nobody is there to be told of
 * a failure (a deferred close, a deallocation): it goes to
 * sys.unraisablehook, and an exception being raised stays so. */
static void close_unraisable(Mapping *self, module_state *st)
{
	PyObject *type, *value, *tb;
	PyErr_Fetch(&type, &value, &tb);
	if (close_now(self) < 0) {
		raise_error(st);
		PyErr_WriteUnraisable((PyObject *)self);
	}
	PyErr_Restore(type, value, tb);
}

/* leave ends what enter started: the last call out closes the mapping if
 * close() came meanwhile. */
static void leave(Mapping *self)
{
	if (--self->busy == 0 && self->closing && self->m != NULL)
		close_unraisable(self, mapping_state(self));
}

static PyObject *module_open(PyObject *module, PyObject *args, PyObject *kwargs)
{
	static char *kwlist[] = {"uri", "advice", "version", "copy_on_write", "socket", NULL};
	module_state *st = PyModule_GetState(module);
	PyObject *uri = NULL, *advice_arg = NULL, *socket = NULL;
	const char *version = NULL;
	int cow = 0, advice = FILEMAP_NORMAL;
	if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&|$OzpO&:open", kwlist, PyUnicode_FSConverter, &uri,
					 &advice_arg, &version, &cow, fs_path_or_none, &socket))
		return NULL;
	PyObject *result = NULL;
	if (advice_arg != NULL && advice_arg != Py_None && parse_advice(advice_arg, &advice) < 0)
		goto out;
	if (advice > FILEMAP_SEQUENTIAL) {
		PyErr_Format(PyExc_ValueError, "open: advice %s: want NORMAL, RANDOM or SEQUENTIAL (%s is for advise())",
			     advice_names[advice], advice_names[advice]);
		goto out;
	}
	struct filemap_options o = {
		.socket = socket != NULL ? PyBytes_AS_STRING(socket) : NULL,
		.version = version,
		.advice = advice,
		.flags = cow ? FILEMAP_COPY_ON_WRITE : 0,
	};
	filemap_t *m;
	Py_BEGIN_ALLOW_THREADS
	m = filemap_open(PyBytes_AS_STRING(uri), &o);
	Py_END_ALLOW_THREADS
	if (m == NULL) {
		raise_error(st);
		goto out;
	}
	Mapping *self = PyObject_New(Mapping, st->mapping_type);
	if (self == NULL) {
		filemap_close(m);
		goto out;
	}
	self->m = m;
	self->copy_on_write = cow;
	self->exports = 0;
	self->busy = 0;
	self->closing = 0;
	result = (PyObject *)self;
out:
	Py_XDECREF(uri);
	Py_XDECREF(socket);
	return result;
}

static PyObject *Mapping_read_at(Mapping *self, PyObject *args)
{
	long long off, n;
	if (!PyArg_ParseTuple(args, "LL:read_at", &off, &n) || check_offset(off, "offset") < 0 ||
	    check_offset(n, "size") < 0)
		return NULL;
	filemap_t *m = enter(self);
	if (m == NULL)
		return NULL;
	uint64_t size = filemap_size(m);
	Py_ssize_t want = (uint64_t)off >= size ? 0 : (Py_ssize_t)((uint64_t)n < size - off ? (uint64_t)n : size - off);
	PyObject *b = PyBytes_FromStringAndSize(NULL, want);
	ssize_t got = 0;
	if (b != NULL && want > 0) {
		Py_BEGIN_ALLOW_THREADS
		got = filemap_read_at(m, PyBytes_AS_STRING(b), (size_t)want, (uint64_t)off);
		Py_END_ALLOW_THREADS
		if (got < 0) {
			raise_error(mapping_state(self));
			Py_CLEAR(b);
		}
	}
	leave(self);
	if (b != NULL && got < want && _PyBytes_Resize(&b, got) < 0)
		return NULL;
	return b;
}

static PyObject *Mapping_readinto_at(Mapping *self, PyObject *args)
{
	Py_buffer buf;
	long long off;
	if (!PyArg_ParseTuple(args, "w*L:readinto_at", &buf, &off))
		return NULL;
	PyObject *result = NULL;
	filemap_t *m = check_offset(off, "offset") < 0 ? NULL : enter(self);
	if (m != NULL) {
		ssize_t got = 0;
		if (buf.len > 0) {
			Py_BEGIN_ALLOW_THREADS
			got = filemap_read_at(m, buf.buf, (size_t)buf.len, (uint64_t)off);
			Py_END_ALLOW_THREADS
		}
		result = got < 0 ? raise_error(mapping_state(self)) : PyLong_FromSsize_t(got);
		leave(self);
	}
	PyBuffer_Release(&buf);
	return result;
}

static PyObject *Mapping_advise(Mapping *self, PyObject *args, PyObject *kwargs)
{
	static char *kwlist[] = {"advice", "offset", "length", NULL};
	PyObject *advice_arg;
	long long off = 0, len = 0;
	int advice;
	if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|LL:advise", kwlist, &advice_arg, &off, &len) ||
	    parse_advice(advice_arg, &advice) < 0 || check_offset(off, "offset") < 0 ||
	    check_offset(len, "length") < 0)
		return NULL;
	filemap_t *m = enter(self);
	if (m == NULL)
		return NULL;
	int rc;
	Py_BEGIN_ALLOW_THREADS
	rc = filemap_advise(m, advice, (uint64_t)off, (uint64_t)len);
	Py_END_ALLOW_THREADS
	PyObject *result = rc < 0 ? raise_error(mapping_state(self)) : Py_NewRef(Py_None);
	leave(self);
	return result;
}

static PyObject *Mapping_close(Mapping *self, PyObject *unused)
{
	if (is_closed(self))
		Py_RETURN_NONE;
	if (self->exports > 0) {
		struct filemap_stat st;
		filemap_stat(self->m, &st);
		PyErr_Format(PyExc_BufferError,
			     "cannot close the mapping of %s: a memoryview or array of it is alive (%zd buffers exported)",
			     st.name, self->exports);
		return NULL;
	}
	if (self->busy > 0) {
		self->closing = 1;
		Py_RETURN_NONE;
	}
	if (close_now(self) < 0)
		return raise_error(mapping_state(self));
	Py_RETURN_NONE;
}

static PyObject *Mapping_enter(Mapping *self, PyObject *unused)
{
	return check_open(self) < 0 ? NULL : Py_NewRef(self);
}

static PyObject *Mapping_exit(Mapping *self, PyObject *args)
{
	return Mapping_close(self, NULL);
}

/* open_stat fills st, or raises ValueError if the mapping is closed. */
static int open_stat(Mapping *self, struct filemap_stat *st)
{
	return check_open(self) < 0 ? -1 : filemap_stat(self->m, st);
}

static PyObject *Mapping_get_size(Mapping *self, void *unused)
{
	struct filemap_stat st;
	return open_stat(self, &st) < 0 ? NULL : PyLong_FromUnsignedLongLong(st.size);
}

static PyObject *Mapping_get_version(Mapping *self, void *unused)
{
	struct filemap_stat st;
	return open_stat(self, &st) < 0 ? NULL : PyUnicode_DecodeFSDefault(st.version);
}

static PyObject *Mapping_get_name(Mapping *self, void *unused)
{
	struct filemap_stat st;
	return open_stat(self, &st) < 0 ? NULL : PyUnicode_DecodeFSDefault(st.name);
}

static PyObject *Mapping_get_page_size(Mapping *self, void *unused)
{
	struct filemap_stat st;
	return open_stat(self, &st) < 0 ? NULL : PyLong_FromSize_t(st.page_size);
}

static PyObject *Mapping_get_flag(Mapping *self, void *flag)
{
	struct filemap_stat st;
	return open_stat(self, &st) < 0 ? NULL : PyBool_FromLong((st.flags & (uintptr_t)flag) != 0);
}

static PyObject *Mapping_get_closed(Mapping *self, void *unused)
{
	return PyBool_FromLong(is_closed(self));
}

static Py_ssize_t Mapping_length(Mapping *self)
{
	struct filemap_stat st;
	return open_stat(self, &st) < 0 ? -1 : (Py_ssize_t)st.size;
}

/* The buffer is the mapping. A fork child without it (MADV_DONTFORK)
 * gets an error here, not a pointer to nothing. */
static int Mapping_getbuffer(Mapping *self, Py_buffer *view, int flags)
{
	struct filemap_stat st;
	if (open_stat(self, &st) < 0)
		return -1;
	if ((st.flags & FILEMAP_INHERITED) && (st.flags & FILEMAP_DONTFORK)) {
		PyErr_Format(PyExc_BufferError,
			     "%s: this process has no mapping of it: it is MADV_DONTFORK, which a fork child does "
			     "not inherit (the kernel grants UFFD_FEATURE_EVENT_FORK only with CAP_SYS_PTRACE)",
			     st.name);
		return -1;
	}
	if (PyBuffer_FillInfo(view, (PyObject *)self, filemap_addr(self->m), (Py_ssize_t)st.size,
			      !self->copy_on_write, flags) < 0)
		return -1;
	self->exports++;
	return 0;
}

static void Mapping_releasebuffer(Mapping *self, Py_buffer *view)
{
	self->exports--;
}

static PyObject *Mapping_repr(Mapping *self)
{
	struct filemap_stat st;
	if (is_closed(self))
		return PyUnicode_FromString("<filemap.Mapping closed>");
	filemap_stat(self->m, &st);
	PyObject *name = PyUnicode_DecodeFSDefault(st.name);
	if (name == NULL)
		return NULL;
	PyObject *r = PyUnicode_FromFormat("<filemap.Mapping name=%R size=%llu version=%s%s>", name,
					   (unsigned long long)st.size, st.version,
					   self->copy_on_write ? " copy_on_write" : "");
	Py_DECREF(name);
	return r;
}

static void Mapping_dealloc(Mapping *self)
{
	PyTypeObject *tp = Py_TYPE(self);
	if (self->m != NULL)
		close_unraisable(self, PyType_GetModuleState(tp));
	PyObject_Free(self);
	Py_DECREF(tp);
}

static PyMethodDef Mapping_methods[] = {
	{"read_at", (PyCFunction)Mapping_read_at, METH_VARARGS,
	 "read_at(offset, size) -> bytes\n\n"
	 "The object's bytes from offset, up to size of them: fewer at its end, none past it.\n"
	 "A page that cannot be read raises FaultError (errno EIO), whose offset is that of the\n"
	 "first byte not read, where touching the page through the buffer would raise SIGBUS;\n"
	 "the next read of it tries again."},
	{"readinto_at", (PyCFunction)Mapping_readinto_at, METH_VARARGS,
	 "readinto_at(buffer, offset) -> int\n\n"
	 "read_at into a writable buffer: returns the bytes copied. On FaultError, the buffer\n"
	 "holds the bytes before the error's offset."},
	{"advise", (PyCFunction)(void (*)(void))Mapping_advise, METH_VARARGS | METH_KEYWORDS,
	 "advise(advice, offset=0, length=0)\n\n"
	 "Says how [offset, offset+length) will be read; length 0 is to the end. NORMAL,\n"
	 "RANDOM and SEQUENTIAL set the readahead of future misses, WILLNEED reads the range\n"
	 "in the background, DONTNEED drops its pages from this mapping (not from the shared\n"
	 "cache; copy-on-write, the pages written too)."},
	{"close", (PyCFunction)Mapping_close, METH_NOARGS,
	 "close()\n\n"
	 "Unmaps the object and closes it; closing a closed mapping does nothing. Raises\n"
	 "BufferError while a buffer of it (a memoryview, a numpy array) is alive. In a fork\n"
	 "child, closing an inherited mapping only unmaps it there."},
	{"__enter__", (PyCFunction)Mapping_enter, METH_NOARGS, NULL},
	{"__exit__", (PyCFunction)Mapping_exit, METH_VARARGS, NULL},
	{NULL},
};

static PyGetSetDef Mapping_getset[] = {
	{"size", (getter)Mapping_get_size, NULL, "The object's length in bytes.", NULL},
	{"version", (getter)Mapping_get_version, NULL,
	 "The version mapped (a file: SIZE@MTIME_NS; S3: VersionId or ETag; HTTP: ETag): pass it\n"
	 "to open(version=...) to map the same bytes.",
	 NULL},
	{"name", (getter)Mapping_get_name, NULL, "The object, its credentials redacted.", NULL},
	{"page_size", (getter)Mapping_get_page_size, NULL, "The mapping's page size.", NULL},
	{"copy_on_write", (getter)Mapping_get_flag, NULL,
	 "Whether the buffer is writable, its writes going to private copies of the pages.",
	 (void *)(uintptr_t)FILEMAP_COPY_ON_WRITE},
	{"inherited", (getter)Mapping_get_flag, NULL,
	 "Whether an ancestor opened it and this process has it through fork().",
	 (void *)(uintptr_t)FILEMAP_INHERITED},
	{"dontfork", (getter)Mapping_get_flag, NULL,
	 "Whether a fork() child lacks the mapping (MADV_DONTFORK): the kernel serves children's\n"
	 "faults only to processes with CAP_SYS_PTRACE.",
	 (void *)(uintptr_t)FILEMAP_DONTFORK},
	{"closed", (getter)Mapping_get_closed, NULL, "Whether the mapping is closed.", NULL},
	{NULL},
};

static PyType_Slot Mapping_slots[] = {
	{Py_tp_doc, "An object mapped by filemap.open(). Its buffer is the mapping: read-only, or\n"
		    "writable to private copies with copy_on_write. Touching a page that cannot be read\n"
		    "raises SIGBUS, as a kernel mapping of a file would; read_at and readinto_at raise\n"
		    "FaultError instead."},
	{Py_tp_dealloc, Mapping_dealloc},
	{Py_tp_repr, Mapping_repr},
	{Py_tp_methods, Mapping_methods},
	{Py_tp_getset, Mapping_getset},
	{Py_mp_length, Mapping_length},
	{Py_bf_getbuffer, Mapping_getbuffer},
	{Py_bf_releasebuffer, Mapping_releasebuffer},
	{0, NULL},
};

static PyType_Spec Mapping_spec = {
	.name = "filemap.Mapping",
	.basicsize = sizeof(Mapping),
	.flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_IMMUTABLETYPE,
	.slots = Mapping_slots,
};

static PyMethodDef module_methods[] = {
	{"open", (PyCFunction)(void (*)(void))module_open, METH_VARARGS | METH_KEYWORDS,
	 "open(uri, *, advice=NORMAL, version=None, copy_on_write=False, socket=None) -> Mapping\n\n"
	 "Maps the object uri names: a path, file:///path, http://..., https://... or\n"
	 "s3://BUCKET/KEY. advice is NORMAL, RANDOM or SEQUENTIAL (or its name); version\n"
	 "pins the bytes of an earlier open (Mapping.version); copy_on_write makes the buffer\n"
	 "writable, to private copies; socket names the handler's socket (default:\n"
	 "$FILEMAP_SOCKET, else a private handler, the filemap executable). A missing,\n"
	 "forbidden or changed object raises OSError here (FileNotFoundError, ...), never\n"
	 "SIGBUS later."},
	{NULL},
};

static int module_exec(PyObject *module)
{
	module_state *st = PyModule_GetState(module);
	st->fault_error = PyErr_NewExceptionWithDoc(
		"filemap.FaultError",
		"A page of the object could not be read (errno EIO). offset is the first byte not\n"
		"read; the message names the object and the page. The next read of the page tries\n"
		"again: errors are not sticky.",
		PyExc_OSError, NULL);
	if (st->fault_error == NULL || PyModule_AddObjectRef(module, "FaultError", st->fault_error) < 0)
		return -1;
	st->mapping_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &Mapping_spec, NULL);
	if (st->mapping_type == NULL || PyModule_AddType(module, st->mapping_type) < 0)
		return -1;
	static const struct {
		const char *name;
		int value;
	} constants[] = {
		{"NORMAL", FILEMAP_NORMAL},     {"RANDOM", FILEMAP_RANDOM},     {"SEQUENTIAL", FILEMAP_SEQUENTIAL},
		{"WILLNEED", FILEMAP_WILLNEED}, {"DONTNEED", FILEMAP_DONTNEED},
	};
	for (size_t i = 0; i < sizeof constants / sizeof constants[0]; i++)
		if (PyModule_AddIntConstant(module, constants[i].name, constants[i].value) < 0)
			return -1;
	return 0;
}

static int module_traverse(PyObject *module, visitproc visit, void *arg)
{
	module_state *st = PyModule_GetState(module);
	Py_VISIT(st->mapping_type);
	Py_VISIT(st->fault_error);
	return 0;
}

static int module_clear(PyObject *module)
{
	module_state *st = PyModule_GetState(module);
	Py_CLEAR(st->mapping_type);
	Py_CLEAR(st->fault_error);
	return 0;
}

static void module_free(void *module)
{
	module_clear(module);
}

static PyModuleDef_Slot module_slots[] = {
	{Py_mod_exec, module_exec},
	{0, NULL},
};

static struct PyModuleDef filemap_module = {
	PyModuleDef_HEAD_INIT,
	.m_name = "filemap._filemap",
	.m_doc = "libfilemap for Python; import filemap, which re-exports it.",
	.m_size = sizeof(module_state),
	.m_methods = module_methods,
	.m_slots = module_slots,
	.m_traverse = module_traverse,
	.m_clear = module_clear,
	.m_free = module_free,
};

PyMODINIT_FUNC PyInit__filemap(void)
{
	return PyModuleDef_Init(&filemap_module);
}
