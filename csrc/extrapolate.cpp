// The Python module expo_stream._native: argument checks, the GIL, and the choice of SIMD level.
//
// The kernel itself is extrapolate_simd.h, compiled once per level in its own translation unit
// with its own flags (setup.py): extrapolate_avx512.cpp, extrapolate_avx2.cpp (x86-64 only) and
// extrapolate_generic.cpp ("baseline": SSE2 on x86-64, NEON on aarch64). This file is built with
// no -m flags, so nothing here can execute an instruction the CPU lacks before the check.
// The level is the best the CPU runs, or the one EXPO_STREAM_SIMD names (avx512, avx2, baseline);
// a level the CPU cannot run is refused at import with a one-line ImportError.

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "extrapolate.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif

namespace {

struct Level {
  const char* name;
  expo::Kernel run;
  expo::PlainKernel plain;
  bool (*supported)();
};

#if defined(__x86_64__) || defined(_M_X64)
// F16C by CPUID (leaf 1, ECX bit 29): clang before 16 does not know "f16c" as a feature name of
// __builtin_cpu_supports.
bool has_f16c() {
  unsigned eax, ebx, ecx, edx;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
}
bool has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("bmi2") && has_f16c();
}
// The avx512 object is built with the avx2 level's flags too (-mbmi2 -mf16c...).
bool has_avx512() {
  __builtin_cpu_init();
  return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
}
#endif
bool always() { return true; }

// Best first.
const Level kLevels[] = {
#if defined(__x86_64__) || defined(_M_X64)
    {"avx512", expo::run_avx512, expo::plain_avx512, has_avx512},
    {"avx2", expo::run_avx2, expo::plain_avx2, has_avx2},
#endif
    {"baseline", expo::run_baseline, expo::plain_baseline, always},
};

const Level* g_level = nullptr;

const Level* find(const char* name) {
  for (const Level& level : kLevels) {
    if (std::strcmp(level.name, name) == 0) return &level;
  }
  return nullptr;
}

std::string runnable_names() {
  std::string names;
  for (const Level& level : kLevels) {
    if (!level.supported()) continue;
    if (!names.empty()) names += ", ";
    names += level.name;
  }
  return names;
}

// Sets g_level to `name` (nullptr: the best runnable level); on failure sets a Python exception
// of type `error` and returns false.
bool select(const char* name, PyObject* error) {
  if (name == nullptr || *name == '\0') {
    for (const Level& level : kLevels) {
      if (level.supported()) {
        g_level = &level;
        return true;
      }
    }
  }
  const Level* level = find(name);
  if (level == nullptr) {
    std::string known;
    for (const Level& l : kLevels) known += std::string(known.empty() ? "" : ", ") + l.name;
    PyErr_Format(error, "EXPO_STREAM_SIMD=%s is not a SIMD level of this build (choose %s)",
                 name, known.c_str());
    return false;
  }
  if (!level->supported()) {
    PyErr_Format(error, "EXPO_STREAM_SIMD=%s: this CPU cannot run that level (it runs %s)", name,
                 runnable_names().c_str());
    return false;
  }
  g_level = level;
  return true;
}

// ---- Python binding --------------------------------------------------------------------------

bool parse_buffers(Py_buffer* dpo, int* dc, Py_buffer* sft, int* sc,
                   Py_buffer* out, int* oc, Py_ssize_t* n) {
  const int sizes[3] = {2, 2, 4};  // bytes per element of BF16, F16, F32
  if (*dc < 0 || *dc > 2 || *sc < 0 || *sc > 2 || *oc < 0 || *oc > 2) {
    PyErr_SetString(PyExc_ValueError, "format codes must be 0 (BF16), 1 (F16) or 2 (F32)");
    return false;
  }
  if (out->len % sizes[*oc] != 0 || dpo->len / sizes[*dc] != out->len / sizes[*oc] ||
      sft->len / sizes[*sc] != out->len / sizes[*oc] || dpo->len % sizes[*dc] ||
      sft->len % sizes[*sc]) {
    PyErr_SetString(PyExc_ValueError, "dpo, sft and out must hold the same number of elements");
    return false;
  }
  *n = out->len / sizes[*oc];
  return true;
}

