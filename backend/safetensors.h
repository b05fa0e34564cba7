// The safetensors format (8-byte little-endian header length, a JSON header, raw little-endian data), which
// Python's `safetensors` opens. Written by hand: Debian 12 packages no C++ implementation. No LibTorch here, so the
// fuzzers and tools can use it alone; tensor_io.h converts to and from torch::Tensor.
#pragma once

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace studio {

/// A file that is not a valid safetensors file; what() names the file and what is wrong.
struct FormatError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct SafeTensorView {            ///< a tensor to write, borrowed
    std::string dtype;             ///< "F32", "BF16", "F16", "I64", "I32", "U8", "BOOL", "F64"
    std::vector<int64_t> shape;
    const void * data = nullptr;
    uint64_t bytes = 0;
};

struct SafeTensor {                ///< a tensor read back, owned
    std::string dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> data;
};

struct SafeTensorFile {
    std::map<std::string, SafeTensor> tensors;
    std::map<std::string, std::string> metadata;
};

/// Bytes per element of a dtype name; throws FormatError for an unknown one.
uint64_t safetensors_dtype_size(const std::string & dtype, const std::string & source = "safetensors");
/// Serialises to bytes (the whole file).
std::string safetensors_serialize(const std::map<std::string, SafeTensorView> & tensors,
                                  const std::map<std::string, std::string> & metadata = {});
/// Parses bytes; `source` names the file in errors.
SafeTensorFile safetensors_parse(const std::string & bytes, const std::string & source);
SafeTensorFile safetensors_read(const std::string & path);

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename, fsync of the folder.
/// Throws std::runtime_error naming the file (e.g. the disk is full); the previous file stays intact.
void file_write_atomic(const std::string & path, const std::string & bytes);
/// fsync a folder so a rename inside it is durable.
void folder_sync(const std::string & path);

} // namespace studio
