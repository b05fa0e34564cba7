// libFuzzer harness for the events parser; the body and its contract are fuzz::events_one in fuzz_harnesses.h.
#include "fuzz_entry.h"

STUDIO_FUZZ_ENTRY(fuzz::events_one)
