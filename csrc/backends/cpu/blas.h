// The BLAS the CPU ops call: OpenBLAS' CBLAS interface, from either the scipy-openblas32 wheel (symbols
// prefixed `scipy_`, NFD_BLAS_SCIPY_PREFIX, what a pip install uses) or an installed OpenBLAS (e.g. Debian's
// libopenblas-dev, plain names). NFD_CBLAS(sgemm) / NFD_OPENBLAS(set_num_threads) name the right symbol.
#pragma once

#include <cblas.h>

#ifdef NFD_BLAS_SCIPY_PREFIX
#define NFD_CBLAS(name) scipy_cblas_##name
#define NFD_OPENBLAS(name) scipy_openblas_##name
#else
#define NFD_CBLAS(name) cblas_##name
#define NFD_OPENBLAS(name) openblas_##name
#endif
