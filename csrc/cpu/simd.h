// Function multi-versioning for the CPU kernels' hot loops.
//
// The extension is built for the baseline x86-64 ISA so that one binary runs everywhere; the
// loops that matter are compiled again for AVX2 and AVX-512 and the best copy is picked when the
// library loads (GCC ifunc). Neither clone target enables FMA, and setup.py builds with
// -ffp-contract=off, so every clone rounds exactly as the baseline does: the analog kernels
// promise bit-identical noise and codes across backends, and the clones keep that promise.
// Only plain functions get cloned (a lambda inside one is compiled for the baseline).
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define NLSEQ_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define NLSEQ_CLONES
#endif
