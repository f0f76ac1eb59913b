// The parts of the Python module nfd_rt._core, each registered by its own file into the module that
// csrc/python/bindings.cc defines.
#pragma once

#include <pybind11/pybind11.h>

// nfd_rt._core.ops: single ops on numpy arrays, for the op tests and benchmarks/ops.py (csrc/python/ops_bindings.cc).
void nfd_register_ops(pybind11::module_& m);
