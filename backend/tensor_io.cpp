#include "tensor_io.h"

#include <cstring>
#include <sstream>

#include <torch/torch.h>

namespace studio {

namespace {

std::string dtype_name(torch::ScalarType t) {
    switch (t) {
        case torch::kFloat: return "F32";
        case torch::kDouble: return "F64";
        case torch::kBFloat16: return "BF16";
        case torch::kHalf: return "F16";
        case torch::kLong: return "I64";
        case torch::kInt: return "I32";
        case torch::kByte: return "U8";
        case torch::kBool: return "BOOL";
        default: throw std::invalid_argument(std::string("safetensors: unsupported tensor type ") + c10::toString(t));
    }
}

torch::ScalarType scalar_type(const std::string & name, const std::string & source) {
    if (name == "F32") return torch::kFloat;
    if (name == "F64") return torch::kDouble;
    if (name == "BF16") return torch::kBFloat16;
    if (name == "F16") return torch::kHalf;
    if (name == "I64") return torch::kLong;
    if (name == "I32") return torch::kInt;
    if (name == "U8") return torch::kByte;
    if (name == "BOOL") return torch::kBool;
    throw FormatError("safetensors: " + source + ": unsupported dtype " + name);
}

std::string shape_string(torch::IntArrayRef shape) {
    std::ostringstream s;
    s << "[";
    for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
    s << "]";
    return s.str();
}

} // namespace

std::string tensors_serialize(const TensorMap & tensors, const std::map<std::string, std::string> & metadata) {
    std::map<std::string, torch::Tensor> cpu;
    std::map<std::string, SafeTensorView> views;
    for (const auto & [name, t] : tensors) {
        auto c = t.detach().to(torch::kCPU).contiguous();
        cpu[name] = c;
        SafeTensorView v;
        v.dtype = dtype_name(c.scalar_type());
        v.shape = c.sizes().vec();
        v.data = c.data_ptr();
        v.bytes = (uint64_t) c.numel() * c.element_size();
        views[name] = v;
    }
    return safetensors_serialize(views, metadata);
}

TensorMap tensors_from_file(const SafeTensorFile & file, const std::string & source) {
    TensorMap out;
    for (const auto & [name, t] : file.tensors) {
        auto type = scalar_type(t.dtype, source);
        auto tensor = torch::empty(t.shape, torch::TensorOptions().dtype(type));
        if (!t.data.empty()) std::memcpy(tensor.data_ptr(), t.data.data(), t.data.size());
        out[name] = tensor;
    }
    return out;
}

TensorMap tensors_load(const std::string & path, std::map<std::string, std::string> * metadata) {
    auto file = safetensors_read(path);
    if (metadata) *metadata = file.metadata;
    return tensors_from_file(file, path);
}

TensorMap module_state(const torch::nn::Module & module) {
    TensorMap state;
    for (const auto & item : module.named_parameters(true)) state[item.key()] = item.value();
    for (const auto & item : module.named_buffers(true)) state[item.key()] = item.value();
    return state;
}

void module_load_state(torch::nn::Module & module, const TensorMap & state, const std::string & source,
                       bool (*may_be_missing)(const std::string &)) {
    torch::NoGradGuard no_grad;
    auto own = module_state(module);
    for (const auto & [name, tensor] : own) {
        auto it = state.find(name);
        if (it == state.end()) {
            if (may_be_missing && may_be_missing(name)) continue;
            throw FormatError("checkpoint " + source + ": tensor " + name + " is missing (written by another model configuration?)");
        }
        if (it->second.sizes() != tensor.sizes()) {
            throw FormatError("checkpoint " + source + ": tensor " + name + " has shape " + shape_string(it->second.sizes()) +
                              ", the model expects " + shape_string(tensor.sizes()));
        }
        tensor.copy_(it->second);
    }
    for (const auto & [name, tensor] : state) {
        if (!own.count(name)) throw FormatError("checkpoint " + source + ": unexpected tensor " + name + " (written by another model configuration?)");
    }
}

} // namespace studio
