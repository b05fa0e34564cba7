// Precompiled for studio_engine and its tests: torch/torch.h alone costs ~25 s per translation unit on CI.
#pragma once
#include <torch/torch.h>
