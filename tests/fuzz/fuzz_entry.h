// libFuzzer entry point around one harness body from fuzz_harnesses.h: a fuzz::Finding is printed and aborts
// (libFuzzer saves the input as crash-*); any other exception escapes and terminates, which libFuzzer also saves.
#pragma once

#include <cstdio>
#include <cstdlib>

#include "fuzz_harnesses.h"

#define STUDIO_FUZZ_ENTRY(body)                                                       \
    extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {        \
        try {                                                                         \
            body(data, size);                                                         \
        } catch (const fuzz::Finding & finding) {                                     \
            std::fprintf(stderr, "\n==FUZZ FINDING== %s\n", finding.what());          \
            std::fflush(stderr);                                                      \
            std::abort();                                                             \
        }                                                                             \
        return 0;                                                                     \
    }
