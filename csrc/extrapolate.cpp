// Native extrapolation kernel: out = RN_t(d + alpha*(d - s)), correctly rounded.
//
// The arithmetic contract and the algorithm are written down in docs/arithmetic.md; this file
// mirrors expo_stream/kernels/numba_impl.py step for step, written branch-free so the compiler
// vectorises the element loop. Every step is exact (error-free transformations and integer bit
// manipulation), so vector width, FMA and instruction order cannot change a bit; the file is
// still built with -ffp-contract=off so no step is fused behind our back.
//
// Runtime dispatch: the kernel (extrapolate_kernel.inc) is compiled three times, for x86-64-v4
// (AVX-512), x86-64-v3 (AVX2) and baseline x86-64, each in its own namespace under a
// `#pragma GCC target`, so every inlined helper is built for the same instruction set;
// `run` picks the best one the CPU supports once.

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cstdint>
#include <cstring>

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
namespace v4 {
#include "extrapolate_kernel.inc"
}  // namespace v4
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
namespace v3 {
#include "extrapolate_kernel.inc"
}  // namespace v3
#pragma GCC pop_options
#endif

namespace baseline {
#include "extrapolate_kernel.inc"
}  // namespace baseline

namespace {

using Kernel = void (*)(const void*, int, const void*, int, void*, int, Py_ssize_t, double);

struct Dispatch {
  Kernel run;
  const char* level;
};

Dispatch choose() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return {v4::run, "x86-64-v4 (AVX-512)"};
  if (__builtin_cpu_supports("x86-64-v3")) return {v3::run, "x86-64-v3 (AVX2)"};
  return {baseline::run, "x86-64"};
#else
  return {baseline::run, "generic"};
#endif
}

const Dispatch kDispatch = choose();

const char* simd_level() { return kDispatch.level; }

// ---- Python binding --------------------------------------------------------------------------

PyObject* py_extrapolate(PyObject*, PyObject* args) {
  Py_buffer dpo, sft, out;
  int dc, sc, oc;
  double alpha;
  if (!PyArg_ParseTuple(args, "y*iy*iw*id", &dpo, &dc, &sft, &sc, &out, &oc, &alpha)) {
    return nullptr;
  }
  PyObject* result = nullptr;
  const int sizes[3] = {2, 2, 4};  // bytes per element of BF16, F16, F32
  if (dc < 0 || dc > 2 || sc < 0 || sc > 2 || oc < 0 || oc > 2) {
    PyErr_SetString(PyExc_ValueError, "format codes must be 0 (BF16), 1 (F16) or 2 (F32)");
  } else if (out.len % sizes[oc] != 0 || dpo.len / sizes[dc] != out.len / sizes[oc] ||
             sft.len / sizes[sc] != out.len / sizes[oc] || dpo.len % sizes[dc] ||
             sft.len % sizes[sc]) {
    PyErr_SetString(PyExc_ValueError, "dpo, sft and out must hold the same number of elements");
  } else {
    Py_ssize_t n = out.len / sizes[oc];
    Py_BEGIN_ALLOW_THREADS kDispatch.run(dpo.buf, dc, sft.buf, sc, out.buf, oc, n, alpha);
    Py_END_ALLOW_THREADS result = Py_None;
    Py_INCREF(result);
  }
  PyBuffer_Release(&dpo);
  PyBuffer_Release(&sft);
  PyBuffer_Release(&out);
  return result;
}

PyObject* py_simd_level(PyObject*, PyObject*) { return PyUnicode_FromString(simd_level()); }

PyMethodDef kMethods[] = {
    {"extrapolate", py_extrapolate, METH_VARARGS,
     "extrapolate(dpo, dpo_fmt, sft, sft_fmt, out, out_fmt, alpha): raw buffers, GIL released."},
    {"simd_level", py_simd_level, METH_NOARGS, "The instruction set the kernel dispatches to."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_native", "expo-stream native kernels.", -1,
                       kMethods};

}  // namespace

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&kModule); }
