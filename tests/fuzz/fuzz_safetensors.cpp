// libFuzzer harness for the safetensors parser; the body and its contract are fuzz::safetensors_one in fuzz_harnesses.h.
#include "fuzz_entry.h"

STUDIO_FUZZ_ENTRY(fuzz::safetensors_one)
