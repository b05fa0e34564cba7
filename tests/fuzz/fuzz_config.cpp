// libFuzzer harness for the config parser; the body and its contract are fuzz::config_one in fuzz_harnesses.h.
#include "fuzz_entry.h"

STUDIO_FUZZ_ENTRY(fuzz::config_one)
