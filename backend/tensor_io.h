// torch::Tensor <-> safetensors, and a module's parameters <-> a named tensor map.
#pragma once

#include <map>
#include <string>

#include <torch/types.h>
#include <torch/nn/module.h>

#include "safetensors.h"

namespace studio {

using TensorMap = std::map<std::string, torch::Tensor>;

/// Serialises CPU copies of the tensors (contiguous, little-endian) to safetensors bytes.
std::string tensors_serialize(const TensorMap & tensors, const std::map<std::string, std::string> & metadata = {});
/// Reads a safetensors file into CPU tensors; `source` names it in errors.
TensorMap tensors_from_file(const SafeTensorFile & file, const std::string & source);
TensorMap tensors_load(const std::string & path, std::map<std::string, std::string> * metadata = nullptr);

/// Every parameter (and buffer) of the module by its dotted name.
TensorMap module_state(const torch::nn::Module & module);
/// Copies `state` into the module's parameters. Every parameter must be present with the same shape, except names
/// for which `may_be_missing(name)` is true; extra names are errors. Errors name `source` and the mismatch.
void module_load_state(torch::nn::Module & module, const TensorMap & state, const std::string & source,
                       bool (*may_be_missing)(const std::string &) = nullptr);

} // namespace studio