PyObject* py_extrapolate(PyObject*, PyObject* args) {
  Py_buffer dpo, sft, out;
  int dc, sc, oc;
  double alpha;
  if (!PyArg_ParseTuple(args, "y*iy*iw*id", &dpo, &dc, &sft, &sc, &out, &oc, &alpha)) {
    return nullptr;
  }
  PyObject* result = nullptr;
  Py_ssize_t n;
  if (parse_buffers(&dpo, &dc, &sft, &sc, &out, &oc, &n)) {
    expo::Kernel run = g_level->run;
    Py_BEGIN_ALLOW_THREADS run(dpo.buf, dc, sft.buf, sc, out.buf, oc, n, alpha);
    Py_END_ALLOW_THREADS result = Py_None;
    Py_INCREF(result);
  }
  PyBuffer_Release(&dpo);
  PyBuffer_Release(&sft);
  PyBuffer_Release(&out);
  return result;
}

PyObject* py_plain_bf16(PyObject*, PyObject* args) {
  Py_buffer dpo, sft, out;
  double alpha;
  if (!PyArg_ParseTuple(args, "y*y*w*d", &dpo, &sft, &out, &alpha)) return nullptr;
  PyObject* result = nullptr;
  if (dpo.len != out.len || sft.len != out.len || out.len % 2) {
    PyErr_SetString(PyExc_ValueError, "dpo, sft and out must be BF16 buffers of one length");
  } else {
    expo::PlainKernel plain = g_level->plain;
    Py_BEGIN_ALLOW_THREADS plain(static_cast<const uint16_t*>(dpo.buf),
                                 static_cast<const uint16_t*>(sft.buf),
                                 static_cast<uint16_t*>(out.buf), out.len / 2,
                                 static_cast<float>(alpha));
    Py_END_ALLOW_THREADS result = Py_None;
    Py_INCREF(result);
  }
  PyBuffer_Release(&dpo);
  PyBuffer_Release(&sft);
  PyBuffer_Release(&out);
  return result;
}

PyObject* py_simd_level(PyObject*, PyObject*) { return PyUnicode_FromString(g_level->name); }

PyObject* py_simd_levels(PyObject*, PyObject*) {
  PyObject* names = PyTuple_New(0);
  for (const Level& level : kLevels) {
    if (!level.supported()) continue;
    PyObject* name = PyUnicode_FromString(level.name);
    Py_ssize_t size = PyTuple_GET_SIZE(names);
    if (_PyTuple_Resize(&names, size + 1) < 0) {
      Py_DECREF(name);
      return nullptr;
    }
    PyTuple_SET_ITEM(names, size, name);
  }
  return names;
}

PyObject* py_use_simd_level(PyObject*, PyObject* args) {
  const char* name;
  if (!PyArg_ParseTuple(args, "s", &name)) return nullptr;
  const Level* before = g_level;
  if (!select(name, PyExc_ValueError)) {
    g_level = before;
    return nullptr;
  }
  return PyUnicode_FromString(before->name);
}

PyMethodDef kMethods[] = {
    {"extrapolate", py_extrapolate, METH_VARARGS,
     "extrapolate(dpo, dpo_fmt, sft, sft_fmt, out, out_fmt, alpha): raw buffers, GIL released."},
    {"simd_level", py_simd_level, METH_NOARGS,
     "The SIMD level the kernel runs at: 'avx512', 'avx2' or 'baseline'."},
    {"simd_levels", py_simd_levels, METH_NOARGS, "The SIMD levels this CPU can run, best first."},
    {"use_simd_level", py_use_simd_level, METH_VARARGS,
     "use_simd_level(name): switch the level for this process (tests, benchmarks); returns the "
     "previous one. Not thread-safe against running kernels."},
    {"plain_bf16", py_plain_bf16, METH_VARARGS,
     "plain_bf16(dpo, sft, out, alpha): bench only, the inexact float32 loop, BF16 in and out."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_native", "expo-stream native kernels.", -1,
                       kMethods};

}  // namespace

PyMODINIT_FUNC PyInit__native(void) {
  if (!select(std::getenv("EXPO_STREAM_SIMD"), PyExc_ImportError)) return nullptr;
  return PyModule_Create(&kModule);
}
