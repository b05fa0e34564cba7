// libFuzzer harness for the WikiText tokenizer, vocabulary and corpus cache reader; the body and its contract are
// fuzz::wikitext_one in fuzz_harnesses.h.
#include "fuzz_entry.h"

// Build the tiny dataset and its valid cache before the first input, so setup cost and allocations are not
// attributed to an input (and $STUDIO_CACHE points into a private temporary folder from the start).
extern "C" int LLVMFuzzerInitialize(int *, char ***) {
    fuzz::wiki_env();
    return 0;
}

STUDIO_FUZZ_ENTRY(fuzz::wikitext_one)
